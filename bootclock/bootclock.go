// Package bootclock converts the kernel's CLOCK_BOOTTIME timestamps, which
// eBPF programs record, to wall-clock time.
package bootclock

import (
	"time"

	"golang.org/x/sys/unix"
)

// Clock maps boot-time nanoseconds to wall time with an offset taken once, so
// every event of a run is converted the same way.
type Clock struct {
	offset int64 // wall ns - boot ns
}

// New samples both clocks once.
func New() Clock {
	boot := Now()
	wall := time.Now().UnixNano()
	return Clock{offset: wall - boot}
}

// Now returns the current CLOCK_BOOTTIME in nanoseconds, the clock of
// bpf_ktime_get_boot_ns.
func Now() int64 {
	var ts unix.Timespec
	// CLOCK_BOOTTIME cannot fail on any kernel tcptrace supports.
	_ = unix.ClockGettime(unix.CLOCK_BOOTTIME, &ts)
	return ts.Nano()
}

// Wall converts a boot-time timestamp to wall-clock time.
func (c Clock) Wall(bootNS int64) time.Time {
	return time.Unix(0, bootNS+c.offset)
}
