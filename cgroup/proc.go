package cgroup

import (
	"errors"
	"fmt"
	"strconv"
	"strings"
)

// procLine is one "hierarchy-ID:controller-list:path" line.
type procLine struct {
	v2          bool
	controllers []string
	path        string
}

// ParseProcCgroup parses the content of /proc/<pid>/cgroup. v2Path is the
// path of the "0::" line ("" when there is none). v1 maps each controller of
// the v1 lines, split at commas ("cpu", "cpuacct", "name=systemd"), to its
// path; it is empty, not nil, when there are none. Paths are returned as the
// kernel wrote them, including a " (deleted)" suffix on a dead v2 cgroup.
// Content the kernel cannot have written is an error.
func ParseProcCgroup(data []byte) (v2Path string, v1 map[string]string, err error) {
	lines, err := parseProc(data)
	if err != nil {
		return "", nil, err
	}
	v1 = make(map[string]string)
	for _, l := range lines {
		if l.v2 {
			v2Path = l.path
			continue
		}
		for _, c := range l.controllers {
			v1[c] = l.path
		}
	}
	return v2Path, v1, nil
}

// ContextFromProc returns the most specific container context among the
// lines of /proc/<pid>/cgroup: one with both container id and pod UID beats
// one with a container id, which beats one with a pod UID only. On a tie the
// v2 line wins, then v1 lines in file order. Controllers can disagree on
// hybrid hosts (systemd may track a container only in name=systemd), which
// is why every line is read. Malformed content gives an empty Context.
func ContextFromProc(data []byte) Context {
	lines, err := parseProc(data)
	if err != nil {
		return Context{}
	}
	var best Context
	bestScore := 0
	try := func(path string) {
		c := ParsePath(path)
		if s := score(c); s > bestScore {
			best, bestScore = c, s
		}
	}
	for _, l := range lines {
		if l.v2 {
			try(l.path)
		}
	}
	for _, l := range lines {
		if !l.v2 {
			try(l.path)
		}
	}
	return best
}

func score(c Context) int {
	s := 0
	if c.ContainerID != "" {
		s += 2
	}
	if c.PodUID != "" {
		s++
	}
	return s
}

func parseProc(data []byte) ([]procLine, error) {
	var lines []procLine
	seenV2 := false
	seen := make(map[string]bool)
	for n, text := range strings.Split(string(data), "\n") {
		if text == "" {
			continue // the trailing newline
		}
		lineErr := func(format string, args ...any) error {
			return fmt.Errorf("line %d: %s", n+1, fmt.Sprintf(format, args...))
		}
		idText, rest, ok := strings.Cut(text, ":")
		if !ok {
			return nil, lineErr("no controller list")
		}
		// The path may itself hold colons (runc's "slice:prefix:id"), so
		// only the first two separate fields.
		ctrlText, path, ok := strings.Cut(rest, ":")
		if !ok {
			return nil, lineErr("no path")
		}
		id, err := strconv.ParseUint(idText, 10, 32)
		if err != nil {
			return nil, lineErr("bad hierarchy id %q", idText)
		}
		if !strings.HasPrefix(path, "/") || hasControl(path) {
			return nil, lineErr("bad path %q", path)
		}
		if id == 0 {
			if ctrlText != "" {
				return nil, lineErr("controllers on the v2 hierarchy")
			}
			if seenV2 {
				return nil, lineErr("second v2 line")
			}
			seenV2 = true
			lines = append(lines, procLine{v2: true, path: path})
			continue
		}
		if ctrlText == "" {
			return nil, lineErr("v1 hierarchy %d without controllers", id)
		}
		ctrls := strings.Split(ctrlText, ",")
		for _, c := range ctrls {
			if c == "" || hasControl(c) {
				return nil, lineErr("bad controller list %q", ctrlText)
			}
			if seen[c] {
				return nil, lineErr("controller %q twice", c)
			}
			seen[c] = true
		}
		lines = append(lines, procLine{controllers: ctrls, path: path})
	}
	if len(lines) == 0 {
		return nil, errors.New("no cgroup lines")
	}
	return lines, nil
}
