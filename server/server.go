// Package server is tcptrace's HTTP endpoint: Prometheus metrics, liveness
// and readiness. It listens at once, so a port already in use fails
// tcptrace at start rather than later, and it serves before the tracer
// is attached: /readyz says 503 until every readiness check passes.
package server

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"net"
	"net/http"
	"sort"
	"strings"
	"sync"
	"time"

	"github.com/prometheus/client_golang/prometheus"
	"github.com/prometheus/client_golang/prometheus/promhttp"
)

// The endpoints' paths (the DaemonSet's probes and scrape use them).
const (
	PathMetrics = "/metrics"
	PathHealthz = "/healthz"
	PathReadyz  = "/readyz"
	// PathCloseWait lists the sockets in CLOSE-WAIT with their FIN time,
	// as close_wait events, one JSON object per line (tcptrace kill --from).
	PathCloseWait = "/api/v1/closewait"
	// PathReport serves the leak report as JSON (tcptrace top --from).
	PathReport = "/api/v1/report"
)

// Server serves the endpoints.
type Server struct {
	ln  net.Listener
	srv *http.Server
	mux *http.ServeMux
	log *slog.Logger

	mu     sync.Mutex
	checks map[string]func() error
}

// Listen listens on addr (host:port) and serves g's metrics once Serve is
// called. extra adds handlers by path.
func Listen(addr string, g prometheus.Gatherer, log *slog.Logger) (*Server, error) {
	if log == nil {
		log = slog.New(slog.DiscardHandler)
	}
	ln, err := net.Listen("tcp", addr)
	if err != nil {
		return nil, fmt.Errorf("listen: %w", err)
	}
	s := &Server{ln: ln, log: log, checks: make(map[string]func() error)}
	mux := http.NewServeMux()
	s.mux = mux
	mux.Handle("GET "+PathMetrics, promhttp.HandlerFor(g, promhttp.HandlerOpts{
		ErrorLog:      slog.NewLogLogger(log.Handler(), slog.LevelWarn),
		ErrorHandling: promhttp.ContinueOnError,
		// A few scrapers at once at most; the rest wait their turn rather
		// than pile up work on a node that may be in trouble.
		MaxRequestsInFlight: 4,
		Timeout:             30 * time.Second,
	}))
	mux.HandleFunc("GET "+PathHealthz, func(w http.ResponseWriter, _ *http.Request) {
		w.Header().Set("Content-Type", "text/plain; charset=utf-8")
		fmt.Fprintln(w, "ok")
	})
	mux.HandleFunc("GET "+PathReadyz, s.readyz)
	s.srv = &http.Server{
		Handler:           mux,
		ReadHeaderTimeout: 10 * time.Second,
		IdleTimeout:       2 * time.Minute,
		ErrorLog:          slog.NewLogLogger(log.Handler(), slog.LevelDebug),
	}
	return s, nil
}

// Handle serves h at path (a pattern of net/http's ServeMux), beside the
// endpoints above: the API of other commands.
func (s *Server) Handle(pattern string, h http.Handler) { s.mux.Handle(pattern, h) }

// Addr is the address listened on.
func (s *Server) Addr() net.Addr { return s.ln.Addr() }

// Ready adds (or replaces) a readiness check: /readyz is 200 only when
// every check returns nil. Without any check it is 503.
func (s *Server) Ready(name string, check func() error) {
	s.mu.Lock()
	s.checks[name] = check
	s.mu.Unlock()
}

func (s *Server) readyz(w http.ResponseWriter, _ *http.Request) {
	s.mu.Lock()
	names := make([]string, 0, len(s.checks))
	for name := range s.checks {
		names = append(names, name)
	}
	checks := make([]func() error, len(names))
	sort.Strings(names)
	for i, name := range names {
		checks[i] = s.checks[name]
	}
	s.mu.Unlock()
	var b strings.Builder
	ok := len(checks) > 0
	if !ok {
		b.WriteString("starting: no check registered yet\n")
	}
	for i, check := range checks {
		if err := check(); err != nil {
			ok = false
			fmt.Fprintf(&b, "%s: %v\n", names[i], err)
		} else {
			fmt.Fprintf(&b, "%s: ok\n", names[i])
		}
	}
	w.Header().Set("Content-Type", "text/plain; charset=utf-8")
	w.Header().Set("Cache-Control", "no-store")
	if !ok {
		w.WriteHeader(http.StatusServiceUnavailable)
	}
	fmt.Fprint(w, b.String())
}

// Serve serves until Shutdown; it returns nil then.
func (s *Server) Serve() error {
	if err := s.srv.Serve(s.ln); err != nil && !errors.Is(err, http.ErrServerClosed) {
		return fmt.Errorf("http server: %w", err)
	}
	return nil
}

// Shutdown stops serving, waiting for requests in progress until ctx ends.
func (s *Server) Shutdown(ctx context.Context) error {
	return s.srv.Shutdown(ctx)
}
