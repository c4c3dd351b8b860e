package events_test

import (
	"encoding/json"
	"math/rand/v2"
	"net/netip"
	"strings"
	"testing"
	"time"
	"unicode/utf8"

	"github.com/tcptrace/tcptrace/events"
	"github.com/tcptrace/tcptrace/internal/schemacheck"
)

func TestStateNames(t *testing.T) {
	for s := events.StateEstablished; s <= events.StateBoundInactive; s++ {
		name := s.String()
		if strings.HasPrefix(name, "UNKNOWN") {
			t.Errorf("state %d has no name", s)
		}
		if back, ok := events.ParseState(name); !ok || back != s {
			t.Errorf("ParseState(%q) = %d, %v; want %d", name, back, ok, s)
		}
	}
	if got := events.State(200).String(); got != "UNKNOWN_200" {
		t.Errorf("State(200) = %q", got)
	}
	if events.StateCloseWait != 8 || events.StateClose != 7 || events.StateLastAck != 9 {
		t.Error("state numbers differ from include/net/tcp_states.h")
	}
}

func comm(s string) (c events.Comm) {
	copy(c[:], s)
	return c
}

// One event of each kind, as the tracer and tracker produce them.
func samples() []events.Event {
	base := events.Event{
		Time: time.Date(2026, 11, 24, 15, 4, 5, 6, time.UTC), Sock: 0xabc, Family: events.FamilyIPv4,
		LocalAddr: netip.MustParseAddr("10.1.2.3"), LocalPort: 5984,
		RemoteAddr: netip.MustParseAddr("10.1.2.4"), RemotePort: 51000, NetNS: 4026531840,
	}
	transition := base
	transition.Kind, transition.OldState, transition.NewState = events.KindTransition, events.StateEstablished, events.StateCloseWait
	transition.PrevStateNS, transition.HasPrevState = 1234, true
	transition.Task = events.Task{PID: 7, Comm: comm("beam.smp")}
	cw := base
	cw.Kind = events.KindCloseWait
	stuck := base
	stuck.Kind, stuck.AgeNS, stuck.AgeKnown, stuck.ThresholdNS = events.KindStuck, 31e9, true, 30e9
	stuck.Inode, stuck.OwnerSource = 991, events.OwnerProc
	stuck.CgroupID, stuck.ContainerID, stuck.PodUID = 7788, strings.Repeat("ab", 32), "1a2b3c4d-5e6f-7a8b-9c0d-1e2f3a4b5c6d"
	stuck.Owners = []events.Owner{
		{Process: &events.Process{PID: 7, Comm: "beam.smp", Exe: "/opt/couchdb/bin/beam.smp", Cmdline: "beam.smp -- -root /opt/couchdb \"quoted\"\n", UID: 5984}, FD: 31},
		{Process: &events.Process{PID: 8, Comm: "child", Exe: "", Cmdline: "", UID: 0}, FD: 3},
	}
	stuck.Dir = events.DirInbound
	stuck.K8s = &events.K8s{Node: "node-a", Namespace: "db", Pod: "couchdb-0", Container: "couchdb", WorkloadKind: "StatefulSet", WorkloadName: "couchdb"}
	noFile := base
	noFile.Kind, noFile.OwnerSource = events.KindCloseWait, events.OwnerNoFile
	ac := base
	ac.Kind, ac.AgeNS, ac.AgeKnown, ac.WasStuck, ac.NewState = events.KindAppClose, 31e9, true, true, events.StateLastAck
	ac.Closer, ac.HasCloser = events.Task{PID: 7, Comm: comm("beam.smp")}, true
	ac.Owners, ac.OwnerSource = stuck.Owners[:1], events.OwnerLastSeen
	acUnknown := ac
	acUnknown.AgeKnown, acUnknown.HasCloser = false, false
	abort := base
	abort.Kind, abort.AgeNS, abort.AgeKnown, abort.NewState = events.KindAbort, 5e9, true, events.StateClose
	abort.Cause = events.CauseReset
	// Found at start-up, then reset: the lower bound, as stuck gives it.
	abortUnknown := abort
	abortUnknown.AgeKnown, abortUnknown.FinBootNS = false, 1
	stuckEOF := stuck
	stuckEOF.DiagKnown, stuckEOF.ReadEOF, stuckEOF.SinceSendNS, stuckEOF.SinceRecvNS = true, true, 31e9, 32e9
	// A local client, holding its end in FIN_WAIT2.
	stuckEOF.Peer = &events.PeerSocket{Local: netip.AddrPortFrom(stuck.RemoteAddr, stuck.RemotePort), State: events.StateFinWait2, Inode: 99,
		Owners: stuck.Owners[:1]}
	stuckUnread := stuck
	stuckUnread.DiagKnown, stuckUnread.UnreadBytes, stuckUnread.SinceSendNS, stuckUnread.SinceRecvNS = true, 100, 0, 31e9
	exited := ac
	exited.ClosedByExit = true
	cw.Dir = events.DirOutbound
	cw.K8s = &events.K8s{Node: "node-a", NotFound: true}
	v6 := cw
	v6.Family, v6.LocalAddr, v6.RemoteAddr = events.FamilyIPv6, netip.MustParseAddr("2001:db8::1"), netip.MustParseAddr("::1")
	lost := events.Event{Kind: events.KindLost, Time: base.Time}
	lost.Lost[events.LostRingbufFull], lost.Lost[events.LostRecursion] = 3, 1
	destroyed := stuck
	destroyed.Kind, destroyed.Method = events.KindDestroyed, "kfunc"
	kept := stuck
	kept.Kind, kept.AgeKnown, kept.Reason = events.KindNotDestroyed, false, "left_close_wait"
	// Waiting in an accept queue: the listener that does not accept.
	queued := stuck
	queued.Inode, queued.Owners, queued.OwnerSource = 0, nil, events.OwnerNoFile
	queued.Listener = &events.Listener{Local: netip.MustParseAddrPort("0.0.0.0:5984"), Inode: 77, Queue: 129, Backlog: 128,
		Drops: 3, Owners: stuck.Owners[:1]}
	drops := events.Event{Kind: events.KindListenDrops, Time: base.Time, NetNS: base.NetNS, CgroupID: base.CgroupID,
		ContainerID: base.ContainerID, PodUID: base.PodUID, K8s: base.K8s, Dropped: 36, DropIntervalNS: 5e9,
		Listener: &events.Listener{Local: netip.MustParseAddrPort("[::]:5984"), Inode: 78, Queue: 2, Backlog: 1, Drops: 36, Owners: stuck.Owners[:1]}}
	acceptFailed := base
	acceptFailed.Kind, acceptFailed.Reason, acceptFailed.Task = events.KindAcceptFailed, "emfile", ac.Closer
	acceptFailed.RemoteAddr, acceptFailed.RemotePort = netip.IPv4Unspecified(), 0
	return []events.Event{transition, cw, stuck, ac, acUnknown, abort, abortUnknown, v6, noFile, lost, destroyed, kept, stuckEOF, stuckUnread, exited, queued, drops, acceptFailed}
}

