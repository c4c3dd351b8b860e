package tracer

import (
	"bytes"
	"encoding/binary"
	"errors"
	"net/netip"
	"reflect"
	"strings"
	"testing"
	"unsafe"

	"golang.org/x/sys/unix"

	"github.com/tcptrace/tcptrace/bootclock"
	"github.com/tcptrace/tcptrace/events"
	"github.com/tcptrace/tcptrace/internal/schemacheck"
)

// The hand-written offsets must match the layout bpf2go generated from
// bpf/tcptrace.h.
func TestDecodeOffsetsMatchGeneratedLayout(t *testing.T) {
	var ev tcptraceEvent
	for name, want := range map[string]uintptr{
		"TsNs": offTS, "Skaddr": offSkaddr, "Cookie": offCookie, "AuxNs": offAux,
		"Netns": offNetns, "Pid": offPID, "Saddr": offSaddr, "Daddr": offDaddr,
		"Comm": offComm, "Family": offFamily, "Sport": offSport, "Dport": offDport,
		"Kind": offKind, "Oldstate": offOldState, "Newstate": offNewState, "Flags": offFlags,
		"Dir": offDir, "SkErr": offSkErr, "Ino": offIno, "CgroupId": offCgroupID,
	} {
		f, ok := reflect.TypeOf(ev).FieldByName(name)
		if !ok {
			t.Errorf("generated event has no field %s", name)
			continue
		}
		if f.Offset != want {
			t.Errorf("offset of %s = %d, decode.go uses %d", name, f.Offset, want)
		}
	}
	if size := unsafe.Sizeof(ev); size != eventSize {
		t.Errorf("sizeof(struct event) = %d, decode.go uses %d", size, eventSize)
	}
}

// record encodes ev as the kernel would.
func record(tb testing.TB, ev tcptraceEvent) []byte {
	tb.Helper()
	var b bytes.Buffer
	if err := binary.Write(&b, binary.LittleEndian, ev); err != nil {
		tb.Fatal(err)
	}
	return b.Bytes()
}

func comm(s string) (c [16]int8) {
	for i := range len(s) {
		c[i] = int8(s[i])
	}
	return c
}

func TestDecode(t *testing.T) {
	d := newDecoder(bootclock.New())
	v4 := tcptraceEvent{
		TsNs: 5_000_000_000, Skaddr: 0xffff888012345678, Cookie: 0x1a2b, AuxNs: 4_700_000_000,
		Netns: 4026531840, Pid: 4242, Comm: comm("couchdb"), Family: afInet, Sport: 5984, Dport: 40000,
		Kind: evCWLeave, Oldstate: 8, Newstate: 9, Flags: flagAuxValid | flagApp | flagCookie,
	}
	copy(v4.Saddr[:], []byte{10, 0, 0, 1})
	copy(v4.Daddr[:], []byte{10, 0, 0, 2})
	var ev events.Event
	if err := d.decode(record(t, v4), &ev); err != nil {
		t.Fatal(err)
	}
	want := events.Event{
		Kind: events.KindAppClose, Time: ev.Time, BootNS: 5_000_000_000, Sock: 0x1a2b,
		Family: events.FamilyIPv4, LocalAddr: netip.MustParseAddr("10.0.0.1"), LocalPort: 5984,
		RemoteAddr: netip.MustParseAddr("10.0.0.2"), RemotePort: 40000, NetNS: 4026531840,
		OldState: events.StateCloseWait, NewState: events.StateLastAck,
		AgeNS: 300_000_000, AgeKnown: true, FinBootNS: 4_700_000_000, Key: 0xffff888012345678,
		Closer: events.Task{PID: 4242, Comm: events.Comm{'c', 'o', 'u', 'c', 'h', 'd', 'b'}}, HasCloser: true,
	}
	if !reflect.DeepEqual(ev, want) {
		t.Errorf("decoded\n%+v\nwant\n%+v", ev, want)
	}

	// No cookie: a keyed hash of the address stands in, stable for it.
	noCookie := v4
	noCookie.Flags &^= flagCookie
	var a, b events.Event
	if err := d.decode(record(t, noCookie), &a); err != nil {
		t.Fatal(err)
	}
	if err := d.decode(record(t, noCookie), &b); err != nil {
		t.Fatal(err)
	}
	if a.Sock != b.Sock || a.Sock == noCookie.Skaddr || a.Sock == 0 {
		t.Errorf("sock without cookie = %x then %x for address %x: want stable, not the address", a.Sock, b.Sock, noCookie.Skaddr)
	}

	// Missed CLOSE_WAIT exit: the task is not the closer.
	indirect := v4
	indirect.Oldstate, indirect.Newstate, indirect.Flags = 9, 7, v4.Flags|flagIndirect
	if err := d.decode(record(t, indirect), &ev); err != nil {
		t.Fatal(err)
	}
	if ev.Kind != events.KindAppClose || ev.HasCloser {
		t.Errorf("indirect leave: kind %v has_closer %v, want app_close without closer", ev.Kind, ev.HasCloser)
	}

	// Without the app flag the socket left CLOSE_WAIT on its own.
	abort := v4
	abort.Newstate, abort.Flags = 7, flagAuxValid
	if err := d.decode(record(t, abort), &ev); err != nil {
		t.Fatal(err)
	}
	if ev.Kind != events.KindAbort || ev.HasCloser || !ev.AgeKnown || ev.Cause != events.CauseOther {
		t.Errorf("abort decoded as %v has_closer=%v age_known=%v cause=%v", ev.Kind, ev.HasCloser, ev.AgeKnown, ev.Cause)
	}
}

