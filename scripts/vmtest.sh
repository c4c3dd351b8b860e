#!/usr/bin/env bash
# The kernel matrix (make vmtest): run tcptrace's tests, real-kernel ones
# included, under stock Debian amd64 kernels in qemu (TCG), one boot per
# kernel series, and print a pass/fail table with the hook each kernel got.
#
# Usage:
#   vmtest.sh [SERIES...] [-- PROG [ARGS...] [';' PROG [ARGS...]]...]
#
#   SERIES  kernel series, e.g. 5.10 6.1 6.12 7.2 (default: $KERNELS, or
#           "5.10 6.1 6.12 7.2"). The newest matching Debian kernel package
#           is resolved at run time from bullseye, bookworm, trixie, sid and
#           their -security suites, downloaded once and cached as a plain ELF
#           vmlinux keyed by package name and version.
#   PROG    a static executable on the host; it is packed into the initramfs
#           as /vmtest/<basename> and run in /vmtest. A lone ';' separates
#           several programs run in one boot. A PROG found under $VMTEST_ROOT
#           is used at that path instead. The words travel in the initramfs
#           (/vmtest/args, one per line), so any number of them, with
#           spaces, but no newlines. Without "--",
#           every package of the module with tests is built as a static test
#           binary (CGO_ENABLED=0 go test -c), packed with its testdata under
#           /pkg/<package dir>, and run there with -test.v, with
#           TCPTRACE_REQUIRE_PRIVILEGED=1 so that a real-kernel test cannot
#           pass by skipping. To run some tests only, give the binaries
#           yourself, e.g. "-- /tmp/tcptrace.test -test.v -test.run=TestX"
#           (built with CGO_ENABLED=0 go test -c).
#
# scripts/vminit sets TCPTRACE_TEST_VM=1 for the programs it runs: the
# tests that change the whole machine (the wall clock, kernel modules) run
# only there, and skip elsewhere whatever TCPTRACE_REQUIRE_PRIVILEGED says.
#
# A boot passes when the console shows VMTEST_EXIT_CODE=0 (printed by
# scripts/vminit, the initramfs' PID 1). The exit status is 0 when every
# kernel passed, 1 otherwise. The table gives per kernel the package, the
# result, the top-level tests passed/failed/skipped, and the hook tcptrace
# chose there (the VMTEST_ATTACH line of tracer's TestAutoAttachChoice).
#
# Environment knobs:
#   VMTEST_CACHE=~/.cache/tcptrace-vmtest  apt state and extracted kernels
#   VMTEST_LISTS_MAX_AGE=86400  seconds before the apt lists are refreshed
#   VMTEST_SMP=1 VMTEST_MEM=1G  guest CPUs and memory
#   VMTEST_TIMEOUT=1200         seconds per boot before qemu is killed (a boot takes about 500 s)
#   VMTEST_JOBS=nproc/SMP       kernels booted at once; 1 streams the console,
#                               more print the consoles whole at the end
#   VMTEST_ROOT=dir             extra files merged into the initramfs root
#                               (testdata, helper files)
#   VMTEST_BINS="setpriv nsenter ss ip"  host executables copied in with their
#                               shared libraries (found with ldd)
#   VMTEST_ENV="TCPTRACE_REQUIRE_PRIVILEGED=1 TCPTRACE_REQUIRE_TOOLS=1"  environment
#                               (the kernel passes unknown NAME=value
#                               parameters to init)
#   VMTEST_APPEND="..."         extra kernel command line parameters
#   VMTEST_QEMU_OPTS="..."      extra qemu options
#   VMTEST_LOGDIR=$VMTEST_CACHE/logs  each console log, as <series>.log
#
# Needs root (or sudo) only to apt-get install missing tools.
set -euo pipefail

