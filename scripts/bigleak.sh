#!/usr/bin/env bash
# A large leak: LEAK_N (default 100,000) server sockets held in CLOSE-WAIT,
# under tcptrace closewait (default, quiet mode). Three cases:
#   none     no leak: tcptrace idle on this host
#   live     tcptrace first, then the leak: each socket found by the table scan
#   startup  the leak first: every socket found by the start-up listing
# For each: seconds until every socket is reported stuck (after the
# threshold), tcptrace's CPU until then, its CPU over LEAK_IDLE seconds after
# (the periodic table scans), its peak RSS, and the longest table scan.
# With the leak reported, LEAK_SCRAPES scrapes of /metrics (--listen on a
# loopback port): median seconds per scrape, tracer CPU per scrape, bytes.
# Needs root. Meant for `make bigleak`; not in CI. LEAK_TCPTRACE measures
# another build instead.
set -euo pipefail
N=${LEAK_N:-100000}
IDLE=${LEAK_IDLE:-30}
THRESHOLD=${LEAK_THRESHOLD:-5s}
SCRAPES=${LEAK_SCRAPES:-10}
PORT=${LEAK_PORT:-19979}
repo=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
PROG=bigleak
# shellcheck source=scripts/lib.sh
source "$repo/scripts/lib.sh"
[[ $(id -u) == 0 ]] || die "needs root"
dir=$(mktemp -d "${TMPDIR:-/tmp}/tcptrace-bigleak.XXXXXX")
(cd "$repo" && go build -o "$dir/tcptrace" ./cmd/tcptrace && go build -o "$dir/leaker" ./scripts/leaker)
# LEAK_TCPTRACE: another tcptrace binary to measure, e.g. an older build.
[[ -n ${LEAK_TCPTRACE:-} ]] && cp "$LEAK_TCPTRACE" "$dir/tcptrace"
ticks=$(getconf CLK_TCK)
cpu() { awk -v hz="$ticks" '{ printf "%.2f", ($14 + $15) / hz }' "/proc/$1/stat"; }
leaker_pid= tracer_pid=
cleanup() {
	[[ -n $tracer_pid ]] && kill -INT "$tracer_pid" 2>/dev/null || true
	[[ -n $leaker_pid ]] && kill $leaker_pid 2>/dev/null || true
	wait 2>/dev/null || true
}
trap cleanup EXIT

# One leaker holds at most what RLIMIT_NOFILE's hard limit allows.
per=$((($(ulimit -Hn) - 1000) / 2))
procs=$(((N + per - 1) / per))
start_leak() {
	local i left=$N
	leaker_pid=
	for ((i = 0; i < procs; i++)); do
		local n=$(((left + procs - i - 1) / (procs - i)))
		left=$((left - n))
		"$dir/leaker" -n "$n" >"$dir/leaker$i.out" 2>&1 &
		leaker_pid+=" $!"
	done
	for _ in $(seq 1200); do
		(($(cat "$dir"/leaker*.out | grep -c '^ready') == procs)) && return 0
		for p in $leaker_pid; do
			kill -0 "$p" 2>/dev/null || die "leaker: $(cat "$dir"/leaker*.out)"
		done
		sleep 0.1
	done
	die "leakers not ready after 120 s"
}
start_tracer() {
	"$dir/tcptrace" closewait --threshold "$THRESHOLD" --output json --listen "127.0.0.1:$PORT" >"$dir/$1.out" 2>"$dir/$1.err" &
	tracer_pid=$!
	for _ in $(seq 600); do
		grep -q 'msg=attached' "$dir/$1.err" && return 0
		sleep 0.1
	done
	die "tcptrace did not attach: $(cat "$dir/$1.err")"
}
stop_tracer() {
	kill -INT "$tracer_pid"
	wait "$tracer_pid" || warn "tcptrace exited $?"
	tracer_pid=
}

echo "$N sockets held in CLOSE-WAIT by $procs processes; threshold $THRESHOLD"
printf '%-8s %10s %12s %14s %14s %10s %10s %12s %10s %s\n' case sockets "all stuck s" "cpu to then s" "idle cpu s/${IDLE}s" "peak MiB" \
	"scrape s" "scrape cpu s" "scrape KiB" summary
for c in none live startup; do
	[[ $c == startup ]] && start_leak
	start_tracer "$c"
	t0=$(date +%s.%N)
	[[ $c == live ]] && start_leak
	took=- cpu1=$(cpu "$tracer_pid")
	if [[ $c != none ]]; then
		for _ in $(seq 1800); do
			(($(grep -c '"event":"stuck"' "$dir/$c.out" || true) >= N)) && break
			sleep 0.1
		done
		n=$(grep -c '"event":"stuck"' "$dir/$c.out" || true)
		((n >= N)) || warn "$c: only $n of $N reported stuck"
		took=$(awk -v a="$t0" -v b="$(date +%s.%N)" 'BEGIN { printf "%.1f", b - a }')
		cpu1=$(cpu "$tracer_pid")
	fi
	cpu_then=$cpu1
	s0=$(cpu "$tracer_pid")
	times=$(for _ in $(seq "$SCRAPES"); do
		curl -s -o "$dir/scrape" -w '%{time_total}\n' "http://127.0.0.1:$PORT/metrics"
	done | sort -n)
	scrape=$(sed -n "$(((SCRAPES + 1) / 2))p" <<<"$times")
	scrape_cpu=$(awk -v a="$s0" -v b="$(cpu "$tracer_pid")" -v n="$SCRAPES" 'BEGIN { printf "%.3f", (b - a) / n }')
	scrape_kib=$(($(stat -c %s "$dir/scrape") / 1024))
	cpu1=$(cpu "$tracer_pid")
	sleep "$IDLE"
	cpu2=$(cpu "$tracer_pid")
	peak=$(awk '/^VmHWM:/ { printf "%.1f", $2 / 1024 }' "/proc/$tracer_pid/status")
	stop_tracer
	summary=$(grep 'msg=stopped' "$dir/$c.err" | grep -o 'lost=[0-9]* \|table_scans=[0-9]* \|table_scan_max=[^ ]* \|owner_scans=[0-9]* ' | tr -d '\n')
	printf '%-8s %10s %12s %14s %14s %10s %10s %12s %10s %s\n' "$c" "$([[ $c == none ]] && echo 0 || echo "$N")" "$took" "$cpu_then" \
		"$(awk -v a="$cpu1" -v b="$cpu2" 'BEGIN { printf "%.2f", b - a }')" "$peak" "$scrape" "$scrape_cpu" "$scrape_kib" "$summary"
	if [[ -n $leaker_pid ]]; then
		kill $leaker_pid
		wait $leaker_pid 2>/dev/null || true
		leaker_pid=
		sleep 2 # the kernel frees the sockets
	fi
done
echo "files: $dir"
