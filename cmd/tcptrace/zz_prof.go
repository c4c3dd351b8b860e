package main

import (
	"os"
	"runtime/pprof"
)

func init() {
	if p := os.Getenv("TCPTRACE_DEBUG_CPU"); p != "" {
		f, _ := os.Create(p)
		pprof.StartCPUProfile(f)
		debugStop = func() { pprof.StopCPUProfile(); f.Close() }
	}
}

var debugStop = func() {}
