#!/usr/bin/env bash
# Benchmark: loopback connection churn with no tracer, under tcptrace
# (closewait and trace) and under the peers that are installed (libbpf-tools
# tcpstates, a tcpstates-style bpftrace script). Configurations alternate, in an order rotated round
# by round so that drift of the host hits them alike. Prints the machine, one
# table of medians, and writes the same as JSON. Needs root. Meant for
# `make bench`.
#
#   BENCH_ROUNDS   rounds; each runs every configuration once (default 5)
#   BENCH_N        connections per run (default 30000)
#   BENCH_WORKERS  churn client workers (default 4)
#   BENCH_PORT     first port to try; each run takes a fresh one (default 47101)
#   BENCH_CONFIGS  configurations (default "none closewait closewait-all trace tcpstates bpftrace");
#                  closewait is the default, quiet mode, closewait-all the
#                  every-socket stream (--all)
#   BENCH_SHAPES   workload shapes, each a whole benchmark (default "server-first client-first"):
#                  server-first: the server closes on accept, the client reads
#                  to EOF and closes (the client's socket passes CLOSE-WAIT);
#                  client-first: the client closes, the server reads EOF and
#                  closes (the server's socket passes CLOSE-WAIT)
#   BENCH_PEERS    0: neither install nor run the peers (default 1)
#   BENCH_JSON     JSON report (default bench.json in the run's temp dir)
#   BENCH_KEEP_EVENTS  1: keep every run's whole output (default: its last
#                  1000 lines, in events.tail)
#
# The run directory is on /dev/shm when TMPDIR is unset and it is a tmpfs:
# a trace run writes about 120 MB, and the disk's write-back of earlier runs
# would otherwise land on later ones, whatever their configuration.
#
# Per run: churn's conn/s; the tracer's CPU from the start of the churn to its
# exit (drain included, start-up excluded) and its peak RSS (GNU time); events
# emitted (lines in its output for the run's port) against churn's expected
# count; events it reports lost; unaccounted = expected - emitted - lost; and
# the kernel's run_time_ns / run_cnt of its programs on inet_sock_set_state,
# read just before it stops. Run-time statistics cost every program run two
# clock reads, so the rounds run with kernel.bpf_stats_enabled=0, and one
# more round of each tracer with it set to 1 gives ns/run (and nothing else).
set -euo pipefail

ROUNDS=${BENCH_ROUNDS:-5}
N=${BENCH_N:-30000}
WORKERS=${BENCH_WORKERS:-4}
BASE_PORT=${BENCH_PORT:-47101}
CONFIGS=${BENCH_CONFIGS:-none closewait closewait-all trace tcpstates bpftrace}
SHAPES=${BENCH_SHAPES:-server-first client-first}
PEERS=${BENCH_PEERS:-1}
ATTACH_TIMEOUT=60
STOP_TIMEOUT=20
SETTLE_TIMEOUT=10

repo=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
PROG=bench
# shellcheck source=scripts/lib.sh
source "$repo/scripts/lib.sh"
tmp=${TMPDIR:-/tmp}
# The binaries are built there too: not if it is mounted noexec.
if [[ -z ${TMPDIR:-} ]] && [[ $(stat -f -c %T /dev/shm 2>/dev/null) == tmpfs ]] &&
	! findmnt -no OPTIONS /dev/shm 2>/dev/null | grep -qw noexec; then
	tmp=/dev/shm
fi
dir=$(mktemp -d "$tmp/tcptrace-bench.XXXXXX")
JSON=${BENCH_JSON:-$dir/bench.json}
bin=$dir/bin
mkdir -p "$bin"

# Background processes to stop if the script dies half-way, and the sysctl
# to restore.
tracer_pid=
wrapper_pid=
stats_prev=
cleanup() {
	local rc=$?
	if [[ -n $tracer_pid ]] && kill -0 "$tracer_pid" 2>/dev/null; then
		# SIGINT first: the tracers then detach their programs.
		kill -INT "$tracer_pid" 2>/dev/null || true
		for _ in $(seq 30); do
			kill -0 "$tracer_pid" 2>/dev/null || break
			sleep 0.1
		done
		kill -KILL "$tracer_pid" 2>/dev/null || true
	fi
	[[ -n $wrapper_pid ]] && kill "$wrapper_pid" 2>/dev/null || true
	if [[ -n $stats_prev ]]; then
		sysctl -qw kernel.bpf_stats_enabled="$stats_prev" || true
	fi
	echo "bench files: $dir" >&2
	exit "$rc"
}
trap cleanup EXIT
trap 'exit 130' INT TERM

