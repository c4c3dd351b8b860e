package tracer_test

import (
	"net"
	"testing"

	"github.com/tcptrace/tcptrace/bootclock"
	"github.com/tcptrace/tcptrace/events"
	"github.com/tcptrace/tcptrace/internal/testenv"
	"github.com/tcptrace/tcptrace/tracer"
)

// BenchmarkScanCloseWait reads the kernel's CLOSE-WAIT table, as the
// pipeline does every scan interval, with the default table size and none,
// a few or many sockets in it (at most the file descriptor limit allows).
func BenchmarkScanCloseWait(b *testing.B) {
	testenv.RequirePrivileged(b)
	for _, held := range []int{0, 100, 10000} {
		b.Run(map[int]string{0: "empty", 100: "100", 10000: "10000"}[held], func(b *testing.B) {
			ln, err := net.Listen("tcp4", "127.0.0.1:0")
			if err != nil {
				b.Fatal(err)
			}
			defer ln.Close()
			port := uint16(ln.Addr().(*net.TCPAddr).Port)
			tr, err := tracer.New(tracer.Config{Mode: tracer.ModeCloseWait, Ports: []uint16{port}})
			if err != nil {
				b.Fatal(err)
			}
			defer tr.Close()
			go func() {
				for batch := range tr.Events() {
					tr.Recycle(batch)
				}
			}()
			var conns []net.Conn
			for range held {
				c, s := connect(b, ln)
				s.Close() // the client's socket enters CLOSE-WAIT
				conns = append(conns, c)
			}
			defer func() {
				for _, c := range conns {
					c.Close()
				}
			}()
			// The pipeline's scan, after the first has handed every socket
			// over, and the whole-table read (before Linux 5.9, or after
			// records were dropped).
			due := 0
			b.Run("scan", func(b *testing.B) {
				for b.Loop() {
					n, err := tr.ScanCloseWait(bootclock.Now(), nil, func(*events.Event) { due++ })
					if err != nil {
						b.Fatal(err)
					}
					if n < held {
						b.Fatalf("table holds %d, want %d", n, held)
					}
				}
			})
			b.Run("read-whole", func(b *testing.B) {
				for b.Loop() {
					n := 0
					if err := tr.ListCloseWait(func(uint64) { n++ }); err != nil {
						b.Fatal(err)
					}
					if n < held {
						b.Fatalf("table holds %d, want %d", n, held)
					}
				}
			})
		})
	}
}