func TestJSONMatchesSchema(t *testing.T) {
	for _, ev := range samples() {
		line := string(events.AppendJSON(nil, &ev))
		if err := schemacheck.Line(t, line); err != nil {
			t.Errorf("%s fails the schema: %v\n%s", ev.Kind, err, line)
		}
		if !json.Valid([]byte(line)) {
			t.Errorf("invalid JSON: %s", line)
		}
	}
}

// The schema is not vacuous: lines that break the contract fail it.
func TestSchemaRejects(t *testing.T) {
	for _, line := range []string{
		`{"time":"2026-11-24T15:04:05.000000006Z","event":"close_wait"}`,
		`{"time":"yesterday","event":"lost","counts":{"ringbuf_full":1},"total":1}`,
		`{"time":"2026-11-24T15:04:05.000000006Z","event":"lost","counts":{"ringbuf_full":1},"total":1,"extra":1}`,
		`{"time":"2026-11-24T15:04:05.000000006Z","event":"app_close","sock":"abc","family":"ipv4","local_addr":"10.1.2.3","local_port":1,"remote_addr":"10.1.2.4","remote_port":2,"netns":1,"age_known":true,"was_stuck":false,"new_state":"LAST_ACK"}`,
		`{"time":"2026-11-24T15:04:05.000000006Z","event":"close_wait","sock":"abc","family":"ipv4","local_addr":"::1","local_port":1,"remote_addr":"10.1.2.4","remote_port":2,"netns":1,"cgroup_id":1,"socket_inode":5,"owner_source":"unresolved","owner":[],"age_known":true}`,
		// owner_source proc with nobody, and unresolved with somebody
		`{"time":"2026-11-24T15:04:05.000000006Z","event":"close_wait","sock":"abc","family":"ipv4","local_addr":"10.1.2.3","local_port":1,"remote_addr":"10.1.2.4","remote_port":2,"netns":1,"cgroup_id":1,"socket_inode":5,"owner_source":"proc","owner":[],"age_known":true}`,
		`{"time":"2026-11-24T15:04:05.000000006Z","event":"close_wait","sock":"abc","family":"ipv4","local_addr":"10.1.2.3","local_port":1,"remote_addr":"10.1.2.4","remote_port":2,"netns":1,"cgroup_id":1,"socket_inode":5,"owner_source":"unresolved","owner":[{"pid":1,"comm":"x","exe":"","cmdline":"","uid":0,"fd":3}],"age_known":true}`,
		// an abort without its cause
		`{"time":"2026-11-24T15:04:05.000000006Z","event":"abort","sock":"abc","family":"ipv4","local_addr":"10.1.2.3","local_port":1,"remote_addr":"10.1.2.4","remote_port":2,"netns":1,"cgroup_id":1,"socket_inode":5,"owner_source":"unresolved","owner":[],"age_known":false,"was_stuck":false,"new_state":"CLOSE"}`,
		// a closer without closed_by_exit
		`{"time":"2026-11-24T15:04:05.000000006Z","event":"app_close","sock":"abc","family":"ipv4","local_addr":"10.1.2.3","local_port":1,"remote_addr":"10.1.2.4","remote_port":2,"netns":1,"cgroup_id":1,"socket_inode":5,"owner_source":"unresolved","owner":[],"age_known":false,"was_stuck":false,"closer":{"pid":1,"comm":"x"},"new_state":"LAST_ACK"}`,
		// read to end of file with bytes unread; a diagnosis in part
		`{"time":"2026-11-24T15:04:05.000000006Z","event":"stuck","sock":"abc","family":"ipv4","local_addr":"10.1.2.3","local_port":1,"remote_addr":"10.1.2.4","remote_port":2,"netns":1,"cgroup_id":1,"socket_inode":5,"owner_source":"unresolved","owner":[],"age_ns":1,"age_known":true,"threshold_ns":1,"unread_bytes":5,"read_eof":true,"since_send_ns":1,"since_recv_ns":1}`,
		`{"time":"2026-11-24T15:04:05.000000006Z","event":"stuck","sock":"abc","family":"ipv4","local_addr":"10.1.2.3","local_port":1,"remote_addr":"10.1.2.4","remote_port":2,"netns":1,"cgroup_id":1,"socket_inode":5,"owner_source":"unresolved","owner":[],"age_ns":1,"age_known":true,"threshold_ns":1,"read_eof":false}`,
		// listen_drops without its listener, and with nothing dropped
		`{"time":"2026-11-24T15:04:05.000000006Z","event":"listen_drops","netns":1,"cgroup_id":1,"dropped":3,"interval_ns":5}`,
		`{"time":"2026-11-24T15:04:05.000000006Z","event":"listen_drops","netns":1,"cgroup_id":1,"dropped":0,"interval_ns":5,"listener":{"local_addr":"::","local_port":1,"socket_inode":2,"queue":0,"backlog":1,"drops":0,"owner":[]}}`,
		// accept_failed without its process, or with another reason
		`{"time":"2026-11-24T15:04:05.000000006Z","event":"accept_failed","sock":"abc","family":"ipv4","local_addr":"10.1.2.3","local_port":1,"remote_addr":"0.0.0.0","remote_port":0,"netns":1,"cgroup_id":1,"socket_inode":5,"owner_source":"unresolved","owner":[],"reason":"emfile"}`,
		`{"time":"2026-11-24T15:04:05.000000006Z","event":"accept_failed","sock":"abc","family":"ipv4","local_addr":"10.1.2.3","local_port":1,"remote_addr":"0.0.0.0","remote_port":0,"netns":1,"cgroup_id":1,"socket_inode":5,"owner_source":"unresolved","owner":[],"task":{"pid":1,"comm":"x"},"reason":"eagain"}`,
		// a container id that is not 64 hex digits
		`{"time":"2026-11-24T15:04:05.000000006Z","event":"close_wait","sock":"abc","family":"ipv4","local_addr":"10.1.2.3","local_port":1,"remote_addr":"10.1.2.4","remote_port":2,"netns":1,"cgroup_id":1,"container_id":"abc","socket_inode":5,"owner_source":"unresolved","owner":[],"age_known":true}`,
	} {
		if schemacheck.Line(t, line) == nil {
			t.Errorf("schema accepts %s", line)
		}
	}
}

