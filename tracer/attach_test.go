package tracer_test

import (
	"bytes"
	"log/slog"
	"strings"
	"testing"

	"github.com/cilium/ebpf"
	"github.com/cilium/ebpf/asm"

	"github.com/tcptrace/tcptrace/internal/testenv"
	"github.com/tcptrace/tcptrace/tracer"
)

// A refused scan iterator is one plain INFO line without the verifier's
// dump, which goes to DEBUG. The refusal is a real one: a program the
// verifier rejects (R0 never set).
func TestScanRefusedSaysItPlainly(t *testing.T) {
	testenv.RequirePrivileged(t)
	_, err := ebpf.NewProgram(&ebpf.ProgramSpec{
		Type: ebpf.SocketFilter, License: "GPL",
		Instructions: asm.Instructions{asm.Return()},
	})
	if err == nil {
		t.Fatal("the verifier took a program that never sets R0")
	}
	var buf bytes.Buffer
	tracer.LogScanRefused(slog.New(slog.NewTextHandler(&buf, &slog.HandlerOptions{Level: slog.LevelDebug})), err)
	lines := strings.Split(strings.TrimSpace(buf.String()), "\n")
	if len(lines) != 2 {
		t.Fatalf("want an INFO and a DEBUG line, got:\n%s", buf.String())
	}
	info, debug := lines[0], lines[1]
	if !strings.Contains(info, "level=INFO") || !strings.Contains(info, "no action needed") ||
		!strings.Contains(info, "reason=\"permission denied\"") {
		t.Errorf("INFO line: %s", info)
	}
	for _, dump := range []string{"R0", "insn", "processed"} {
		if strings.Contains(info, dump) {
			t.Errorf("INFO line carries the verifier's log (%q): %s", dump, info)
		}
	}
	if !strings.Contains(debug, "level=DEBUG") || !strings.Contains(debug, "R0") {
		t.Errorf("DEBUG line lacks the verifier's reason: %s", debug)
	}
}
