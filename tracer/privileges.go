package tracer

import (
	"errors"
	"fmt"
	"os"
	"strconv"
	"strings"

	"golang.org/x/sys/unix"
)

// Minimum kernel: ring buffers, bpf_ktime_get_boot_ns and kernel BTF.
const (
	minKernelMajor = 5
	minKernelMinor = 8
)

// kernelBTFPath is where the kernel exposes its BTF; a variable for tests.
var kernelBTFPath = "/sys/kernel/btf/vmlinux"

// ErrPrivilege is wrapped by errors about missing capabilities.
var ErrPrivilege = errors.New("insufficient privileges")

// ErrUnsupportedKernel is wrapped by errors about a kernel tcptrace cannot use.
var ErrUnsupportedKernel = errors.New("unsupported kernel")

// CheckPrivileges reports which capabilities the process lacks to load and
// attach tracing programs: CAP_BPF and CAP_PERFMON, or CAP_SYS_ADMIN.
func CheckPrivileges() error {
	data, err := effectiveCaps()
	if err != nil {
		return err
	}
	has := func(c uint) bool { return data[c/32].Effective&(1<<(c%32)) != 0 }
	if has(unix.CAP_SYS_ADMIN) {
		return nil
	}
	var missing []string
	if !has(unix.CAP_BPF) {
		missing = append(missing, "CAP_BPF")
	}
	if !has(unix.CAP_PERFMON) {
		missing = append(missing, "CAP_PERFMON")
	}
	if len(missing) == 0 {
		return nil
	}
	return fmt.Errorf("%w: missing %s (or CAP_SYS_ADMIN); run as root or grant CAP_BPF and CAP_PERFMON",
		ErrPrivilege, strings.Join(missing, " and "))
}

// Capable reports whether the process has capability c (unix.CAP_*) in
// its effective set.
func Capable(c uint) bool {
	data, err := effectiveCaps()
	return err == nil && data[c/32].Effective&(1<<(c%32)) != 0
}

func effectiveCaps() ([2]unix.CapUserData, error) {
	hdr := unix.CapUserHeader{Version: unix.LINUX_CAPABILITY_VERSION_3}
	var data [2]unix.CapUserData
	if err := unix.Capget(&hdr, &data[0]); err != nil {
		return data, fmt.Errorf("read process capabilities: %w", err)
	}
	return data, nil
}

// checkKernel fails early, with the minimum stated, on kernels tcptrace
// cannot run on, instead of with a verifier or BTF error later.
func checkKernel() error {
	var uts unix.Utsname
	if err := unix.Uname(&uts); err != nil {
		return fmt.Errorf("uname: %w", err)
	}
	release := unix.ByteSliceToString(uts.Release[:])
	if err := checkKernelRelease(release); err != nil {
		return err
	}
	if _, err := os.Stat(kernelBTFPath); err != nil {
		return fmt.Errorf("%w: kernel BTF not found at %s (kernel %s); tcptrace needs a kernel built with CONFIG_DEBUG_INFO_BTF=y, Linux %d.%d or newer",
			ErrUnsupportedKernel, kernelBTFPath, release, minKernelMajor, minKernelMinor)
	}
	return nil
}

func checkKernelRelease(release string) error {
	major, minor, ok := parseRelease(release)
	if !ok {
		// Unknown formats are let through: loading will tell.
		return nil
	}
	if major < minKernelMajor || (major == minKernelMajor && minor < minKernelMinor) {
		return fmt.Errorf("%w: kernel %s is too old; tcptrace needs Linux %d.%d or newer with BTF",
			ErrUnsupportedKernel, release, minKernelMajor, minKernelMinor)
	}
	return nil
}

// parseRelease reads "5.10.0-30-amd64" as 5, 10.
func parseRelease(release string) (major, minor int, ok bool) {
	parts := strings.SplitN(release, ".", 3)
	if len(parts) < 2 {
		return 0, 0, false
	}
	major, err := strconv.Atoi(parts[0])
	if err != nil {
		return 0, 0, false
	}
	end := 0
	for end < len(parts[1]) && parts[1][end] >= '0' && parts[1][end] <= '9' {
		end++
	}
	minor, err = strconv.Atoi(parts[1][:end])
	if err != nil {
		return 0, 0, false
	}
	return major, minor, true
}
