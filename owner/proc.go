package owner

import (
	"bytes"
	"errors"
	"fmt"
	"io"
	"os"
	"strconv"
	"time"

	"golang.org/x/sys/unix"

	"github.com/tcptrace/tcptrace/events"
)

// details is what Owner reports about a process, read once per process
// incarnation: start is its start time (clock ticks since boot, field 22 of
// /proc/<pid>/stat), which together with the pid names one process even
// when pids are reused. proc is shared by every Owner of the process.
type details struct {
	start   uint64
	proc    *events.Process
	checked time.Time // when start was last read
}

// parseStat extracts comm and the start time from the content of
// /proc/<pid>/stat. comm may hold spaces and parentheses, so it ends at the
// last ')': nothing after it can contain one.
func parseStat(b []byte) (comm string, start uint64, err error) {
	open := bytes.IndexByte(b, '(')
	end := bytes.LastIndexByte(b, ')')
	if open < 0 || end < open {
		return "", 0, errors.New("stat: no comm")
	}
	// Fields after comm start at field 3 (state); starttime is field 22.
	rest := bytes.Fields(b[end+1:])
	const startIdx = 22 - 3
	if len(rest) <= startIdx {
		return "", 0, fmt.Errorf("stat: %d fields after comm", len(rest))
	}
	start, err = strconv.ParseUint(string(rest[startIdx]), 10, 64)
	if err != nil {
		return "", 0, fmt.Errorf("stat: starttime: %w", err)
	}
	return string(b[open+1 : end]), start, nil
}

// parseStatus extracts the real uid (first number of the "Uid:" line) and
// the thread group id from the content of /proc/<pid>/status.
func parseStatus(b []byte) (uid uint32, tgid int, err error) {
	var haveUID, haveTgid bool
	for len(b) > 0 {
		line := b
		if i := bytes.IndexByte(b, '\n'); i >= 0 {
			line, b = b[:i], b[i+1:]
		} else {
			b = nil
		}
		key, val, ok := bytes.Cut(line, []byte(":"))
		if !ok {
			continue
		}
		f := bytes.Fields(val)
		if len(f) == 0 {
			continue
		}
		switch string(key) {
		case "Uid":
			u, err := strconv.ParseUint(string(f[0]), 10, 32)
			if err != nil {
				return 0, 0, fmt.Errorf("status: uid: %w", err)
			}
			uid, haveUID = uint32(u), true
		case "Tgid":
			t, err := strconv.Atoi(string(f[0]))
			if err != nil || t <= 0 {
				return 0, 0, fmt.Errorf("status: bad tgid %q", f[0])
			}
			tgid, haveTgid = t, true
		}
		if haveUID && haveTgid {
			return uid, tgid, nil
		}
	}
	return 0, 0, errors.New("status: no uid or tgid line")
}

// cleanCmdline turns raw /proc/<pid>/cmdline content into one line of at
// most MaxCmdline bytes.
func cleanCmdline(b []byte) string {
	if len(b) > MaxCmdline {
		b = b[:MaxCmdline]
	}
	b = bytes.TrimRight(b, "\x00")
	out := make([]byte, len(b))
	for i, c := range b {
		if c == 0 {
			c = ' '
		}
		out[i] = c
	}
	return string(out)
}

// readSmall reads at most limit bytes of a /proc file; /proc files have no
// useful size, so os.ReadFile's size hint is no help.
func readSmall(path string, limit int) ([]byte, error) {
	f, err := os.Open(path)
	if err != nil {
		return nil, err
	}
	defer f.Close()
	return io.ReadAll(io.LimitReader(f, int64(limit)))
}

// pidPath is <root>/<pid>/<name>.
func pidPath(root string, pid int, name string) string {
	return root + "/" + strconv.Itoa(pid) + "/" + name
}

// readStart returns the start time of pid.
func readStart(root string, pid int) (uint64, error) {
	b, err := readSmall(pidPath(root, pid, "stat"), 4096)
	if err != nil {
		return 0, err
	}
	_, start, err := parseStat(b)
	return start, err
}

