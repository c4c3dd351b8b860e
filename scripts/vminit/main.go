// Command init is PID 1 of the vmtest initramfs (see vmtest.sh).
//
// It mounts the pseudo file systems a BPF test needs, brings up the loopback
// interface, runs the programs named by /vmtest/args, one word per line
// (or by its arguments: the kernel hands everything after "--" on its
// command line to init as argv[1:], at most 32 of them); a lone ";"
// separates several programs with the console as stdout and stderr, prints
//
//	VMTEST_EXIT_CODE=<n>
//
// and powers the machine off. The programs get TCPTRACE_TEST_VM=1 in
// their environment: tests that change the whole machine run only there. <n> is the exit status of the first program
// that failed (0 if none did), 128+signal if a signal killed it, or 125 if
// the setup failed or a program could not be started.
// Whatever happens, init ends in a power-off, never in a panic loop: if the
// power-off itself fails it exits, the kernel panics, and panic=-1 together
// with qemu's -no-reboot ends the VM.
//
// Build it static: CGO_ENABLED=0 go build -o init ./init
package main

import (
	"errors"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"syscall"

	"golang.org/x/sys/unix"

	"github.com/tcptrace/tcptrace/internal/loopback"
)

const (
	marker    = "VMTEST_EXIT_CODE="
	setupFail = 125
)

// mounts are done in order; each mount point is created first.
var mounts = []struct {
	source, target, fstype string
	flags                  uintptr
	data                   string
}{
	{"devtmpfs", "/dev", "devtmpfs", unix.MS_NOSUID, "mode=0755"},
	// Pseudo-terminals, for the tests of the live table.
	{"devpts", "/dev/pts", "devpts", unix.MS_NOSUID | unix.MS_NOEXEC, "mode=0620,ptmxmode=0666"},
	{"proc", "/proc", "proc", unix.MS_NOSUID | unix.MS_NODEV | unix.MS_NOEXEC, ""},
	{"sysfs", "/sys", "sysfs", unix.MS_NOSUID | unix.MS_NODEV | unix.MS_NOEXEC, ""},
	{"tracefs", "/sys/kernel/tracing", "tracefs", unix.MS_NOSUID | unix.MS_NODEV | unix.MS_NOEXEC, ""},
	{"debugfs", "/sys/kernel/debug", "debugfs", unix.MS_NOSUID | unix.MS_NODEV | unix.MS_NOEXEC, ""},
	{"bpffs", "/sys/fs/bpf", "bpf", unix.MS_NOSUID | unix.MS_NODEV | unix.MS_NOEXEC, "mode=0700"},
	{"cgroup2", "/sys/fs/cgroup", "cgroup2", unix.MS_NOSUID | unix.MS_NODEV | unix.MS_NOEXEC, ""},
	{"tmpfs", "/tmp", "tmpfs", unix.MS_NOSUID | unix.MS_NODEV, "mode=1777"},
}

func main() {
	// The firmware may have left a partial line on the console.
	fmt.Fprintln(os.Stderr)
	code := setupFail
	func() {
		defer func() {
			if r := recover(); r != nil {
				logf("panic: %v", r)
				code = setupFail
			}
		}()
		code = run()
	}()
	// Leading newline: the program may have left a partial line behind.
	fmt.Printf("\n%s%d\n", marker, code)
	poweroff()
}

func run() int {
	if os.Getpid() != 1 {
		logf("must run as pid 1 (is %d)", os.Getpid())
		return setupFail
	}
	if err := setup(); err != nil {
		logf("setup: %v", err)
		return setupFail
	}
	args, err := programs()
	if err != nil {
		logf("%v", err)
		return setupFail
	}
	var uts unix.Utsname
	_ = unix.Uname(&uts)
	logf("kernel %s", unix.ByteSliceToString(uts.Release[:]))

	// A lone ";" separates programs (a second "--" would end the kernel's
	// list of init arguments). All run; the first failure is the result.
	code := 0
	for len(args) > 0 {
		n := 0
		for n < len(args) && args[n] != ";" {
			n++
		}
		if n > 0 {
			if c := runProg(args[:n]); c != 0 && code == 0 {
				code = c
			}
		}
		args = args[min(n+1, len(args)):]
	}
	return code
}

// argsFile lists the programs, one word per line, when the kernel command
// line names none: the kernel hands init at most 32 arguments.
const argsFile = "/vmtest/args"

// programs returns the words naming the programs to run: init's own
// arguments when there are any, otherwise the lines of argsFile.
func programs() ([]string, error) {
	if args := os.Args[1:]; len(args) > 0 {
		return args, nil
	}
	b, err := os.ReadFile(argsFile)
	if errors.Is(err, os.ErrNotExist) {
		return nil, fmt.Errorf("no program to run: no %s and nothing after \"--\" on the kernel command line", argsFile)
	}
	if err != nil {
		return nil, err
	}
	var args []string
	for _, w := range strings.Split(string(b), "\n") {
		if w != "" {
			args = append(args, w)
		}
	}
	if len(args) == 0 {
		return nil, fmt.Errorf("no program to run: %s is empty", argsFile)
	}
	return args, nil
}