// An abort's cause comes from sk_err at the transition; the exit flag of an
// application close says the closing task was exiting.
func TestDecodeCauseAndExit(t *testing.T) {
	d := newDecoder(bootclock.New())
	leave := tcptraceEvent{TsNs: 9e9, AuxNs: 5e9, Family: afInet, Kind: evCWLeave, Oldstate: 8, Newstate: 7, Flags: flagAuxValid}
	for errno, want := range map[uint8]events.AbortCause{
		0: events.CauseOther, uint8(unix.EPIPE): events.CauseReset, uint8(unix.ECONNRESET): events.CauseReset,
		uint8(unix.ETIMEDOUT): events.CauseTimeout, uint8(unix.EHOSTUNREACH): events.CauseTimeout,
		uint8(unix.ENETUNREACH): events.CauseTimeout, uint8(unix.ECONNREFUSED): events.CauseTimeout,
		uint8(unix.ECONNABORTED): events.CauseDestroyed, uint8(unix.ENOMEM): events.CauseOther, 255: events.CauseOther,
	} {
		r := leave
		r.SkErr = errno
		var ev events.Event
		if err := d.decode(record(t, r), &ev); err != nil {
			t.Fatal(err)
		}
		if ev.Kind != events.KindAbort || ev.Cause != want {
			t.Errorf("abort with sk_err %d: %v cause %v, want abort cause %v", errno, ev.Kind, ev.Cause, want)
		}
	}

	exit := leave
	exit.Newstate, exit.Flags, exit.SkErr = 9, flagAuxValid|flagApp|flagExiting, uint8(unix.EPIPE)
	var ev events.Event
	if err := d.decode(record(t, exit), &ev); err != nil {
		t.Fatal(err)
	}
	if ev.Kind != events.KindAppClose || !ev.HasCloser || !ev.ClosedByExit || ev.Cause != events.CauseOther {
		t.Errorf("close by an exiting task: %v has_closer=%v closed_by_exit=%v cause=%v, want app_close by exit, no cause",
			ev.Kind, ev.HasCloser, ev.ClosedByExit, ev.Cause)
	}
	exit.Flags &^= flagExiting
	if err := d.decode(record(t, exit), &ev); err != nil {
		t.Fatal(err)
	}
	if ev.ClosedByExit {
		t.Error("close without the exit flag decoded as closed_by_exit")
	}
	// Without the closer (exit missed) there is nothing to say of it.
	exit.Oldstate, exit.Newstate, exit.Flags = 9, 7, flagAuxValid|flagApp|flagExiting|flagIndirect
	if err := d.decode(record(t, exit), &ev); err != nil {
		t.Fatal(err)
	}
	if ev.HasCloser || ev.ClosedByExit {
		t.Errorf("indirect close: has_closer=%v closed_by_exit=%v, want neither", ev.HasCloser, ev.ClosedByExit)
	}
}