# sfield NAME LINE: the non-blank value of NAME=... in a logfmt line.
sfield() {
	sed -n "s/.*\(^\|[[:space:]]\)$1=\([^[:space:]]*\).*/\2/p" <<<"$2"
}
# json_num NAME FILE: a number field of churn's one-line JSON.
json_num() {
	sed -n "s/.*\"$1\":\([0-9.eE+-][0-9.eE+-]*\).*/\1/p" "$2"
}

# Each run takes the first free port after the previous run's.
next_port=$BASE_PORT
# cpu_ticks PID: utime + stime of PID in clock ticks (comm has no spaces here).
cpu_ticks() {
	awk '{ print $14 + $15 }' "/proc/$1/stat" 2>/dev/null || echo 0
}

# ensure PACKAGE COMMAND: install the Debian package when COMMAND is missing
# and apt works. Returns non-zero when COMMAND is still missing.
apt_updated=false
ensure() {
	local pkg=$1 cmd=$2
	command -v "$cmd" >/dev/null && return 0
	command -v apt-get >/dev/null || return 1
	if [[ -z $(apt-cache policy "$pkg" 2>/dev/null | sed -n 's/^ *Candidate: *\([^(].*\)/\1/p') ]] && ! $apt_updated; then
		apt_updated=true
		timeout 300 apt-get update >>"$dir/apt.log" 2>&1 || true
	fi
	echo "installing $pkg" >&2
	DEBIAN_FRONTEND=noninteractive timeout 600 apt-get install -y --no-install-recommends "$pkg" >>"$dir/apt.log" 2>&1 ||
		warn "could not install $pkg (see $dir/apt.log)"
	command -v "$cmd" >/dev/null
}

[[ $(id -u) == 0 ]] || die "needs root to load eBPF"
command -v ss >/dev/null || die "needs ss (iproute2)"

echo "building into $bin" >&2
(cd "$repo" && go build -o "$bin/tcptrace" ./cmd/tcptrace && go build -o "$bin/churn" ./cmd/churn &&
	go build -o "$bin/benchreport" ./scripts/benchreport)

# Classic tracepoints (the peers') need tracefs.
if [[ ! -e /sys/kernel/tracing/events/sock/inet_sock_set_state ]]; then
	mount -t tracefs nodev /sys/kernel/tracing 2>/dev/null || warn "could not mount tracefs"
fi

have_bpftool=true
ensure bpftool bpftool || { have_bpftool=false; warn "no bpftool: no ns/run, peers' attach is a guess"; }
have_time=true
ensure time /usr/bin/time || { have_time=false; warn "no GNU time: CPU and RSS are sampled from /proc"; }

configs=()
for c in $CONFIGS; do
	case $c in
	none | closewait | closewait-all | trace) configs+=("$c") ;;
	tcpstates)
		if [[ $PEERS == 1 ]] && ensure libbpf-tools tcpstates; then
			configs+=("$c")
		else
			warn "peer tcpstates (libbpf-tools) not available: skipped"
		fi
		;;
	bpftrace)
		if [[ $PEERS == 1 ]] && ensure bpftrace bpftrace; then
			configs+=("$c")
		else
			warn "peer bpftrace not available: skipped"
		fi
		;;
	*) die "unknown configuration $c" ;;
	esac
done

stats_prev=$(sysctl -n kernel.bpf_stats_enabled 2>/dev/null || true)
if [[ -n $stats_prev ]]; then
	sysctl -qw kernel.bpf_stats_enabled=0 || { warn "cannot set kernel.bpf_stats_enabled"; stats_prev=; }
fi
stats_round=false

