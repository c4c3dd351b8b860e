# Shared by scripts/bench.sh and scripts/soak.sh: sourced, not run. The
# caller sets PROG (the prefix of its messages) and SETTLE_TIMEOUT.

die() {
	echo "$PROG: $*" >&2
	exit 1
}

warn() {
	echo "$PROG: $*" >&2
}

# field NAME LINE: the integer value of NAME=... in a logfmt line, or nothing.
field() {
	sed -n "s/.*\(^\|[[:space:]]\)$1=\([0-9][0-9]*\).*/\2/p" <<<"$2"
}

# json_int NAME FILE: an integer field of churn's one-line JSON result.
json_int() {
	sed -n "s/.*\"$1\":\([0-9][0-9]*\).*/\1/p" "$2"
}

# first_free_port FROM: the first port from FROM on with no socket at all,
# so that connections of an earlier run, in TIME_WAIT, never meet new ones.
first_free_port() {
	local p
	for ((p = $1; p < $1 + 500; p++)); do
		if [[ -z $(ss -Htan "( sport = :$p or dport = :$p )") ]]; then
			echo "$p"
			return
		fi
	done
	die "no free port in $1..$((p - 1))"
}

# settle PORT: wait until no socket on PORT is between states. A final ACK
# that the loopback backlog dropped is retransmitted after an RTO (200 ms or
# more); stopping the tracer before that loses the last transition
# unaccounted. TIME_WAIT has no further transitions.
settle() {
	local i
	for ((i = 0; i < SETTLE_TIMEOUT * 10; i++)); do
		[[ -z $(ss -Htan state all exclude time-wait exclude listening "( sport = :$1 or dport = :$1 )") ]] && return
		sleep 0.1
	done
	warn "sockets on port $1 still open after ${SETTLE_TIMEOUT}s"
}