// Snapshot records: age unknown, counted from first sight (now, or when an
// earlier listing found the socket); a leave of such a socket keeps its
// age unknown.
func TestDecodeSnapshot(t *testing.T) {
	d := newDecoder(bootclock.New())
	var ev events.Event
	fresh := tcptraceEvent{TsNs: 9e9, Family: afInet, Kind: evSnapshot, Oldstate: 8, Newstate: 8, Flags: flagTracked, Ino: 42, CgroupId: 7}
	if err := d.decode(record(t, fresh), &ev); err != nil {
		t.Fatal(err)
	}
	if ev.Kind != events.KindCloseWait || ev.AgeKnown || ev.FinBootNS != 9e9 || !ev.KernelTracked || ev.Inode != 42 || ev.CgroupID != 7 {
		t.Errorf("snapshot record decoded as %+v", ev)
	}
	known := fresh
	known.Flags, known.AuxNs = flagTracked|flagKnown|flagAuxValid|flagAgeUnknown, 5e9
	if err := d.decode(record(t, known), &ev); err != nil {
		t.Fatal(err)
	}
	if ev.AgeKnown || ev.FinBootNS != 5e9 {
		t.Errorf("known snapshot record: first sight %d age_known %v, want 5e9 and false", ev.FinBootNS, ev.AgeKnown)
	}
	leave := tcptraceEvent{TsNs: 9e9, AuxNs: 5e9, Family: afInet, Kind: evCWLeave, Oldstate: 8, Newstate: 9,
		Flags: flagAuxValid | flagApp | flagAgeUnknown}
	if err := d.decode(record(t, leave), &ev); err != nil {
		t.Fatal(err)
	}
	if ev.Kind != events.KindAppClose || ev.AgeKnown {
		t.Errorf("leave of a snapshot socket: kind %v age_known %v, want app_close with age unknown", ev.Kind, ev.AgeKnown)
	}
}

func TestDecodeIPv6(t *testing.T) {
	d := newDecoder(bootclock.New())
	mapped := tcptraceEvent{TsNs: 1, Family: afInet6, Kind: evTransition, Oldstate: 1, Newstate: 8}
	copy(mapped.Saddr[:], netip.MustParseAddr("::ffff:192.0.2.1").AsSlice())
	copy(mapped.Daddr[:], netip.MustParseAddr("::ffff:192.0.2.2").AsSlice())
	var ev events.Event
	if err := d.decode(record(t, mapped), &ev); err != nil {
		t.Fatal(err)
	}
	if ev.Family != events.FamilyIPv4 || ev.LocalAddr.String() != "192.0.2.1" || ev.RemoteAddr.String() != "192.0.2.2" {
		t.Errorf("v4-mapped: %v %v -> %v, want ipv4 192.0.2.1 -> 192.0.2.2", ev.Family, ev.LocalAddr, ev.RemoteAddr)
	}
	// The family never mixes: unspecified goes with the other address.
	for _, tc := range []struct{ local, remote, family, wantLocal, wantRemote string }{
		{"::", "::ffff:127.0.0.1", "ipv4", "0.0.0.0", "127.0.0.1"},
		{"::ffff:127.0.0.1", "::", "ipv4", "127.0.0.1", "0.0.0.0"},
		{"::", "::", "ipv6", "::", "::"},
		{"::1", "::ffff:127.0.0.1", "ipv6", "::1", "::ffff:127.0.0.1"},
		{"2001:db8::1", "::", "ipv6", "2001:db8::1", "::"},
	} {
		r := mapped
		copy(r.Saddr[:], netip.MustParseAddr(tc.local).AsSlice())
		copy(r.Daddr[:], netip.MustParseAddr(tc.remote).AsSlice())
		if err := d.decode(record(t, r), &ev); err != nil {
			t.Fatal(err)
		}
		if ev.Family.String() != tc.family || ev.LocalAddr.String() != tc.wantLocal || ev.RemoteAddr.String() != tc.wantRemote {
			t.Errorf("%s -> %s decoded as %v %v -> %v, want %s %s -> %s", tc.local, tc.remote,
				ev.Family, ev.LocalAddr, ev.RemoteAddr, tc.family, tc.wantLocal, tc.wantRemote)
		}
	}
	v6 := mapped
	copy(v6.Saddr[:], netip.MustParseAddr("2001:db8::1").AsSlice())
	copy(v6.Daddr[:], netip.MustParseAddr("2001:db8::2").AsSlice())
	if err := d.decode(record(t, v6), &ev); err != nil {
		t.Fatal(err)
	}
	if ev.Family != events.FamilyIPv6 || ev.LocalAddr.String() != "2001:db8::1" {
		t.Errorf("v6: %v %v, want ipv6 2001:db8::1", ev.Family, ev.LocalAddr)
	}
	if ev.HasPrevState || ev.Kind != events.KindTransition {
		t.Errorf("transition without aux flag: kind %v has_prev_state %v", ev.Kind, ev.HasPrevState)
	}
}

func TestDecodeRejectsMalformed(t *testing.T) {
	d := newDecoder(bootclock.New())
	good := record(t, tcptraceEvent{TsNs: 1, Family: afInet, Kind: evTransition})
	var ev events.Event
	for name, b := range map[string][]byte{
		"empty":  nil,
		"short":  good[:eventSize-1],
		"family": func() []byte { b := bytes.Clone(good); b[offFamily] = 99; return b }(),
		"kind":   func() []byte { b := bytes.Clone(good); b[offKind] = 99; return b }(),
	} {
		if err := d.decode(b, &ev); err == nil {
			t.Errorf("%s record decoded without error", name)
		}
	}
}

