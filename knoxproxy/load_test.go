package knoxproxy

import (
	"bufio"
	"context"
	"flag"
	"io"
	"net"
	"os"
	"runtime"
	"slices"
	"sync"
	"sync/atomic"
	"syscall"
	"testing"
	"time"

	"github.com/knoxcall/dbproxy/credsource"
	"github.com/knoxcall/dbproxy/internal/dbtest"
)

// Sizes of the load tests. -short divides them by ten.
var (
	loadConcurrent = flag.Int("load.concurrent", 1000, "sessions that TestLoadConcurrentSessions opens at once")
	loadIdle       = flag.Int("load.idle", 10000, "idle sessions that TestLoadIdleSessions holds")
)

func loadSize(t *testing.T, n int) int {
	t.Helper()
	if testing.Short() {
		n = max(n/10, 1)
	}
	return n
}

// openFDs counts this process's open file descriptors.
func openFDs(t *testing.T) int {
	t.Helper()
	entries, err := os.ReadDir("/proc/self/fd")
	if err != nil {
		t.Skipf("cannot count file descriptors: %v", err)
	}
	return len(entries)
}

// waitFDs waits until the open file descriptors are back to at most want, and returns the
// last count.
func waitFDs(t *testing.T, want int, limit time.Duration) int {
	t.Helper()
	deadline := time.Now().Add(limit)
	for {
		n := openFDs(t)
		if n <= want || time.Now().After(deadline) {
			return n
		}
		time.Sleep(20 * time.Millisecond)
	}
}

// raiseFDLimit raises RLIMIT_NOFILE to at least n for the rest of the test when the process
// may, and returns the soft limit in force.
func raiseFDLimit(t *testing.T, n uint64) uint64 {
	t.Helper()
	var old syscall.Rlimit
	if err := syscall.Getrlimit(syscall.RLIMIT_NOFILE, &old); err != nil {
		t.Fatal(err)
	}
	if old.Cur >= n {
		return old.Cur
	}
	raised := syscall.Rlimit{Cur: n, Max: max(old.Max, n)}
	if err := syscall.Setrlimit(syscall.RLIMIT_NOFILE, &raised); err != nil {
		// Without CAP_SYS_RESOURCE only the soft limit can move, up to the hard one.
		raised = syscall.Rlimit{Cur: old.Max, Max: old.Max}
		if err := syscall.Setrlimit(syscall.RLIMIT_NOFILE, &raised); err != nil {
			t.Fatalf("set RLIMIT_NOFILE to its hard limit %d: %v", old.Max, err)
		}
		t.Logf("RLIMIT_NOFILE cannot be raised to %d here (hard limit %d)", n, old.Max)
	} else {
		t.Logf("raised RLIMIT_NOFILE from %d (hard %d) to %d", old.Cur, old.Max, n)
	}
	t.Cleanup(func() { syscall.Setrlimit(syscall.RLIMIT_NOFILE, &old) })
	return raised.Cur
}

// loginLine opens a session of the line protocol on addr and returns it after WELCOME.
func loginLine(addr string) (net.Conn, *bufio.Reader, error) {
	c, err := net.Dial("tcp", addr)
	if err != nil {
		return nil, nil, err
	}
	c.SetDeadline(time.Now().Add(60 * time.Second))
	r := bufio.NewReader(c)
	if _, err := io.WriteString(c, "LOGIN\n"); err != nil {
		c.Close()
		return nil, nil, err
	}
	line, err := r.ReadString('\n')
	if err != nil {
		c.Close()
		return nil, nil, err
	}
	if line != "WELCOME\n" {
		c.Close()
		return nil, nil, &unexpectedLine{line}
	}
	c.SetDeadline(time.Time{})
	return c, r, nil
}

type unexpectedLine struct{ line string }

func (e *unexpectedLine) Error() string { return "unexpected reply " + e.line }

func percentile(d []time.Duration, p float64) time.Duration {
	if len(d) == 0 {
		return 0
	}
	s := slices.Clone(d)
	slices.Sort(s)
	return s[min(int(float64(len(s))*p), len(s)-1)]
}