func TestAppendStringHostile(t *testing.T) {
	for _, in := range []string{
		`quote" backslash\ slash/`,
		"new\nline\r\ttab",
		"\x1b[31mred\x1b[0m\x07bell\x00nul\x7f",
		"bad utf8 \xff\xfe \xc3",
		"line sep \u2028 para \u2029",
		"ok ünïcödé ✓",
	} {
		out := events.AppendString(nil, []byte(in))
		var back string
		if err := json.Unmarshal(out, &back); err != nil {
			t.Errorf("AppendString(%q) = %s: not JSON: %v", in, out, err)
			continue
		}
		if !utf8.ValidString(string(out)) {
			t.Errorf("AppendString(%q) is not valid UTF-8", in)
		}
		for _, c := range out {
			if c < 0x20 {
				t.Errorf("AppendString(%q) = %q holds a raw control byte", in, out)
				break
			}
		}
		if utf8.ValidString(in) && back != in {
			t.Errorf("round trip of %q gave %q", in, back)
		}
	}
}

// The diagnosis fields appear when known, and only on their events.
func TestDiagnosisFields(t *testing.T) {
	evs := samples()
	has := func(ev events.Event, key string) bool {
		var m map[string]any
		if err := json.Unmarshal(events.AppendJSON(nil, &ev), &m); err != nil {
			t.Fatal(err)
		}
		_, ok := m[key]
		return ok
	}
	stuck, stuckEOF, stuckUnread := evs[2], evs[12], evs[13]
	for _, k := range []string{"unread_bytes", "read_eof", "since_send_ns", "since_recv_ns"} {
		if has(stuck, k) {
			t.Errorf("stuck without a diagnosis has %s", k)
		}
		if !has(stuckEOF, k) || !has(stuckUnread, k) {
			t.Errorf("stuck with a diagnosis lacks %s", k)
		}
	}
	line := string(events.AppendJSON(nil, &stuckUnread))
	if !strings.Contains(line, `"unread_bytes":100,"read_eof":false,"since_send_ns":0,"since_recv_ns":31000000000`) {
		t.Errorf("stuck diagnosis: %s", line)
	}
	ac, acUnknown, exited, abort, abortUnknown := evs[3], evs[4], evs[14], evs[5], evs[6]
	if !strings.Contains(string(events.AppendJSON(nil, &exited)), `"closed_by_exit":true`) ||
		!strings.Contains(string(events.AppendJSON(nil, &ac)), `"closed_by_exit":false`) || has(acUnknown, "closed_by_exit") {
		t.Error("closed_by_exit wrong: want true, false, and absent without a closer")
	}
	if !strings.Contains(string(events.AppendJSON(nil, &abort)), `"cause":"reset"`) {
		t.Errorf("abort cause: %s", events.AppendJSON(nil, &abort))
	}
	queued := evs[15]
	if line := string(events.AppendJSON(nil, &queued)); !strings.Contains(line, `"owner_source":"no_file","owner":[],"listener":{"local_addr":"0.0.0.0","local_port":5984,"socket_inode":77,"queue":129,"backlog":128,"drops":3,"owner":[{"pid":7,`) {
		t.Errorf("queued stuck: %s", line)
	}
	// An abort of unknown age keeps its lower bound, as stuck does.
	if !strings.Contains(string(events.AppendJSON(nil, &abortUnknown)), `"age_ns":5000000000,"age_known":false`) {
		t.Errorf("abort of unknown age: %s", events.AppendJSON(nil, &abortUnknown))
	}
	noAge := abortUnknown
	noAge.FinBootNS, noAge.AgeNS = 0, 0
	if has(noAge, "age_ns") {
		t.Errorf("abort never seen in CLOSE-WAIT has an age: %s", events.AppendJSON(nil, &noAge))
	}
	for c, want := range map[events.AbortCause]string{events.CauseOther: "other", events.CauseReset: "reset",
		events.CauseTimeout: "timeout", events.CauseDestroyed: "destroyed", 200: "other"} {
		if c.String() != want {
			t.Errorf("AbortCause(%d) = %q, want %q", c, c, want)
		}
	}
}

