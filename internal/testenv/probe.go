package testenv

import (
	"errors"
	"testing"

	"github.com/cilium/ebpf"
	"github.com/cilium/ebpf/asm"
	"github.com/cilium/ebpf/btf"
	"github.com/cilium/ebpf/link"
)

// What the running kernel offers, probed with programs of the tests' own
// rather than tcptrace's, so that a test compares tcptrace's choice with
// the kernel's answer instead of with a kernel version: a kernel may
// refuse a program type its version supports (an LSM policy, lockdown),
// or a distribution may backport one.

// CanLoadIter reports whether an iterator program on target ("tcp",
// "bpf_map_elem", ...) loads, and the kernel's refusal otherwise.
func CanLoadIter(tb testing.TB, target string) (bool, error) {
	tb.Helper()
	return canLoad(&ebpf.ProgramSpec{
		Type: ebpf.Tracing, AttachType: ebpf.AttachTraceIter, AttachTo: target,
		Instructions: asm.Instructions{asm.Mov.Imm(asm.R0, 0), asm.Return()}, License: "GPL",
	})
}

// CanAttachRawTP reports whether a tp_btf program loads on tracepoint
// name (tcp_destroy_sock, say).
func CanAttachRawTP(tb testing.TB, name string) (bool, error) {
	tb.Helper()
	return canLoad(&ebpf.ProgramSpec{
		Type: ebpf.Tracing, AttachType: ebpf.AttachTraceRawTp, AttachTo: name,
		Instructions: asm.Instructions{asm.Mov.Imm(asm.R0, 0), asm.Return()}, License: "GPL",
	})
}

// CanAttachTracepoint reports whether a classic tracepoint program
// attaches to group:name (syscalls:sys_exit_accept4, say); tracefs must be
// mounted (tcptrace mounts it when it is not).
func CanAttachTracepoint(tb testing.TB, group, name string) (bool, error) {
	tb.Helper()
	prog, err := ebpf.NewProgram(&ebpf.ProgramSpec{
		Type: ebpf.TracePoint, Instructions: asm.Instructions{asm.Mov.Imm(asm.R0, 0), asm.Return()}, License: "GPL",
	})
	if err != nil {
		return false, err
	}
	defer prog.Close()
	l, err := link.Tracepoint(group, name, prog, nil)
	if err != nil {
		return false, err
	}
	l.Close()
	return true, nil
}

// CanReadSocketCookie reports whether a tp_btf program on
// inet_sock_set_state may call bpf_get_socket_cookie on its socket
// argument (Linux 5.12 upstream).
func CanReadSocketCookie(tb testing.TB) (bool, error) {
	tb.Helper()
	return canLoad(&ebpf.ProgramSpec{
		Type: ebpf.Tracing, AttachType: ebpf.AttachTraceRawTp, AttachTo: "inet_sock_set_state",
		Instructions: asm.Instructions{
			asm.LoadMem(asm.R1, asm.R1, 0, asm.DWord), // the struct sock *
			asm.FnGetSocketCookie.Call(),
			asm.Mov.Imm(asm.R0, 0),
			asm.Return(),
		},
		License: "GPL",
	})
}

// HasKernelFunc reports whether the kernel's BTF describes function name
// (a kfunc such as bpf_sock_destroy is only callable where it does).
func HasKernelFunc(tb testing.TB, name string) bool {
	tb.Helper()
	spec, err := btf.LoadKernelSpec()
	if err != nil {
		tb.Fatalf("kernel BTF: %v", err)
	}
	var fn *btf.Func
	if err := spec.TypeByName(name, &fn); err != nil {
		if !errors.Is(err, btf.ErrNotFound) {
			tb.Fatalf("kernel BTF: %s: %v", name, err)
		}
		return false
	}
	return true
}

func canLoad(spec *ebpf.ProgramSpec) (bool, error) {
	prog, err := ebpf.NewProgram(spec)
	if err != nil {
		return false, err
	}
	prog.Close()
	return true, nil
}