# bt_script PORT: a tcpstates-style bpftrace script, filtered to PORT in its
# predicate. Tracepoint fields are copied first: bpftrace 0.17's code for
# args-> reads after a helper call is rejected by newer verifiers.
bt_script() {
	cat <<EOF
BEGIN
{
	@st[1] = "ESTABLISHED"; @st[2] = "SYN_SENT"; @st[3] = "SYN_RECV";
	@st[4] = "FIN_WAIT1"; @st[5] = "FIN_WAIT2"; @st[6] = "TIME_WAIT";
	@st[7] = "CLOSE"; @st[8] = "CLOSE_WAIT"; @st[9] = "LAST_ACK";
	@st[10] = "LISTEN"; @st[11] = "CLOSING"; @st[12] = "NEW_SYN_RECV";
}

tracepoint:sock:inet_sock_set_state
/args->protocol == 6 && (args->sport == $1 || args->dport == $1)/
{
	\$sk = (uint64)args->skaddr;
	\$sport = args->sport;
	\$dport = args->dport;
	\$old = args->oldstate;
	\$new = args->newstate;
	\$saddr = ntop(args->saddr);
	\$daddr = ntop(args->daddr);
	if (args->family == 10) {
		\$saddr = ntop(args->saddr_v6);
		\$daddr = ntop(args->daddr_v6);
	}
	\$last = @ts[\$sk];
	\$us = \$last ? (nsecs - \$last) / 1000 : 0;
	printf("%llx %-7d %-10s %-15s %-5d %-15s %-5d %-11s -> %-11s %d.%03d\n", \$sk, pid, comm,
		\$saddr, \$sport, \$daddr, \$dport, @st[\$old], @st[\$new], \$us / 1000, \$us % 1000);
	if (\$new == 7) {
		delete(@ts[\$sk]);
	} else {
		@ts[\$sk] = nsecs;
	}
}

END
{
	clear(@st);
	clear(@ts);
}
EOF
}

# attached_peer PID: the peer's program is on the tracepoint.
attached_peer() {
	bpftool -j perf list >"$d/perf.attach.json" 2>/dev/null &&
		"$bin/benchreport" attached -pid "$1" -perf "$d/perf.attach.json"
}

ticks=$(getconf CLK_TCK)
failed=false
shape_args=()

"$bin/benchreport" machine
echo "$N connections per run, $WORKERS workers, $ROUNDS rounds of: ${configs[*]}; shapes: $SHAPES"
echo "bpftool: $($have_bpftool && bpftool version 2>/dev/null | head -n 1 || echo none)"
command -v tcpstates >/dev/null && echo "tcpstates: $(tcpstates -V 2>&1 | head -n 1)"
command -v bpftrace >/dev/null && echo "bpftrace: $(bpftrace --version 2>&1 | head -n 1)"
echo