// TestLoadConcurrentSessions opens many sessions at the same moment, each with a login and
// one echo, and checks that all succeed and no file descriptor stays open afterwards.
func TestLoadConcurrentSessions(t *testing.T) {
	n := loadSize(t, *loadConcurrent)
	raiseFDLimit(t, uint64(4*n+1024))
	h := startHarness(t, harnessOptions{loginTimeout: 60 * time.Second})
	addr := h.srv.Addr("orders").String()
	baseline := openFDs(t)

	var (
		wg        sync.WaitGroup
		start     = make(chan struct{})
		failures  atomic.Int64
		firstErr  atomic.Value
		latencies = make([]time.Duration, n)
	)
	for i := range n {
		wg.Add(1)
		go func() {
			defer wg.Done()
			<-start
			began := time.Now()
			c, r, err := loginLine(addr)
			if err == nil {
				defer c.Close()
				latencies[i] = time.Since(began)
				io.WriteString(c, "ping\n")
				var line string
				if line, err = r.ReadString('\n'); err == nil && line != "ping\n" {
					err = &unexpectedLine{line}
				}
			}
			if err != nil {
				failures.Add(1)
				firstErr.CompareAndSwap(nil, err)
			}
		}()
	}
	began := time.Now()
	close(start)
	wg.Wait()
	elapsed := time.Since(began)
	if f := failures.Load(); f != 0 {
		t.Errorf("%d of %d sessions failed; first error: %v", f, n, firstErr.Load())
	}
	t.Logf("%d sessions in %v; login latency p50 %v, p99 %v, max %v", n, elapsed.Round(time.Millisecond),
		percentile(latencies, 0.5).Round(time.Millisecond), percentile(latencies, 0.99).Round(time.Millisecond),
		percentile(latencies, 1).Round(time.Millisecond))

	waitIdleServer(t, h.srv, 30*time.Second)
	if after := waitFDs(t, baseline, 10*time.Second); after > baseline {
		t.Errorf("open file descriptors: %d before, %d after the sessions ended", baseline, after)
	}
	if got := h.upstream.conns.Load(); got != int64(n) {
		t.Errorf("upstream connections = %d, want %d", got, n)
	}
}

// TestLoadIdleSessions holds many idle sessions open at once, checks that a new session
// still logs in promptly, and that closing them all frees every file descriptor.
func TestLoadIdleSessions(t *testing.T) {
	n := loadSize(t, *loadIdle)
	// Client, agent and upstream all live in this process: four descriptors per session.
	const perSession, reserve = 4, 1024
	if limit := raiseFDLimit(t, uint64(perSession*n+reserve)); limit < uint64(perSession*n+reserve) {
		// NOTE: an agent alone needs two descriptors per session, so holding 10,000 needs
		// RLIMIT_NOFILE above 20,000; this test needs twice that for its own ends.
		fit := int(limit-reserve) / perSession
		t.Logf("holding %d idle sessions instead of %d: RLIMIT_NOFILE %d fits no more", fit, n, limit)
		n = fit
	}
	h := startHarness(t, harnessOptions{loginTimeout: 60 * time.Second})
	addr := h.srv.Addr("orders").String()
	baseline := openFDs(t)
	runtime.GC()
	var before runtime.MemStats
	runtime.ReadMemStats(&before)
	goroutinesBefore := runtime.NumGoroutine()

	// Open the sessions from a bounded pool of workers.
	const workers = 64
	conns := make([]net.Conn, n)
	var (
		next     atomic.Int64
		failures atomic.Int64
		firstErr atomic.Value
		wg       sync.WaitGroup
	)
	began := time.Now()
	for range workers {
		wg.Add(1)
		go func() {
			defer wg.Done()
			for {
				i := int(next.Add(1)) - 1
				if i >= n {
					return
				}
				c, _, err := loginLine(addr)
				if err != nil {
					failures.Add(1)
					firstErr.CompareAndSwap(nil, err)
					continue
				}
				conns[i] = c
			}
		}()
	}
	wg.Wait()
	opened := time.Since(began)
	t.Cleanup(func() {
		for _, c := range conns {
			if c != nil {
				c.Close()
			}
		}
	})
	if f := failures.Load(); f != 0 {
		t.Fatalf("%d of %d sessions failed to open; first error: %v", f, n, firstErr.Load())
	}

	runtime.GC()
	var held runtime.MemStats
	runtime.ReadMemStats(&held)
	open := int64(0)
	for _, st := range h.srv.Stats() {
		open += st.OpenSessions
	}
	if open != int64(n) {
		t.Errorf("open sessions = %d, want %d", open, n)
	}
	// The heap figure includes the test's own client and upstream ends of every session.
	t.Logf("%d idle sessions opened in %v; heap in use grew by %d MiB (%d KiB per session, both "+
		"test ends included), %d goroutines more, %d file descriptors more",
		n, opened.Round(time.Millisecond), (int64(held.HeapInuse)-int64(before.HeapInuse))>>20,
		(int64(held.HeapInuse)-int64(before.HeapInuse))/int64(n)>>10,
		runtime.NumGoroutine()-goroutinesBefore, openFDs(t)-baseline)

	// A new session logs in promptly while the others are held.
	start := time.Now()
	c, _, err := loginLine(addr)
	if err != nil {
		t.Fatalf("new session beside %d idle ones: %v", n, err)
	}
	c.Close()
	if d := time.Since(start); d > 2*time.Second {
		t.Errorf("new session beside %d idle ones took %v to log in", n, d)
	}

	for i, c := range conns {
		c.Close()
		conns[i] = nil
	}
	waitIdleServer(t, h.srv, 60*time.Second)
	if after := waitFDs(t, baseline, 20*time.Second); after > baseline {
		t.Errorf("open file descriptors: %d before, %d after the sessions ended", baseline, after)
	}
}