REPO=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
VMTEST_BINS=${VMTEST_BINS-setpriv nsenter ss ip}
VMTEST_ENV=${VMTEST_ENV-TCPTRACE_REQUIRE_PRIVILEGED=1 TCPTRACE_REQUIRE_TOOLS=1}
CACHE=${VMTEST_CACHE:-${XDG_CACHE_HOME:-$HOME/.cache}/tcptrace-vmtest}
LOGDIR=${VMTEST_LOGDIR:-$CACHE/logs}
MAX_AGE=${VMTEST_LISTS_MAX_AGE:-86400}
SMP=${VMTEST_SMP:-1}
MEM=${VMTEST_MEM:-1G}
TIMEOUT=${VMTEST_TIMEOUT:-1200}
JOBS=${VMTEST_JOBS:-$(($(nproc) / SMP > 0 ? $(nproc) / SMP : 1))}
KEYRING=/usr/share/keyrings/debian-archive-keyring.gpg
MARKER=VMTEST_EXIT_CODE=

log() { printf '==> %s\n' "$*" >&2; }
die() { printf 'vmtest: %s\n' "$*" >&2; exit 2; }
now() { date +%s%N; }
since() { # START [END]: seconds from one now() to another (or to now), one decimal
	local d=$(((${2:-$(now)} - $1) / 100000000))
	printf '%d.%d' $((d / 10)) $((d % 10))
}