# run_one CONFIG ROUND: one churn under CONFIG; appends a line to runs.jsonl.
# Returns non-zero when the run failed.
run_one() {
	local config=$1 round=$2 i
	port=$(first_free_port "$next_port")
	next_port=$((port + 1))
	d=$dir/r$round-$config
	mkdir -p "$d"
	if $stats_round; then
		echo "== statistics round: $config, port $port" >&2
	else
		echo "== round $round/$ROUNDS: $config, port $port" >&2
	fi

	local -a tracer=()
	case $config in
	none) ;;
	closewait | trace) tracer=("$bin/tcptrace" "$config" --port "$port" --output json --log-level info) ;;
	closewait-all) tracer=("$bin/tcptrace" closewait --all --port "$port" --output json --log-level info) ;;
	tcpstates) tracer=(tcpstates) ;;
	bpftrace)
		bt_script "$port" >"$d/tcpstates.bt"
		tracer=(bpftrace "$d/tcpstates.bt")
		;;
	esac

	local note="" ok=true
	tracer_pid= wrapper_pid=
	if ((${#tracer[@]})); then
		if $have_time; then
			/usr/bin/time -v -o "$d/time" "${tracer[@]}" >"$d/events.out" 2>"$d/stderr" &
			wrapper_pid=$!
			for _ in $(seq 200); do
				tracer_pid=$(pgrep -P "$wrapper_pid" || true)
				[[ -n $tracer_pid ]] && break
				sleep 0.05
			done
		else
			"${tracer[@]}" >"$d/events.out" 2>"$d/stderr" &
			wrapper_pid=$!
			tracer_pid=$wrapper_pid
		fi
		[[ -n $tracer_pid ]] || { warn "$config: did not start"; return 1; }

		local attached=false
		for ((i = 0; i < ATTACH_TIMEOUT * 10; i++)); do
			kill -0 "$tracer_pid" 2>/dev/null || break
			case $config in
			closewait | closewait-all | trace) grep -q 'msg=attached' "$d/stderr" && attached=true ;;
			*)
				if $have_bpftool; then
					attached_peer "$tracer_pid" && attached=true
				elif ((i >= 50)); then
					attached=true
				fi
				;;
			esac
			$attached && break
			sleep 0.1
		done
		if ! $attached; then
			warn "$config: not attached after ${ATTACH_TIMEOUT}s or exited: $(tail -n 5 "$d/stderr")"
			kill -INT "$tracer_pid" 2>/dev/null || true
			wait "$wrapper_pid" 2>/dev/null || true
			tracer_pid= wrapper_pid=
			printf '{"config":"%s","round":%d,"port":%d,"ok":false,"note":"not attached"}\n' \
				"$config" "$round" "$port" >>"$runs"
			return 1
		fi
	fi

	local cpu0=0 peak=0
	[[ -n $tracer_pid ]] && cpu0=$(cpu_ticks "$tracer_pid")
	local churn_rc=0
	"$bin/churn" -n "$N" -c "$WORKERS" -addr "127.0.0.1:$port" -json "${shape_args[@]}" >"$d/churn.json" 2>"$d/churn.err" || churn_rc=$?
	settle "$port"

	local completed errors rate
	completed=$(json_int completed "$d/churn.json")
	errors=$(json_int errors "$d/churn.json")
	rate=$(json_num conn_per_second "$d/churn.json")
	if [[ $churn_rc != 0 || -z $rate ]]; then
		warn "$config: churn exited $churn_rc: $(cat "$d/churn.err")"
		ok=false note="churn failed"
	fi
	((${errors:-0} == 0)) || warn "$config: churn had $errors failed connections: expected counts are approximate"

	local extra=""
	if [[ -n $tracer_pid ]]; then
		# Counters just before the tracer stops.
		local progs=""
		if $have_bpftool; then
			bpftool -j perf list >"$d/perf.json" 2>/dev/null || true
			bpftool -j prog show >"$d/progs.json" 2>/dev/null || true
			progs=$("$bin/benchreport" progs -pid "$tracer_pid" -perf "$d/perf.json" -progs "$d/progs.json" 2>"$d/progs.err") ||
				warn "$config: no program stats: $(cat "$d/progs.err")"
		fi
		local cpu_now rss
		cpu_now=$(cpu_ticks "$tracer_pid")
		rss=$(awk '/^VmHWM:/ { print $2 }' "/proc/$tracer_pid/status" 2>/dev/null || echo 0)

		kill -INT "$tracer_pid" 2>/dev/null || true
		for ((i = 0; i < STOP_TIMEOUT * 10; i++)); do
			kill -0 "$tracer_pid" 2>/dev/null || break
			sleep 0.1
		done
		if kill -0 "$tracer_pid" 2>/dev/null; then
			kill -KILL "$tracer_pid" 2>/dev/null || true
			warn "$config: did not exit within ${STOP_TIMEOUT}s of SIGINT"
			ok=false note="hung at exit"
		fi
		local tracer_rc=0
		wait "$wrapper_pid" || tracer_rc=$?
		tracer_pid= wrapper_pid=
		if [[ $tracer_rc != 0 ]]; then
			warn "$config: exited $tracer_rc: $(tail -n 5 "$d/stderr")"
			ok=false note="exit $tracer_rc"
		fi

		# CPU from the start of the churn to the exit, drain included.
		local cpu start_cpu
		if $have_time && [[ -s $d/time ]] && grep -q 'User time' "$d/time"; then
			cpu=$(awk -F': ' -v t0="$cpu0" -v hz="$ticks" '/User time|System time/ { s += $2 } END { printf "%.2f", s - t0 / hz }' "$d/time")
			peak=$(awk -F': ' '/Maximum resident set size/ { print $2 }' "$d/time")
		else
			cpu=$(awk -v t="$cpu_now" -v t0="$cpu0" -v hz="$ticks" 'BEGIN { printf "%.2f", (t - t0) / hz }')
			peak=$rss
		fi
		start_cpu=$(awk -v t0="$cpu0" -v hz="$ticks" 'BEGIN { printf "%.2f", t0 / hz }')

		local expected emitted lost stopped=""
		expected=$(json_int transitions_expected "$d/churn.json")
		case $config in
		closewait-all)
			expected=$(json_int closewait_events_expected "$d/churn.json")
			emitted=$(grep -cE '"event":"(close_wait|app_close)"' "$d/events.out" || true)
			;;
		closewait)
			# Quiet: a healthy socket is only counted in the kernel. Nothing
			# is expected on the output; the aggregates must count every
			# connection (checked below).
			expected=0
			emitted=$(grep -c '"event"' "$d/events.out" || true)
			;;
		trace)
			emitted=$(grep -c '"event":"transition"' "$d/events.out" || true)
			;;
		tcpstates)
			# Traces every port: count lines with the run's port as LPORT or
			# RPORT (SKADDR PID COMM LADDR LPORT RADDR RPORT OLD -> NEW MS).
			emitted=$(awk -v p="$port" '$9 == "->" && ($5 == p || $7 == p)' "$d/events.out" | wc -l)
			;;
		bpftrace)
			emitted=$(grep -c ' -> ' "$d/events.out" || true)
			;;
		esac
		case $config in
		closewait | closewait-all | trace)
			stopped=$(grep 'msg=stopped' "$d/stderr" | tail -n 1 || true)
			if [[ -z $stopped ]]; then
				warn "$config: no msg=stopped line"
				ok=false note="no stopped line"
			fi
			# Every per-cause loss counter of the stopped line.
			lost=$({ grep -o '[a-z_]*\(_full\|_miss\|_error\)=[0-9]*' <<<"$stopped" || true; } | awk -F= '{ s += $2 } END { print s + 0 }')
			;;
		tcpstates)
			# Perf buffer overruns ("lost N events on CPU #C"), plus the
			# kernel's recursion misses of its program (below).
			lost=$({ grep -o 'lost [0-9]* events' "$d/stderr" || true; } | awk '{ s += $2 } END { print s + 0 }')
			;;
		bpftrace)
			lost=$(cat "$d/events.out" "$d/stderr" | grep -o 'Lost [0-9]* events' | awk '{ s += $2 } END { print s + 0 }')
			;;
		esac
		local run_time_ns run_cnt rec names
		run_time_ns=$(field run_time_ns "$progs") run_cnt=$(field run_cnt "$progs")
		rec=$(field recursion_misses "$progs") names=$(sfield prog_names "$progs")
		if [[ $config == tcpstates || $config == bpftrace ]]; then
			# Peers do not count the runs the kernel skipped; bpftool does.
			lost=$((lost + ${rec:-0}))
		fi
		if [[ ${BENCH_KEEP_EVENTS:-0} != 1 ]]; then
			tail -n 1000 "$d/events.out" >"$d/events.tail"
			rm -f "$d/events.out"
		fi
		local unaccounted=$((expected - emitted - lost))
		if [[ $config == closewait ]]; then
			# Every connection passed CLOSE-WAIT once: the aggregates count it.
			local counted
			counted=$(sfield closes_counted "$stopped")
			if [[ -z $counted ]] || ((counted != completed)); then
				warn "closewait: the kernel counted ${counted:-no} closes for $completed connections"
				unaccounted=$((completed - ${counted:-0}))
			fi
		fi
		extra=$(printf ',"expected":%d,"emitted":%d,"lost":%d,"unaccounted":%d,"cpu_seconds":%s,"startup_cpu_seconds":%s,"peak_rss_kib":%d' \
			"$expected" "$emitted" "$lost" "$unaccounted" "$cpu" "$start_cpu" "${peak:-0}")
		if [[ -n $run_cnt ]]; then
			extra+=$(printf ',"run_time_ns":%d,"run_cnt":%d,"recursion_misses":%d,"prog_names":"%s"' \
				"$run_time_ns" "$run_cnt" "${rec:-0}" "$names")
		fi
		[[ -n $stopped ]] && extra+=$(printf ',"stopped":"%s"' "$(sed 's/.*msg=stopped //; s/["\\]//g' <<<"$stopped")")
		echo "   conn/s ${rate%.*}  emitted $emitted/$expected  lost $lost  unaccounted $unaccounted  cpu ${cpu}s  rss $((${peak:-0} / 1024))MiB  ns/run $([[ -n $run_cnt && $run_cnt != 0 ]] && echo $((run_time_ns / run_cnt)) || echo -)" >&2
	else
		echo "   conn/s ${rate%.*}" >&2
	fi

	printf '{"config":"%s","round":%d,"stats_round":%s,"port":%d,"ok":%s,"note":"%s","completed":%d,"churn_errors":%d,"conn_per_second":%s%s}\n' \
		"$config" "$round" "$stats_round" "$port" "$ok" "$note" "${completed:-0}" "${errors:-0}" "${rate:-0}" "$extra" >>"$runs"
	$ok
}

