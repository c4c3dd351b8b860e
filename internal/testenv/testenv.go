// Package testenv gates tests that need root and a BTF kernel: they skip
// with the reason elsewhere, and fail instead when RequireEnv is "1", so CI
// cannot pass by skipping the real-kernel tests.
package testenv

import (
	"os"
	"os/exec"
	"testing"

	"github.com/tcptrace/tcptrace/tracer"
)

// RequireEnv turns a privileged test's skip into a failure.
const RequireEnv = "TCPTRACE_REQUIRE_PRIVILEGED"

// RequirePrivileged skips (or fails, see RequireEnv) unless the process may
// load tracing programs on a kernel with BTF.
func RequirePrivileged(tb testing.TB) {
	tb.Helper()
	reason := ""
	if err := tracer.CheckPrivileges(); err != nil {
		reason = err.Error()
	} else if _, err := os.Stat("/sys/kernel/btf/vmlinux"); err != nil {
		reason = "no kernel BTF: " + err.Error()
	}
	if reason == "" {
		return
	}
	if os.Getenv(RequireEnv) == "1" {
		tb.Fatalf("privileged test cannot run (%s=1): %s", RequireEnv, reason)
	}
	tb.Skipf("needs root and kernel BTF (%s); set %s=1 to fail instead of skipping", reason, RequireEnv)
}

// ToolsEnv turns a test's skip for want of a program into a failure.
const ToolsEnv = "TCPTRACE_REQUIRE_TOOLS"

// RequireTool returns the path of program name, skipping the test (or
// failing it, see ToolsEnv) when it is not installed; what says what it
// comes from, e.g. "iproute2".
func RequireTool(tb testing.TB, name, what string) string {
	tb.Helper()
	p, err := exec.LookPath(name)
	if err == nil {
		return p
	}
	if os.Getenv(ToolsEnv) == "1" {
		tb.Fatalf("%s (%s) is not installed (%s=1)", name, what, ToolsEnv)
	}
	tb.Skipf("needs %s (%s); set %s=1 to fail instead of skipping", name, what, ToolsEnv)
	return ""
}
