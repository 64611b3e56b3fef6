package main

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"net"
	"net/http"
	"net/netip"
	"slices"
	"strings"
	"sync/atomic"
	"time"

	"github.com/knoxcall/dbproxy/internal/metrics"
	"github.com/knoxcall/dbproxy/knoxproxy"
)

// adminReadHeaderTimeout bounds how long a client of the admin listener may take to send
// its request headers.
const adminReadHeaderTimeout = 5 * time.Second

// checkAdminAddress checks that address is a loopback host:port with a port. A host name
// is checked again when the listener is bound, against what it resolves to.
func checkAdminAddress(address string) error {
	host, port, err := net.SplitHostPort(address)
	if err != nil {
		return fmt.Errorf("%q: %w (want host:port, such as 127.0.0.1:9090)", address, err)
	}
	if port == "" {
		return fmt.Errorf("%q: missing port", address)
	}
	if addr, err := netip.ParseAddr(host); err == nil && !addr.Unmap().IsLoopback() {
		return fmt.Errorf("%s: %w", address, knoxproxy.ErrNotLoopback)
	}
	if host == "" {
		return fmt.Errorf("%q: %w (an empty host means every interface)", address, knoxproxy.ErrNotLoopback)
	}
	return nil
}

// listenAdmin binds the admin listener and checks that it is bound to a loopback address.
func listenAdmin(ctx context.Context, address string) (net.Listener, error) {
	if err := checkAdminAddress(address); err != nil {
		return nil, err
	}
	host, _, _ := net.SplitHostPort(address)
	if _, err := netip.ParseAddr(host); err != nil {
		addrs, err := net.DefaultResolver.LookupNetIP(ctx, "ip", host)
		if err != nil {
			return nil, fmt.Errorf("%s: %w", address, err)
		}
		for _, a := range addrs {
			if !a.Unmap().IsLoopback() {
				return nil, fmt.Errorf("%s resolves to %s: %w", address, a, knoxproxy.ErrNotLoopback)
			}
		}
	}
	ln, err := net.Listen("tcp", address)
	if err != nil {
		return nil, err
	}
	if bound, ok := ln.Addr().(*net.TCPAddr); !ok || !bound.IP.IsLoopback() {
		ln.Close()
		return nil, fmt.Errorf("bound %s: %w", ln.Addr(), knoxproxy.ErrNotLoopback)
	}
	return ln, nil
}

// readiness decides what /readyz returns.
type readiness struct {
	srv   *knoxproxy.Server
	creds *credentialWatcher
	// routes are the names of the configured routes; a reload replaces them.
	routes atomic.Pointer[[]string]
	// stopping is set when SIGTERM arrives, before the listeners close.
	stopping atomic.Bool
}

// problems lists why the agent is not ready, or nothing when it is. The agent is ready when
// it is not shutting down, every configured route is bound, every route's credentials can
// be fetched, and no route is at its max_connections. A route's credentials count as
// unavailable when the agent's own last fetch failed (at start, after a reload, or in the
// retries every credentialRetryInterval), or when the last session's fetch failed and no
// fetch by the agent has succeeded since. A route with no fetch yet counts as ready.
func (r *readiness) problems() []string {
	if r.stopping.Load() || r.srv.Draining() {
		return []string{"shutting down"}
	}
	var out []string
	stats := r.srv.Stats()
	running := make(map[string]knoxproxy.RouteStats, len(stats))
	for _, st := range stats {
		running[st.Name] = st
	}
	names := *r.routes.Load()
	for _, name := range names {
		st, ok := running[name]
		credentialProblem := r.creds.problem(name, st)
		switch {
		case !ok:
			out = append(out, fmt.Sprintf("route %q: not listening", name))
		case credentialProblem != "":
			out = append(out, fmt.Sprintf("route %q: %s", name, credentialProblem))
		case st.MaxConnections > 0 && st.OpenSessions >= int64(st.MaxConnections):
			out = append(out, fmt.Sprintf("route %q: at max_connections (%d)", name, st.MaxConnections))
		}
	}
	return out
}

func (r *readiness) setRoutes(routes []knoxproxy.Route) {
	names := make([]string, 0, len(routes))
	for _, rt := range routes {
		names = append(names, rt.Name)
	}
	slices.Sort(names)
	r.routes.Store(&names)
}

// newAdminHandler serves /healthz, /readyz and /metrics.
func newAdminHandler(ready *readiness, reg *metrics.Registry) http.Handler {
	mux := http.NewServeMux()
	mux.HandleFunc("GET /healthz", func(w http.ResponseWriter, _ *http.Request) {
		w.Header().Set("Content-Type", "text/plain; charset=utf-8")
		fmt.Fprintln(w, "ok")
	})
	mux.HandleFunc("GET /readyz", func(w http.ResponseWriter, _ *http.Request) {
		w.Header().Set("Content-Type", "text/plain; charset=utf-8")
		w.Header().Set("Cache-Control", "no-store")
		if problems := ready.problems(); len(problems) > 0 {
			w.WriteHeader(http.StatusServiceUnavailable)
			fmt.Fprintln(w, strings.Join(problems, "\n"))
			return
		}
		fmt.Fprintln(w, "ready")
	})
	mux.Handle("GET /metrics", reg.Handler())
	return mux
}

// startAdmin serves the admin endpoints on ln until stop is called.
func startAdmin(ln net.Listener, handler http.Handler, log *slog.Logger) (stop func()) {
	srv := &http.Server{
		Handler:           handler,
		ReadHeaderTimeout: adminReadHeaderTimeout,
		ErrorLog:          slog.NewLogLogger(log.Handler(), slog.LevelWarn),
	}
	done := make(chan struct{})
	go func() {
		defer close(done)
		if err := srv.Serve(ln); err != nil && !errors.Is(err, http.ErrServerClosed) {
			log.Error("admin listener failed", "listen", ln.Addr().String(), "err", err)
		}
	}()
	log.Info("admin listening", "listen", ln.Addr().String(), "paths", "/healthz /readyz /metrics")
	return func() {
		ctx, cancel := context.WithTimeout(context.Background(), time.Second)
		defer cancel()
		srv.Shutdown(ctx)
		srv.Close()
		<-done
	}
}