for shape in $SHAPES; do
	case $shape in
	server-first) shape_args=() ;;
	client-first) shape_args=(-client-closes-first) ;;
	*) die "unknown shape $shape (want server-first or client-first)" ;;
	esac
	runs=$dir/runs-$shape.jsonl
	: >"$runs"
	echo "== shape $shape" >&2
	stats_round=false
	for ((round = 1; round <= ROUNDS; round++)); do
		# Each round starts one configuration later: a run is slowed by the
		# TIME_WAIT sockets of the runs before it, and rotating the order
		# spreads that over the configurations instead of always charging
		# the last ones.
		k=${#configs[@]} order=()
		for ((i = 0; i < k; i++)); do order+=("${configs[(i + round - 1) % k]}"); done
		for config in "${order[@]}"; do
			if ! run_one "$config" "$round"; then
				case $config in
				none | closewait | closewait-all | trace) failed=true ;;
				esac
			fi
		done
	done

	if [[ -n $stats_prev ]]; then
		sysctl -qw kernel.bpf_stats_enabled=1
		stats_round=true
		echo "== run-time statistics round (kernel.bpf_stats_enabled=1): ns/run only" >&2
		for config in "${configs[@]}"; do
			[[ $config == none ]] && continue
			run_one "$config" $((ROUNDS + 1)) || warn "$config: statistics round failed"
		done
		sysctl -qw kernel.bpf_stats_enabled=0
	else
		warn "kernel.bpf_stats_enabled unavailable: no ns/run"
	fi

	echo
	echo "shape: $shape"
	"$bin/benchreport" report -runs "$runs" -json "${JSON%.json}-$shape.json" -n "$N" -workers "$WORKERS" -rounds "$ROUNDS"
	echo
done
echo "JSON: ${JSON%.json}-<shape>.json"
echo "runs: $dir (per run: churn.json, events.out or events.tail, stderr, time, progs.json)"
cat <<'EOF'
conn/s: churn's connections per second; vs none: ratio to the no-tracer median.
cpu s: tracer CPU from the start of the churn to its exit; peak RSS over its life.
cpu/100k: that CPU per 100,000 connections.
emitted/expected: events for the run's port (tcptrace closewait-all: close_wait
and app_close; closewait: nothing is expected for healthy sockets, and the
kernel's aggregates must count every close; the others: state transitions,
10 per connection + 2 for the listener).
lost: counted by the tracer (tcptrace: per-cause sum; peers: perf-buffer losses
they print + the kernel's recursion misses of their program, host-wide).
ns/run: run_time_ns / run_cnt of the programs on inet_sock_set_state, from an
extra round with kernel.bpf_stats_enabled=1 (the other rounds run without the
statistics' own cost); run_cnt counts runs for every socket on the host.
EOF
if $failed; then
	echo "bench: a tcptrace or baseline run FAILED" >&2
	exit 1
fi
