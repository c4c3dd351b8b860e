// Command soakcheck counts the transitions missing from two independent
// `tcptrace trace` outputs of the same run: transitions neither program
// received. Recursion skips are per program (two programs on one tracepoint
// cannot both be skipped by the same nested run), so what both miss was
// never delivered to the tracepoint's programs by the kernel at all.
//
// Usage: soakcheck A.jsonl B.jsonl
// (soakcheck timed checks a timed soak instead: see timed.go.)
// Every socket of the run is expected to make 5 transitions, except the
// listener (2). Prints the number of transitions missing from both.
package main

import (
	"bufio"
	"bytes"
	"fmt"
	"os"
)

type socket struct {
	count    int
	listener bool
}

func read(path string) (map[string]*socket, error) {
	f, err := os.Open(path)
	if err != nil {
		return nil, err
	}
	defer f.Close()
	socks := make(map[string]*socket)
	sc := bufio.NewScanner(f)
	sc.Buffer(make([]byte, 1<<20), 1<<20)
	for sc.Scan() {
		line := sc.Bytes()
		if !bytes.Contains(line, []byte(`"event":"transition"`)) {
			continue
		}
		id := field(line, `"sock":"`)
		s := socks[id]
		if s == nil {
			s = &socket{}
			socks[id] = s
		}
		s.count++
		if bytes.Contains(line, []byte(`"new_state":"LISTEN"`)) {
			s.listener = true
		}
	}
	return socks, sc.Err()
}

func field(line []byte, prefix string) string {
	i := bytes.Index(line, []byte(prefix))
	if i < 0 {
		return ""
	}
	rest := line[i+len(prefix):]
	if j := bytes.IndexByte(rest, '"'); j >= 0 {
		return string(rest[:j])
	}
	return ""
}

func missing(s *socket) int {
	if s == nil {
		return 0
	}
	want := 5
	if s.listener {
		want = 2
	}
	return max(want-s.count, 0)
}

func main() {
	if len(os.Args) > 1 && os.Args[1] == "timed" {
		os.Exit(timed(os.Args[2:]))
	}
	if len(os.Args) != 3 {
		fmt.Fprintln(os.Stderr, "usage: soakcheck A.jsonl B.jsonl, or soakcheck timed -h")
		os.Exit(2)
	}
	a, err := read(os.Args[1])
	if err != nil {
		fmt.Fprintln(os.Stderr, "soakcheck:", err)
		os.Exit(1)
	}
	b, err := read(os.Args[2])
	if err != nil {
		fmt.Fprintln(os.Stderr, "soakcheck:", err)
		os.Exit(1)
	}
	both := 0
	for id, sa := range a {
		if sb, ok := b[id]; ok {
			both += min(missing(sa), missing(sb))
		}
	}
	fmt.Println(both)
}