func TestAppendJSONDoesNotAllocate(t *testing.T) {
	evs := samples()
	buf := make([]byte, 0, 1024)
	allocs := testing.AllocsPerRun(100, func() {
		for i := range evs {
			buf = events.AppendJSON(buf[:0], &evs[i])
		}
	})
	if allocs != 0 {
		t.Errorf("AppendJSON allocates %.1f times per run of %d events", allocs, len(evs))
	}
}

func FuzzAppendString(f *testing.F) {
	f.Add([]byte("plain"))
	f.Add([]byte("\x1b[2J\"\\\xff"))
	f.Fuzz(func(t *testing.T, in []byte) {
		out := events.AppendString(nil, in)
		var back string
		if err := json.Unmarshal(out, &back); err != nil {
			t.Fatalf("AppendString(%q) = %s: %v", in, out, err)
		}
		if utf8.Valid(in) && back != string(in) {
			t.Fatalf("round trip of %q gave %q", in, back)
		}
	})
}

// AppendTime writes what time.Time.AppendFormat writes, on the fast path
// and off it, across leap days, century rules and zones.
func TestAppendTime(t *testing.T) {
	times := []time.Time{
		time.Unix(0, 0), time.Unix(0, 1), time.Unix(86399, 999999999),
		time.Date(2000, 2, 29, 23, 59, 59, 5, time.UTC), time.Date(2000, 3, 1, 0, 0, 0, 0, time.UTC),
		time.Date(2100, 2, 28, 12, 0, 0, 0, time.UTC), time.Date(2100, 3, 1, 12, 0, 0, 0, time.UTC),
		time.Date(2026, 12, 31, 23, 59, 59, 999999999, time.UTC), time.Date(2027, 1, 1, 0, 0, 0, 0, time.UTC),
		time.Date(9999, 12, 31, 23, 59, 59, 999999999, time.UTC), time.Date(10000, 1, 1, 0, 0, 0, 0, time.UTC),
		time.Date(1969, 12, 31, 23, 59, 59, 0, time.UTC), {},
		time.Date(2026, 11, 24, 3, 4, 5, 6, time.FixedZone("UTC+13", 13*3600)),
	}
	r := rand.New(rand.NewPCG(1, 2))
	for range 100000 {
		times = append(times, time.Unix(r.Int64N(maxTestUnix), r.Int64N(1e9)))
	}
	for _, tm := range times {
		want := tm.UTC().Format(events.TimeLayout)
		if got := string(events.AppendTime([]byte("x"), tm)); got != "x"+want {
			t.Fatalf("AppendTime(%v) = %q, want %q", tm, got[1:], want)
		}
	}
}