// readDetails reads everything Owner reports about pid. The start time is
// read again at the end: if it changed, the pid was reused mid-read and the
// mix of two processes is thrown away.
func readDetails(root string, pid int) (details, error) {
	start, err := readStart(root, pid)
	if err != nil {
		return details{}, err
	}
	p := &events.Process{PID: pid}
	comm, err := readSmall(pidPath(root, pid, "comm"), 64)
	if err != nil {
		return details{}, err
	}
	p.Comm = string(bytes.TrimSuffix(comm, []byte("\n")))
	status, err := readSmall(pidPath(root, pid, "status"), 64<<10)
	if err != nil {
		return details{}, err
	}
	if p.UID, _, err = parseStatus(status); err != nil {
		return details{}, err
	}
	// Unreadable exe (kernel thread, exited, no permission) is reported as "".
	p.Exe, _ = os.Readlink(pidPath(root, pid, "exe"))
	if cmd, err := readSmall(pidPath(root, pid, "cmdline"), MaxCmdline+1); err == nil {
		p.Cmdline = cleanCmdline(cmd)
	}
	again, err := readStart(root, pid)
	if err != nil {
		return details{}, err
	}
	if again != start {
		return details{}, fmt.Errorf("pid %d: reused while reading", pid)
	}
	return details{start: start, proc: p}, nil
}

// readTgid maps a thread id to its thread group id, so a hint naming a
// thread still finds the process.
func readTgid(root string, pid int) (int, error) {
	b, err := readSmall(pidPath(root, pid, "status"), 64<<10)
	if err != nil {
		return 0, err
	}
	_, tgid, err := parseStatus(b)
	return tgid, err
}

// parseSocketLink returns the inode in a "socket:[<ino>]" fd link.
func parseSocketLink(b []byte) (uint64, bool) {
	const pre, suf = "socket:[", "]"
	if !bytes.HasPrefix(b, []byte(pre)) || !bytes.HasSuffix(b, []byte(suf)) {
		return 0, false
	}
	digits := b[len(pre) : len(b)-len(suf)]
	// The kernel writes plain decimal: no sign, no leading zero.
	if len(digits) == 0 || digits[0] < '1' || digits[0] > '9' {
		return 0, false
	}
	ino, err := strconv.ParseUint(string(digits), 10, 64)
	return ino, err == nil
}

// socketFDs reads pid's descriptor table and returns every socket in it
// with the lowest fd holding it, plus the number of links read.
func socketFDs(root string, pid int) (map[uint64]int, int, error) {
	dir, err := os.Open(pidPath(root, pid, "fd"))
	if err != nil {
		return nil, 0, err
	}
	defer dir.Close()
	names, err := dir.Readdirnames(-1)
	if err != nil {
		return nil, 0, err
	}
	// readlinkat on the open directory avoids a path walk per descriptor.
	dfd := int(dir.Fd())
	socks := make(map[uint64]int)
	var buf [64]byte // socket links are ~20 bytes; longer ones are not sockets
	read := 0
	for _, name := range names {
		fd, err := strconv.Atoi(name)
		if err != nil {
			continue
		}
		n, err := unix.Readlinkat(dfd, name, buf[:])
		read++
		if err != nil || n >= len(buf) {
			continue // closed meanwhile, or not a socket
		}
		ino, ok := parseSocketLink(buf[:n])
		if !ok {
			continue
		}
		if old, seen := socks[ino]; !seen || fd < old {
			socks[ino] = fd
		}
	}
	return socks, read, nil
}

// holdsFD reports whether fd of pid still refers to socket ino.
func holdsFD(root string, pid, fd int, ino uint64) bool {
	var buf [64]byte
	n, err := unix.Readlink(pidPath(root, pid, "fd/"+strconv.Itoa(fd)), buf[:])
	if err != nil || n >= len(buf) {
		return false
	}
	got, ok := parseSocketLink(buf[:n])
	return ok && got == ino
}