# --- arguments ---------------------------------------------------------------
series=()
while (($#)) && [[ $1 != -- ]]; do
	series+=("$1")
	shift
done
(($#)) && shift # the "--"
progs=("$@")
((${#series[@]})) || read -ra series <<<"${KERNELS:-5.10 6.1 6.12 7.2}"
for s in "${series[@]}"; do
	[[ $s =~ ^[0-9]+\.[0-9]+$ ]] || die "bad kernel series '$s' (want e.g. 6.12)"
done
for a in "${progs[@]}"; do
	[[ $a != *$'\n'* ]] || die "argument with a newline: '$a'"
done
# The environment travels on the kernel command line, which the kernel
# splits at spaces and where it treats quotes specially.
for a in ${VMTEST_ENV:-}; do
	[[ $a != *[[:space:]\"]* ]] || die "environment with a space or quote: '$a'"
done
read -ra qemu_opts <<<"${VMTEST_QEMU_OPTS:-}"

# --- tools -------------------------------------------------------------------
have() { command -v "$1" >/dev/null 2>&1; }
need=()
have qemu-system-x86_64 || need+=(qemu-system-x86)
have cpio || need+=(cpio)
have xz || need+=(xz-utils)
have zstd || need+=(zstd)
have dpkg-deb || need+=(dpkg)
have flock || need+=(util-linux)
[[ -r $KEYRING ]] || need+=(debian-archive-keyring)
if ((${#need[@]})); then
	SUDO=
	[[ $(id -u) -eq 0 ]] || SUDO=sudo
	log "installing: ${need[*]}"
	$SUDO apt-get update -qq
	$SUDO env DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends "${need[@]}" >/dev/null
fi
have go || die "go is required (to build the init program)"

mkdir -p "$CACHE"
WORK=$(mktemp -d)
trap 'rm -rf "$WORK"' EXIT
chmod 755 "$WORK" # apt downloads as its _apt user when run as root

# --- private apt configuration -------------------------------------------------
# Mirror URIs come from the host's apt sources (scripts/debian-apt.sh).
# shellcheck source=scripts/debian-apt.sh
source "$REPO/scripts/debian-apt.sh"

APTD=$CACHE/apt
setup_apt() {
	local mirror security suite opts
	mkdir -p "$APTD"
	read -r mirror security < <(debian_mirrors)
	[[ -n $mirror ]] || die "no debian mirror found in the host's apt sources"
	# check-valid-until=no: the mirror may serve a frozen snapshot whose
	# Release files are past their Valid-Until (seen with sid); the
	# signatures are still checked.
	opts="arch=amd64 signed-by=$KEYRING check-valid-until=no"
	for suite in bullseye bookworm trixie sid; do
		echo "deb [$opts] $mirror $suite main"
		if [[ $suite != sid && $security != - ]]; then
			echo "deb [$opts] $security $suite-security main"
		fi
	done >"$WORK/sources.list"
	# A changed source list (other mirror) forces a refresh of the lists.
	if ! cmp -s "$WORK/sources.list" "$APTD/sources.list"; then
		mv "$WORK/sources.list" "$APTD/sources.list"
		rm -f "$APTD/updated"
	fi
	# Lists kept compressed and no source package cache: ~190 MB of apt
	# state for the seven suites instead of ~430 MB.
	{
		private_apt_conf "$APTD"
		cat <<-CONF
			APT::Architectures { "amd64"; };
			Acquire::GzipIndexes "true";
			Dir::Cache::srcpkgcache "";
			APT::Get::List-Cleanup "true";
		CONF
		# apt drops to its _apt user for downloads when run as root. It
		# cannot reach a cache under a home of mode 700, such as /root: apt
		# would then download as root anyway, with a warning that reads as
		# a failed update. Say so instead; signatures are checked as ever.
		if [[ $(id -u) -eq 0 ]] && id _apt >/dev/null 2>&1; then
			chmod 755 "$CACHE" "$APTD"
			if ! runuser -u _apt -- test -x "$APTD" 2>/dev/null; then
				echo 'APT::Sandbox::User "root";'
			fi
		fi
	} >"$APTD/apt.conf.new"
	mv "$APTD/apt.conf.new" "$APTD/apt.conf"
	export APT_CONFIG=$APTD/apt.conf
}

update_lists() {
	local age=$MAX_AGE t0
	if [[ -e $APTD/updated ]]; then
		age=$(($(date +%s) - $(stat -c %Y "$APTD/updated")))
	fi
	((age < MAX_AGE)) && return
	log "apt-get update (private config: $APTD)"
	t0=$(now)
	if apt-get update -qq >"$WORK/update.log" 2>&1 && ! grep -q '^[WE]:' "$WORK/update.log"; then
		touch "$APTD/updated"
		log "apt-get update took $(since "$t0")s"
	elif compgen -G "$APTD/state/lists/*_Packages*" >/dev/null; then
		cat "$WORK/update.log" >&2
		log "apt-get update failed; using the lists from $(date -r "$APTD/state/lists" '+%F %T')"
	else
		cat "$WORK/update.log" >&2
		die "apt-get update failed"
	fi
}

# --- kernel resolution -------------------------------------------------------------
# Names seen: linux-image-5.10.0-46-amd64, linux-image-6.1.0-56-amd64,
# linux-image-6.12.118+deb13-amd64 (each also with -unsigned), and in sid
# linux-binary-7.2.13+deb14-amd64 / linux-binary-unsigned-7.2.13+deb14-amd64,
# where linux-image-* has become a meta package without the vmlinuz.
# cloud/rt flavours and -dbg packages are skipped.
# (apt-cache pkgnames and policy read only the binary cache: fast; apt-cache
# show reads the Packages files: ~0.5 s a call.)

# resolve SERIES: sets PKG and VER to the newest package carrying a vmlinuz.
resolve() {
	local re=${1//./\\.} names abi pkg
	names=$(apt-cache pkgnames linux-)
	abi=$(sed -nE "s/^linux-(image|binary)-(unsigned-)?(${re}[.-][0-9][0-9a-z.+~-]*)-amd64(-unsigned)?\$/\3/p" <<<"$names" |
		grep -vE -- '-(cloud|rt)$' | sort -uV | tail -n1 || true)
	[[ -n $abi ]] || die "no debian amd64 kernel package for series $1"
	for pkg in "linux-binary-$abi-amd64" "linux-binary-unsigned-$abi-amd64" \
		"linux-image-$abi-amd64" "linux-image-$abi-amd64-unsigned"; do
		grep -qxF -- "$pkg" <<<"$names" || continue
		PKG=$pkg
		VER=$(apt-cache policy "$pkg" | sed -n 's/^ *Candidate: //p')
		[[ -n $VER && $VER != "(none)" ]] || die "no candidate version of $pkg"
		return
	done
	die "no kernel image package for $abi"
}

# extract_vmlinux BZIMAGE OUT: decompress the kernel payload to a plain ELF.
# The bzImage header gives the payload's place exactly (boot protocol 2.08+:
# payload_offset at 0x248 and payload_length at 0x24c, counted from the
# protected-mode code after the setup sectors). The payload ends with the
# uncompressed size as le32, which the decompressors would take for garbage.
extract_vmlinux() {
	local img=$1 out=$2 sects off len start magic cmd want got
	u() { od -An -t"u$1" -j "$2" -N "$1" "$img" | tr -d ' '; }
	[[ $(od -An -c -j $((0x202)) -N4 "$img" | tr -d ' ') == HdrS ]] || die "$img: not a bzImage"
	sects=$(u 1 $((0x1f1)))
	((sects)) || sects=4
	off=$(u 4 $((0x248)))
	len=$(u 4 $((0x24c)))
	start=$(((sects + 1) * 512 + off))
	magic=$(od -An -tx1 -j "$start" -N6 "$img" | tr -d ' \n')
	case $magic in
	1f8b*) cmd="gzip -dc" ;;
	fd377a585a00) cmd="xz -dc" ;;
	28b52ffd*) cmd="zstd -dcq" ;;
	5d0000*) cmd="xz -dc --format=lzma" ;;
	425a68*) cmd="bzip2 -dc" ;;
	02214c18*) cmd="lz4 -dc" ;;
	*) die "$img: unknown payload compression (magic $magic)" ;;
	esac
	have "${cmd%% *}" || die "${cmd%% *} is needed to decompress $img"
	dd if="$img" bs=1M iflag=skip_bytes,count_bytes skip="$start" count=$((len - 4)) status=none | $cmd >"$out"
	want=$(u 4 $((start + len - 4)))
	got=$(stat -c %s "$out")
	[[ $(od -An -c -N4 "$out" | tr -d ' ') == 177ELF ]] || die "$img: payload is not an ELF file"
	((got == want)) || die "$img: decompressed $got bytes, header says $want"
	echo "${cmd%% *}"
}

# The sock_diag modules (tcptrace kill, peers, the stuck diagnosis): built
# as modules by Debian, so the initramfs carries them, uncompressed, in
# load order, under /modules/<release>/; vminit loads them.
DIAG_MODULES=('net/core/sock_diag.ko*' 'net/ipv4/inet_diag.ko*' 'net/ipv4/tcp_diag.ko*')
MODDIRS=()

# save_modules ROOT OUT: the diag modules found under ROOT into
# OUT/<release>/, decompressed, with their load order in OUT/<release>/order.
save_modules() {
	local root=$1 out=$2 pat f rel name
	mkdir -p "$out"
	for pat in "${DIAG_MODULES[@]}"; do
		f=$(find "$root" -path "*/kernel/$pat" -type f | head -n1)
		[[ -n $f ]] || continue # built in
		rel=$(sed -E 's|.*/modules/([^/]+)/kernel/.*|\1|' <<<"$f")
		name=$(basename "$f")
		mkdir -p "$out/$rel"
		case $name in
		*.ko.xz) xz -dc "$f" >"$out/$rel/${name%.xz}" && name=${name%.xz} ;;
		*.ko.zst) zstd -qdc "$f" >"$out/$rel/${name%.zst}" && name=${name%.zst} ;;
		*.ko.gz) gzip -dc "$f" >"$out/$rel/${name%.gz}" && name=${name%.gz} ;;
		*) cp "$f" "$out/$rel/$name" ;;
		esac
		echo "$name" >>"$out/$rel/order"
	done
	touch "$out/done"
}

# fetch SERIES: sets VMLINUX to the cached ELF kernel for the newest package.
# Cache: $CACHE/kernels/SERIES/PACKAGE_VERSION/{vmlinux,config,package}; a new
# version replaces the older ones of its series.
fetch() {
	local t0 t1 dir dl deb img how mib
	t0=$(now)
	resolve "$1"
	dir=$CACHE/kernels/$1/${PKG}_${VER//:/%3a}
	VMLINUX=$dir/vmlinux
	MODDIRS+=("$dir/modules")
	if [[ -s $VMLINUX && -f $dir/modules/done ]]; then
		log "$1: $PKG $VER (cached, $(since "$t0")s)"
		return
	fi
	dl=$WORK/dl-$1
	rm -rf "$dl" && mkdir -p "$dl/root"
	if [[ $(id -u) -eq 0 ]] && id _apt >/dev/null 2>&1; then chown _apt "$dl"; fi
	(cd "$dl" && apt-get download -qq "$PKG=$VER" >/dev/null)
	deb=$(echo "$dl"/*.deb)
	[[ -f $deb ]] || die "download of $PKG $VER failed"
	mib=$(du -m "$deb" | cut -f1)
	t1=$(now)
	# vmlinuz is boot/vmlinuz-* up to 6.12, usr/lib/modules/*/vmlinuz in 7.x;
	# tar fails when the config pattern matches nothing: judge by the result.
	dpkg-deb --fsys-tarfile "$deb" |
		tar -x -C "$dl/root" --wildcards '*vmlinuz*' '*boot/config-*' "${DIAG_MODULES[@]/#/*/kernel/}" 2>/dev/null || true
	img=$(find "$dl/root" -type f -name 'vmlinuz*' | head -n1)
	[[ -n $img ]] || die "no vmlinuz in $deb"
	mkdir -p "$dir.tmp"
	how=$(extract_vmlinux "$img" "$dir.tmp/vmlinux")
	find "$dl/root" -type f -name 'config-*' -exec cp {} "$dir.tmp/config" \;
	# From 7.x the modules are a package of their own (linux-modules-ABI).
	if [[ -z $(find "$dl/root" -name 'tcp_diag.ko*' | head -n1) && $PKG == linux-binary-* ]]; then
		local mp=${PKG#linux-binary-}
		mp=linux-modules-${mp#unsigned-}
		rm -f "$dl"/*.deb
		if (cd "$dl" && apt-get download -qq "$mp=$VER" >/dev/null 2>&1); then
			dpkg-deb --fsys-tarfile "$dl"/*.deb |
				tar -x -C "$dl/root" --wildcards "${DIAG_MODULES[@]/#/*/kernel/}" 2>/dev/null || true
		else
			log "$1: no $mp $VER: the sock_diag tests will fail there"
		fi
	fi
	save_modules "$dl/root" "$dir.tmp/modules"
	echo "$PKG $VER" >"$dir.tmp/package"
	rm -rf "$dir" && mv "$dir.tmp" "$dir"
	find "$CACHE/kernels/$1" -mindepth 1 -maxdepth 1 ! -path "$dir" -exec rm -rf {} +
	rm -rf "$dl"
	log "$1: $PKG $VER (downloaded ${mib}MiB in $(since "$t0" "$t1")s, unpacked and $how-decompressed in $(since "$t1")s)"
}

# --- initramfs -----------------------------------------------------------------------
# cpio newc with /init (init/main.go), the programs under /vmtest, $VMTEST_ROOT
# and $VMTEST_BINS with their libraries; gzip -1 (fast to make and unpack).
build_initramfs() {
	local root=$WORK/root t0 i p base bin lib
	t0=$(now)
	mkdir -p "$root"/{vmtest,dev,proc,sys,tmp,run}
	(cd "$REPO" && CGO_ENABLED=0 go build -trimpath -ldflags=-s -o "$root/init" ./scripts/vminit)
	[[ -z ${VMTEST_ROOT:-} ]] || cp -a "$VMTEST_ROOT/." "$root/"
	if ((${#progs[@]} == 0)); then
		# The module's tests: one static binary per package, run in a copy
		# of its directory's testdata, as go test runs it.
		local imp dir rel
		while read -r imp dir; do
			rel=${dir#"$REPO"/}
			# Packages that never touch the kernel run on the host only:
			# the Kubernetes ones need an API server's 130 MB of binaries.
			case $rel in kube | internal/kubetest | deploy | metrics | server) continue ;; esac
			mkdir -p "$root/pkg/$rel"
			(cd "$REPO" && CGO_ENABLED=0 go test -c -o "$root/pkg/$rel/$(basename "$rel").test" "$imp")
			[[ ! -d $dir/testdata ]] || cp -a "$dir/testdata" "$root/pkg/$rel/"
			((${#progs[@]} == 0)) || progs+=(';')
			progs+=("/pkg/$rel/$(basename "$rel").test" -test.v)
		done < <(cd "$REPO" && go list -f '{{if or .TestGoFiles .XTestGoFiles}}{{.ImportPath}} {{.Dir}}{{end}}' ./...)
	else
		# Each program (first word, and the word after each ';') moves in.
		for ((i = 0; i < ${#progs[@]}; i++)); do
			((i == 0)) || [[ ${progs[i - 1]} == ';' ]] || continue
			p=${progs[i]}
			if [[ -n ${VMTEST_ROOT:-} && -f $VMTEST_ROOT/${p#/} ]]; then
				progs[i]=/${p#/}
				continue
			fi
			[[ -f $p && -x $p ]] || die "no such program: $p"
			base=$(basename "$p")
			[[ ! -e $root/vmtest/$base ]] || die "two programs named $base"
			cp "$p" "$root/vmtest/$base"
			progs[i]=/vmtest/$base
		done
	fi
	for d in "${MODDIRS[@]}"; do
		[[ -d $d ]] || continue
		mkdir -p "$root/modules"
		find "$d" -mindepth 1 -maxdepth 1 -type d -exec cp -r {} "$root/modules/" \;
	done
	for bin in ${VMTEST_BINS:-}; do
		p=$(command -v "$bin") || die "no such host program: $bin"
		mkdir -p "$root/usr/bin"
		cp -L "$p" "$root/usr/bin/"
		for lib in $(ldd "$p" 2>/dev/null | grep -oE '/[^ ]+' || true); do
			mkdir -p "$root$(dirname "$lib")"
			cp -Ln "$lib" "$root$lib"
		done
	done
	# The program list goes in a file, one word per line: the kernel hands
	# init at most 32 arguments (MAX_INIT_ARGS) and panics at boot with
	# "Too many boot init vars" past that, which the module's tests exceed.
	printf '%s\n' "${progs[@]}" >"$root/vmtest/args"
	(cd "$root" && find . -print0 | cpio --null -o -H newc -R 0:0 --quiet | gzip -1) >"$WORK/initramfs.gz"
	log "initramfs: $(du -h "$WORK/initramfs.gz" | cut -f1) in $(since "$t0")s"
}

# --- boot ----------------------------------------------------------------------------
# boot SERIES VMLINUX: boots one kernel with the console saved to
# $WORK/SERIES.log (and streamed to stdout when running one at a time); writes
# "pass|FAIL <seconds>s" to $WORK/SERIES.result. The marker line decides.
boot() {
	local s=$1 vmlinux=$2 t0 code out=/dev/stdout status
	((JOBS == 1)) || out=/dev/null
	t0=$(now)
	# -nodefaults: no VGA, NIC or disks to probe; -no-reboot: panic=-1 and
	# init's reboot fallback end qemu. qemu's own exit status is not used.
	# sed: drop \r and SeaBIOS' terminal escapes.
	timeout --foreground -k 10 "$TIMEOUT" qemu-system-x86_64 \
		-accel tcg -smp "$SMP" -m "$MEM" \
		-kernel "$vmlinux" -initrd "$WORK/initramfs.gz" -append "$CMDLINE" \
		-nographic -no-reboot -nodefaults -serial stdio -monitor none \
		"${qemu_opts[@]}" </dev/null 2>&1 |
		sed -u -e 's/\r$//' -e 's/\x1b\[[0-9;?]*[A-Za-z]//g' -e 's/\x1bc//g' |
		tee "$WORK/$s.log" >"$out" || true
	code=$(sed -n "s/^$MARKER\([0-9]*\)\$/\1/p" "$WORK/$s.log" | tail -n1)
	mkdir -p "$LOGDIR"
	cp "$WORK/$s.log" "$LOGDIR/$s.log"
	if [[ -z $code ]]; then
		log "$s: no $MARKER line (timeout ${TIMEOUT}s or kernel crash) after $(since "$t0")s"
		status=FAIL
	else
		log "$s: exit code $code in $(since "$t0")s"
		status=pass
		[[ $code == 0 ]] || status=FAIL
	fi
	echo "$status $(since "$t0")s" >"$WORK/$s.result"
}

# --- main ----------------------------------------------------------------------------
t_all=$(now)
declare -A kernel
{
	# One run at a time touches the apt state and the kernel cache.
	flock 9
	setup_apt
	update_lists
	for s in "${series[@]}"; do
		fetch "$s"
		kernel[$s]=$VMLINUX
	done
} 9>"$CACHE/lock"
build_initramfs

CMDLINE="console=ttyS0 panic=-1 quiet ${VMTEST_APPEND:-} ${VMTEST_ENV:-}"
((${#CMDLINE} < 2000)) || die "kernel command line too long (${#CMDLINE} bytes)"

# VMTEST_JOBS>1 boots several kernels at once (each qemu -smp 1 keeps one host
# core busy); their console logs are printed whole, in order, at the end.
for s in "${series[@]}"; do
	log "$s: booting $(cat "$(dirname "${kernel[$s]}")/package") (-smp $SMP, tcg)"
	if ((JOBS == 1)); then
		boot "$s" "${kernel[$s]}"
		continue
	fi
	while (($(jobs -rp | wc -l) >= JOBS)); do wait -n || true; done
	boot "$s" "${kernel[$s]}" &
done
wait
if ((JOBS > 1)); then
	# Whole consoles only of the kernels that failed: a passing one is
	# thousands of -test.v lines (kept in $LOGDIR).
	for s in "${series[@]}"; do
		grep -q "^${MARKER}0\$" "$WORK/$s.log" && continue
		printf '\n--- console of %s ---\n' "$s"
		cat "$WORK/$s.log"
	done
fi

# Failed tests, then the table.
for s in "${series[@]}"; do
	if grep -q -- '--- FAIL' "$WORK/$s.log"; then
		echo
		echo "$s: failed tests:"
		grep -- '--- FAIL' "$WORK/$s.log" | sed 's/^/  /'
	fi
done
echo
printf '%-6s %-44s %-12s %-18s %s\n' kernel package result "tests pass/fail/skip" "hook chosen (auto)"
fail=0
for s in "${series[@]}"; do
	r=$(cat "$WORK/$s.result" 2>/dev/null || echo "FAIL ?")
	[[ $r == pass* ]] || fail=1
	pass=$(grep -c '^--- PASS' "$WORK/$s.log" || true)
	failed=$(grep -c '^--- FAIL' "$WORK/$s.log" || true)
	skip=$(grep -c '^--- SKIP' "$WORK/$s.log" || true)
	hook=$(sed -n 's/^VMTEST_ATTACH kernel=[^ ]* //p' "$WORK/$s.log" | tail -n1)
	printf '%-6s %-44s %-12s %-18s %s\n' "$s" "$(cat "$(dirname "${kernel[$s]}")/package")" "$r" \
		"$pass/$failed/$skip" "${hook:--}"
done
echo "total $(since "$t_all")s; consoles in $LOGDIR"
exit $fail