// runProg runs one program in its own directory and returns its exit code.
func runProg(args []string) int {
	logf("running %q", args)
	cmd := exec.Command(args[0], args[1:]...)
	// Like go test: run in the program's directory so testdata/ resolves.
	cmd.Dir = filepath.Dir(args[0])
	cmd.Stdout = os.Stdout
	cmd.Stderr = os.Stderr
	cmd.Env = os.Environ()
	err := cmd.Run()
	var ee *exec.ExitError
	switch {
	case err == nil:
		return 0
	case errors.As(err, &ee):
		if ws, ok := ee.Sys().(syscall.WaitStatus); ok && ws.Signaled() {
			logf("%s killed by %v", args[0], ws.Signal())
			return 128 + int(ws.Signal())
		}
		logf("%s exited %d", args[0], ee.ExitCode())
		return ee.ExitCode()
	default:
		logf("run %s: %v", args[0], err)
		return setupFail
	}
}

func setup() error {
	for _, m := range mounts {
		if err := os.MkdirAll(m.target, 0o755); err != nil {
			return err
		}
		err := unix.Mount(m.source, m.target, m.fstype, m.flags, m.data)
		if err != nil && !errors.Is(err, unix.EBUSY) {
			return fmt.Errorf("mount %s on %s: %w", m.fstype, m.target, err)
		}
		if m.target == "/dev" {
			if err := ensureConsole(); err != nil {
				return err
			}
		}
	}
	// Without a /dev/ptmx of devtmpfs, devpts' own multiplexer serves.
	if _, err := os.Stat("/dev/ptmx"); err != nil {
		if err := os.Symlink("pts/ptmx", "/dev/ptmx"); err != nil {
			return fmt.Errorf("link /dev/ptmx: %w", err)
		}
	}
	// The kernel starts init with 1024/4096 descriptors; tests hold
	// thousands of sockets, as servers do under systemd (524288 there).
	nofile := unix.Rlimit{Cur: 524288, Max: 524288}
	if err := unix.Setrlimit(unix.RLIMIT_NOFILE, &nofile); err != nil {
		return fmt.Errorf("raise RLIMIT_NOFILE: %w", err)
	}
	if err := loopback.Up(); err != nil {
		return err
	}
	loadModules()
	// The kernel passes init HOME=/ and TERM=linux, plus any unknown
	// NAME=value parameter from before "--"; keep those, fix the rest.
	// TCPTRACE_TEST_VM tells tests that the machine is this throwaway VM:
	// the tests that change the whole machine (its wall clock, its kernel
	// modules) run only where it is set.
	for k, v := range map[string]string{
		"PATH":             "/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin",
		"HOME":             "/tmp",
		"TMPDIR":           "/tmp",
		"TCPTRACE_TEST_VM": "1",
	} {
		if err := os.Setenv(k, v); err != nil {
			return err
		}
	}
	return nil
}

// ensureConsole points fds 0-2 at /dev/console if the kernel could not (an
// initramfs without a /dev/console node leaves init with no fds at all).
func ensureConsole() error {
	var st unix.Stat_t
	if unix.Fstat(1, &st) == nil && unix.Fstat(2, &st) == nil {
		return nil
	}
	fd, err := unix.Open("/dev/console", unix.O_RDWR|unix.O_NOCTTY, 0)
	if err != nil {
		return fmt.Errorf("open /dev/console: %w", err)
	}
	for i := 0; i < 3; i++ {
		if fd != i {
			if err := unix.Dup3(fd, i, 0); err != nil {
				return fmt.Errorf("dup console: %w", err)
			}
		}
	}
	if fd > 2 {
		unix.Close(fd)
	}
	return nil
}

func poweroff() {
	unix.Sync()
	err := unix.Reboot(unix.LINUX_REBOOT_CMD_POWER_OFF)
	logf("power off: %v; rebooting instead", err)
	// With qemu's -no-reboot a reboot ends the VM as well.
	err = unix.Reboot(unix.LINUX_REBOOT_CMD_RESTART)
	logf("reboot: %v; exiting (kernel panic, panic=-1 reboots)", err)
	os.Exit(1)
}

func logf(format string, args ...any) {
	fmt.Fprintf(os.Stderr, "vmtest-init: "+strings.TrimSuffix(format, "\n")+"\n", args...)
}

// loadModules loads the kernel modules the initramfs carries for the
// running kernel, /modules/<release>/, in the order its order file gives
// (the sock_diag modules, which Debian does not build in). A module that
// fails is logged: the tests that need it then say so themselves.
func loadModules() {
	var uts unix.Utsname
	_ = unix.Uname(&uts)
	dir := "/modules/" + unix.ByteSliceToString(uts.Release[:])
	order, err := os.ReadFile(dir + "/order")
	if err != nil {
		return // none for this kernel
	}
	for _, name := range strings.Fields(string(order)) {
		f, err := os.Open(dir + "/" + name)
		if err != nil {
			logf("module %s: %v", name, err)
			continue
		}
		err = unix.FinitModule(int(f.Fd()), "", 0)
		f.Close()
		if err != nil && !errors.Is(err, unix.EEXIST) {
			logf("load module %s: %v", name, err)
		}
	}
}