// maxTestUnix is 9999-12-31T23:59:59Z.
const maxTestUnix = 253402300799

// A socket shared after fork by hundreds of processes with long command
// lines still makes a line a container runtime does not split (16 KiB), and
// says how many holders it left out.
func TestLineBoundedWithManyOwners(t *testing.T) {
	ev := samples()[2] // stuck
	long := strings.Repeat("\x01é/", 2000)
	for i := range 500 {
		ev.Owners = append(ev.Owners, events.Owner{Process: &events.Process{PID: 100 + i, Comm: "worker", Exe: long, Cmdline: strings.Repeat("\x01", 256)}, FD: 3 + i})
	}
	line := events.AppendJSON(nil, &ev)
	if len(line)+1 > events.MaxLine {
		t.Fatalf("line of %d bytes, want under %d", len(line)+1, events.MaxLine)
	}
	var got struct {
		Owner         []json.RawMessage `json:"owner"`
		OwnersOmitted int               `json:"owners_omitted"`
	}
	if err := json.Unmarshal(line, &got); err != nil {
		t.Fatalf("%v: %s", err, line)
	}
	if len(got.Owner) == 0 || len(got.Owner)+got.OwnersOmitted != len(ev.Owners) {
		t.Errorf("%d owners listed and %d omitted, want %d in all, some listed", len(got.Owner), got.OwnersOmitted, len(ev.Owners))
	}
	if err := schemacheck.Line(t, string(line)); err != nil {
		t.Error(err)
	}
	// Few short owners are all listed, and nothing is said to be omitted.
	ev.Owners = ev.Owners[:3]
	line = events.AppendJSON(nil, &ev)
	if strings.Contains(string(line), "owners_omitted") {
		t.Errorf("owners_omitted with every owner listed: %s", line)
	}
}