func waitIdleServer(t *testing.T, srv *Server, limit time.Duration) {
	t.Helper()
	(&core{srv: srv}).waitIdle(t, limit)
}

// slowSource delays fetches of one secret id until its delay passes or ctx ends.
type slowSource struct {
	credsource.Source
	slowID  string
	delay   time.Duration
	started chan struct{}
	once    sync.Once
}

func (s *slowSource) Fetch(ctx context.Context, id string) (credsource.Credentials, error) {
	if id == s.slowID {
		s.once.Do(func() { close(s.started) })
		select {
		case <-time.After(s.delay):
		case <-ctx.Done():
			return credsource.Credentials{}, ctx.Err()
		}
	}
	return s.Source.Fetch(ctx, id)
}

// TestLoadSlowSourceOtherRoute checks that a credential fetch that takes 2 s for one route
// does not hold up logins on another route, with the cache the agent uses in between.
func TestLoadSlowSourceOtherRoute(t *testing.T) {
	const delay = 2 * time.Second
	certs := dbtest.NewCerts(t, t.TempDir())
	up := startLineUpstream(t, certs, "secret")
	creds := credsource.Credentials{Username: "app", Password: "secret"}
	slow := &slowSource{
		Source:  credsource.NewStatic(map[string]credsource.Credentials{"slow": creds, "fast": creds}),
		slowID:  "slow",
		delay:   delay,
		started: make(chan struct{}),
	}
	route := func(name string) Route {
		return Route{Name: name, Protocol: "line", UpstreamHost: "127.0.0.1", UpstreamPort: up.port(),
			SecretID: name, TLS: TLS{CAFile: certs.CAFile}}
	}
	c := startCore(t, []Route{route("slow"), route("fast")}, coreOptions{source: credsource.NewCache(slow, time.Minute)})

	slowDone := make(chan error, 1)
	slowStart := time.Now()
	go func() {
		conn, _, err := loginLine(c.srv.Addr("slow").String())
		if err == nil {
			conn.Close()
		}
		slowDone <- err
	}()
	select {
	case <-slow.started:
	case <-time.After(5 * time.Second):
		t.Fatal("the slow route never fetched its credentials")
	}

	const logins = 10
	var latencies []time.Duration
	for range logins {
		start := time.Now()
		conn, _, err := loginLine(c.srv.Addr("fast").String())
		if err != nil {
			t.Fatalf("fast route: %v", err)
		}
		latencies = append(latencies, time.Since(start))
		conn.Close()
	}
	select {
	case <-slowDone:
		t.Fatal("the slow route finished before the fast logins did, so they were not measured beside it")
	default:
	}
	if err := <-slowDone; err != nil {
		t.Fatalf("slow route: %v", err)
	}
	slowLatency := time.Since(slowStart)
	worst := percentile(latencies, 1)
	t.Logf("fast route logins while the slow fetch was pending: p50 %v, max %v; slow route login %v",
		percentile(latencies, 0.5).Round(time.Microsecond), worst.Round(time.Microsecond), slowLatency.Round(time.Millisecond))
	if worst > delay/4 {
		t.Errorf("slowest fast-route login took %v while the other route's fetch was pending, want under %v", worst, delay/4)
	}
	if slowLatency < delay {
		t.Errorf("slow route logged in after %v, before its fetch delay of %v", slowLatency, delay)
	}
}
