package output

import (
	"bytes"
	"net/netip"
	"strings"
	"testing"
	"time"

	"github.com/tcptrace/tcptrace/events"
)

func TestAppendPrintable(t *testing.T) {
	for in, want := range map[string]string{
		"nginx":              "nginx",
		"\x1b[31mred":        `\x1b[31mred`,
		"a\nb\rc\td":         `a\x0ab\x0dc\x09d`,
		"bad\xffutf8":        `bad\xffutf8`,
		"c1\u009bcsi":        `c1\u009bcsi`,
		"del\x7f":            `del\x7f`,
		`back\slash`:         `back\\slash`,
		"ünïcödé":            "ünïcödé",
		"bidi\u202eoverride": `bidi\u202eoverride`,
	} {
		if got := string(AppendPrintable(nil, []byte(in))); got != want {
			t.Errorf("AppendPrintable(%q) = %q, want %q", in, got, want)
		}
	}
}

func TestTableHasNoControlCharacters(t *testing.T) {
	var buf bytes.Buffer
	w := New(&buf, FormatTable, 0)
	ev := events.Event{
		Kind: events.KindTransition, Time: time.Now(), Sock: 1, Family: events.FamilyIPv6,
		LocalAddr: netip.MustParseAddr("::1"), LocalPort: 80, RemoteAddr: netip.MustParseAddr("::1"), RemotePort: 9,
		OldState: events.StateEstablished, NewState: events.StateCloseWait,
	}
	copy(ev.Task.Comm[:], "\x1b]0;pwn\x07\n\xff")
	if err := w.Write(&ev); err != nil {
		t.Fatal(err)
	}
	if err := w.Flush(); err != nil {
		t.Fatal(err)
	}
	out := buf.String()
	for _, r := range out {
		if (r < 0x20 && r != '\n') || r == 0x7f || (r >= 0x80 && r < 0xa0) {
			t.Fatalf("table output holds control character %U: %q", r, out)
		}
	}
	if strings.Count(out, "\n") != 2 || !strings.Contains(out, "[::1]:80") {
		t.Errorf("table output = %q, want header and one row with [::1]:80", out)
	}
}

func TestParseFormat(t *testing.T) {
	for _, ok := range []string{"auto", "json", "table"} {
		if _, err := ParseFormat(ok); err != nil {
			t.Errorf("ParseFormat(%q): %v", ok, err)
		}
	}
	if _, err := ParseFormat("xml"); err == nil {
		t.Error("ParseFormat(xml) succeeded")
	}
}
