# shellcheck shell=bash
# Sourced by scripts/vmtest.sh and scripts/gen-vmlinux.sh, not run: they
# fetch kernels from Debian suites other than the host's, through a private
# apt configuration.
#
# debian_mirrors prints "MAIN SECURITY": the Debian archive URIs this host's
# apt already uses (deb822 *.sources, or one-line sources.list), so that the
# scripts never name a host themselves. The first archive without a
# -security suite is the main archive, the first with one the security
# archive; SECURITY is "-" when there is none.
debian_mirrors() {
	{
		cat /etc/apt/sources.list.d/*.sources 2>/dev/null || true
		echo
		# one-line format: "deb [opts] URI SUITE COMPONENTS..."
		sed -nE 's/^[[:space:]]*deb[[:space:]]+(\[[^]]*\][[:space:]]+)?([^[:space:]]+)[[:space:]]+([^[:space:]]+).*/URIs: \2\nSuites: \3\n/p' \
			/etc/apt/sources.list /etc/apt/sources.list.d/*.list 2>/dev/null || true
	} | awk '
	function flush() {
		if (uri != "") {
			if (suites ~ /-security/) { if (sec == "") sec = uri }
			else if (suites != "")    { if (main == "") main = uri }
		}
		uri = ""; suites = ""
	}
	/^[[:space:]]*$/ { flush(); next }
	/^[[:space:]]*#/ { next }
	tolower($1) == "uris:"   { uri = $2 }
	tolower($1) == "suites:" { $1 = ""; suites = $0 }
	END { flush(); print main, (sec == "" ? "-" : sec) }
	'
}

# private_apt_conf DIR: makes DIR an apt state, cache and configuration of
# its own (sources in DIR/sources.list) and prints the apt.conf lines for it;
# the caller adds its own settings and points APT_CONFIG at the result.
private_apt_conf() {
	local d=$1
	mkdir -p "$d"/{state/lists/partial,cache/archives/partial,sources.list.d,preferences.d,apt.conf.d}
	[[ -e $d/state/status ]] || : >"$d/state/status"
	cat <<-CONF
		Dir::State "$d/state";
		Dir::State::status "$d/state/status";
		Dir::Cache "$d/cache";
		Dir::Etc::SourceList "$d/sources.list";
		Dir::Etc::SourceParts "$d/sources.list.d";
		Dir::Etc::Preferences "$d/preferences";
		Dir::Etc::PreferencesParts "$d/preferences.d";
		Dir::Etc::Parts "$d/apt.conf.d";
		APT::Architecture "amd64";
		Acquire::Languages "none";
	CONF
}