func FuzzDecode(f *testing.F) {
	for _, ev := range []tcptraceEvent{
		{TsNs: 1, Family: afInet, Kind: evTransition, Oldstate: 1, Newstate: 8},
		{TsNs: 9, AuxNs: 3, Family: afInet6, Kind: evCWLeave, Oldstate: 8, Newstate: 7, Flags: flagAuxValid | flagApp},
		{TsNs: 5, Family: afInet6, Kind: evCWEnter, Oldstate: 1, Newstate: 8, Flags: flagCookie | flagTracked},
	} {
		var b bytes.Buffer
		if err := binary.Write(&b, binary.LittleEndian, ev); err != nil {
			f.Fatal(err)
		}
		f.Add(b.Bytes())
	}
	d := newDecoder(bootclock.New())
	f.Fuzz(func(t *testing.T, b []byte) {
		var ev events.Event
		if d.decode(b, &ev) != nil {
			return
		}
		// Whatever decodes must encode to a line the schema accepts.
		out := events.AppendJSON(nil, &ev)
		if err := schemacheck.Line(t, string(out)); err != nil {
			t.Fatalf("record %x encodes to a line the schema rejects: %v\n%s", b, err, out)
		}
	})
}

func TestParseRelease(t *testing.T) {
	for release, want := range map[string][2]int{
		"5.10.0-30-amd64":   {5, 10},
		"6.18.44-fc-v657":   {6, 18},
		"6.1.0-56-cloud":    {6, 1},
		"7.2.0-rc1+":        {7, 2},
		"4.19.0":            {4, 19},
		"5.8":               {5, 8},
		"6.12rc3-something": {6, 12},
	} {
		major, minor, ok := parseRelease(release)
		if !ok || major != want[0] || minor != want[1] {
			t.Errorf("parseRelease(%q) = %d, %d, %v; want %v", release, major, minor, ok, want)
		}
	}
	for _, bad := range []string{"", "linux", "x.y", "6"} {
		if _, _, ok := parseRelease(bad); ok {
			t.Errorf("parseRelease(%q) ok", bad)
		}
	}
	for release, supported := range map[string]bool{
		"4.19.0-27-amd64": false, "5.4.0": false, "5.7.19": false, "5.8.0": true, "5.10.0-30-amd64": true, "6.18.44": true, "garbage": true,
	} {
		err := checkKernelRelease(release)
		if (err == nil) != supported {
			t.Errorf("checkKernelRelease(%q) = %v, want supported=%v", release, err, supported)
		}
	}
}

// A kernel without BTF is refused up front, saying what is missing and the
// minimum kernel.
func TestKernelWithoutBTF(t *testing.T) {
	saved := kernelBTFPath
	defer func() { kernelBTFPath = saved }()
	kernelBTFPath = t.TempDir() + "/no-such-btf"
	err := checkKernel()
	if !errors.Is(err, ErrUnsupportedKernel) || !strings.Contains(err.Error(), "CONFIG_DEBUG_INFO_BTF") ||
		!strings.Contains(err.Error(), "5.8") {
		t.Errorf("checkKernel without BTF = %v; want an unsupported-kernel error naming CONFIG_DEBUG_INFO_BTF and 5.8", err)
	}
	if err := checkKernelRelease("4.19.0-27-amd64"); err == nil || !strings.Contains(err.Error(), "5.8") {
		t.Errorf("old kernel: %v; want the minimum named", err)
	}
}

// decodeEntry reads struct cw_entry as the generated type lays it out.
func TestDecodeEntryMatchesGeneratedLayout(t *testing.T) {
	if n := binary.Size(tcptraceCwEntry{}); n != cwEntrySize {
		t.Fatalf("struct cw_entry is %d bytes, cwEntrySize %d", n, cwEntrySize)
	}
	if n := binary.Size(tcptraceScanRec{}); n != scanRecSize {
		t.Fatalf("struct scan_rec is %d bytes, scanRecSize %d", n, scanRecSize)
	}
	want := tcptraceCwEntry{FinNs: 1, Cookie: 2, Ino: 3, CgroupId: 4, Netns: 5, Family: 10, Sport: 6, Dport: 7, Dir: 2, Flags: 3}
	for i := range want.Saddr {
		want.Saddr[i], want.Daddr[i] = byte(i+1), byte(100+i)
	}
	b, err := binary.Append(nil, binary.LittleEndian, want)
	if err != nil {
		t.Fatal(err)
	}
	var got tcptraceCwEntry
	decodeEntry(b, &got)
	if got != want {
		t.Errorf("decodeEntry = %+v, want %+v", got, want)
	}
}
