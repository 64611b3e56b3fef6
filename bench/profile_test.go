package bench

import (
	"context"
	"fmt"
	"io"
	"log/slog"
	"os"
	"os/exec"
	"path/filepath"
	"runtime"
	"runtime/pprof"
	"strconv"
	"strings"
	"testing"
	"time"

	"github.com/jackc/pgx/v5/pgconn"

	"github.com/knoxcall/dbproxy/credsource"
	"github.com/knoxcall/dbproxy/internal/dbtest"
	"github.com/knoxcall/dbproxy/knoxproxy"
)

// inProcessAgent runs the postgres and redis routes of the agent inside the test binary, so
// that runtime/pprof can profile them. It logs at Info to a file, as the agent does.
func inProcessAgent(t *testing.T, e *env) (pgPort, redisPort int) {
	t.Helper()
	logFile, err := os.Create(filepath.Join(e.dir, "inprocess-agent.log"))
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { logFile.Close() })
	pgPort, redisPort = dbtest.FreePort(t), dbtest.FreePort(t)

	routes := []knoxproxy.Route{
		{Name: "pg", Protocol: "postgres", LocalPort: pgPort, UpstreamHost: "127.0.0.1", UpstreamPort: e.pg.Port,
			SecretID: "sec_pg", TLS: knoxproxy.TLS{CAFile: e.pg.Certs.CAFile}},
		{Name: "cache", Protocol: "redis", LocalPort: redisPort, UpstreamHost: "127.0.0.1", UpstreamPort: e.redis.Port,
			SecretID: "sec_redis", TLS: knoxproxy.TLS{CAFile: e.redis.Certs.CAFile}},
	}
	secrets := credsource.NewStatic(map[string]credsource.Credentials{
		"sec_pg":    {Username: "app", Password: "secret"},
		"sec_redis": {Username: "app", Password: "secret"},
	})
	srv, err := knoxproxy.New(knoxproxy.Config{
		Routes:          routes,
		Credentials:     credsource.NewCache(secrets, time.Minute),
		Logger:          slog.New(slog.NewTextHandler(logFile, nil)),
		ShutdownTimeout: time.Second,
	})
	if err != nil {
		t.Fatal(err)
	}

	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan error, 1)
	go func() { done <- srv.Serve(ctx) }()
	t.Cleanup(func() {
		cancel()
		<-done
	})
	select {
	case <-srv.Ready():
	case err := <-done:
		t.Fatalf("in-process agent: %v", err)
	}
	return pgPort, redisPort
}

// profileCPU writes a CPU profile of workload to dir/name.pprof and returns the top
// functions by cumulative and flat time, as go tool pprof prints them.
func profileCPU(t *testing.T, dir, name string, workload func() error) string {
	t.Helper()
	path := filepath.Join(dir, name+".pprof")
	f, err := os.Create(path)
	if err != nil {
		t.Fatal(err)
	}
	if err := pprof.StartCPUProfile(f); err != nil {
		t.Fatal(err)
	}
	werr := workload()
	pprof.StopCPUProfile()
	f.Close()
	if werr != nil {
		t.Fatalf("%s: %v", name, werr)
	}
	return pprofTop(t, path, "-top", "-nodecount=25")
}

func pprofTop(t *testing.T, args ...string) string {
	t.Helper()
	binary, err := os.Executable()
	if err != nil {
		t.Fatal(err)
	}
	path := args[0]
	cmdArgs := append([]string{"tool", "pprof"}, args[1:]...)
	cmdArgs = append(cmdArgs, binary, path)
	out, err := exec.Command("go", cmdArgs...).CombinedOutput()
	if err != nil {
		return fmt.Sprintf("go tool pprof failed: %v\n%s", err, out)
	}
	return string(out)
}

func runProfile(t *testing.T, e *env, rep *report) {
	cfg := e.cfg
	dir := filepath.Join("results", "profiles")
	if cfg.mode == "smoke" {
		dir = t.TempDir()
	}
	if err := os.MkdirAll(dir, 0o755); err != nil {
		t.Fatal(err)
	}
	pgPort, redisPort := inProcessAgent(t, e)
	agentConn := fmt.Sprintf("host=127.0.0.1 port=%d dbname=appdb user=app sslmode=disable", pgPort)
	seconds := strconv.Itoa(int(cfg.profileTime.Seconds()))

	rep.section("Profiles of the agent's routes run in-process")
	rep.line("The test binary serves the postgres and redis routes with knoxproxy.Serve and records")
	rep.line("a CPU profile while each workload runs; profiles are in %s.", dir)
	rep.line("")

	workloads := []struct {
		name string
		run  func() error
	}{
		{"cpu-pgbench-S", func() error {
			_, err := pgbench(agentConn, "-n", "-S", "-c", "8", "-j", "2", "-T", seconds)
			return err
		}},
		{"cpu-pgbench-C", func() error {
			_, err := pgbench(agentConn, "-n", "-S", "-C", "-c", "8", "-j", "2", "-T", seconds)
			return err
		}},
		{"cpu-redis-get", func() error {
			_, _, err := redisBenchmark("-h", "127.0.0.1", "-p", strconv.Itoa(redisPort), "-t", "get", "-c", "50",
				"-n", strconv.Itoa(cfg.redisRequests), "--csv")
			return err
		}},
		{"cpu-redis-get-P16", func() error {
			_, _, err := redisBenchmark("-h", "127.0.0.1", "-p", strconv.Itoa(redisPort), "-t", "get", "-c", "50",
				"-n", strconv.Itoa(10*cfg.redisRequests), "-P", "16", "--csv")
			return err
		}},
		{"cpu-copy-in", func() error { return copyIn(e, agentConn, cfg.copyBytes/4) }},
		{"cpu-copy-out", func() error { return copyOut(agentConn) }},
	}
	for _, w := range workloads {
		if err := os.MkdirAll(dir, 0o755); err != nil {
			t.Fatal(err)
		}
		top := profileCPU(t, dir, w.name, w.run)
		rep.line("### %s", w.name)
		rep.line("")
		rep.line("```")
		rep.line("%s", trimPprof(top, 30))
		rep.line("```")
		rep.line("")
	}

	// Allocation profile: bytes allocated over a pgbench -S run, by function.
	runtime.MemProfileRate = 64 << 10
	runtime.GC()
	if _, err := pgbench(agentConn, "-n", "-S", "-c", "8", "-j", "2", "-T", seconds); err != nil {
		t.Fatal(err)
	}
	heapPath := filepath.Join(dir, "allocs-pgbench-S.pprof")
	f, err := os.Create(heapPath)
	if err != nil {
		t.Fatal(err)
	}
	if err := pprof.Lookup("allocs").WriteTo(f, 0); err != nil {
		t.Fatal(err)
	}
	f.Close()
	rep.line("### allocs-pgbench-S (alloc_space since the test binary started)")
	rep.line("")
	rep.line("```")
	rep.line("%s", trimPprof(pprofTop(t, heapPath, "-top", "-nodecount=20", "-sample_index=alloc_space"), 26))
	rep.line("```")
	rep.line("")

	profileIdleSessions(t, e, rep, dir, "postgres", func() (io.Closer, error) {
		conn, err := pgconn.Connect(t.Context(), agentConn)
		if err != nil {
			return nil, err
		}
		return pgSession{conn}, nil
	})
	redisAddr := "127.0.0.1:" + strconv.Itoa(redisPort)
	profileIdleSessions(t, e, rep, dir, "redis", func() (io.Closer, error) { return openRedisSession(redisAddr) })
}

// profileIdleSessions opens the settings' profileSessions sessions to the in-process agent,
// and reports the goroutines and live heap per session with the heap profile's top entries.
func profileIdleSessions(t *testing.T, e *env, rep *report, dir, protocol string, open func() (io.Closer, error)) {
	t.Helper()
	sessions := e.cfg.profileSessions
	runtime.MemProfileRate = 512
	runtime.GC()
	var before runtime.MemStats
	runtime.ReadMemStats(&before)
	goroutines := runtime.NumGoroutine()

	closers, err := openParallel(sessions, open)
	defer closeAll(closers)
	if err != nil {
		t.Fatalf("%s: opened %d of %d sessions: %v", protocol, len(closers), sessions, err)
	}
	time.Sleep(time.Second)
	runtime.GC()
	var after runtime.MemStats
	runtime.ReadMemStats(&after)
	perSession := func(a, b uint64) float64 { return (float64(a) - float64(b)) / float64(sessions) / 1024 }

	path := filepath.Join(dir, "heap-idle-"+protocol+".pprof")
	f, err := os.Create(path)
	if err != nil {
		t.Fatal(err)
	}
	if err := pprof.Lookup("heap").WriteTo(f, 0); err != nil {
		t.Fatal(err)
	}
	f.Close()

	rep.line("### Idle %s sessions in-process (%d sessions; the client ends live in the same process)", protocol, sessions)
	rep.line("")
	rep.line("Per session: %.1f goroutines, %.1f KiB of live heap, %.1f KiB of goroutine stacks.",
		float64(runtime.NumGoroutine()-goroutines)/float64(sessions),
		perSession(after.HeapInuse, before.HeapInuse), perSession(after.StackInuse, before.StackInuse))
	rep.line("")
	rep.line("```")
	rep.line("%s", trimPprof(pprofTop(t, path, "-top", "-nodecount=15", "-sample_index=inuse_space"), 22))
	rep.line("```")
	rep.line("")
}

// copyIn truncates copybench and copies n bytes of rows into it through connstr.
func copyIn(e *env, connstr string, n int64) error {
	ctx := context.Background()
	conn, err := pgconn.Connect(ctx, connstr)
	if err != nil {
		return err
	}
	defer conn.Close(ctx)
	if err := conn.Exec(ctx, "CREATE UNLOGGED TABLE IF NOT EXISTS copybench (id int, payload text); TRUNCATE copybench").Close(); err != nil {
		return err
	}
	_, err = conn.CopyFrom(ctx, &rowReader{limit: n}, "COPY copybench FROM STDIN")
	return err
}

// copyOut copies the rows of copybench out through connstr.
func copyOut(connstr string) error {
	ctx := context.Background()
	conn, err := pgconn.Connect(ctx, connstr)
	if err != nil {
		return err
	}
	defer conn.Close(ctx)
	_, err = conn.CopyTo(ctx, io.Discard, "COPY copybench TO STDOUT")
	return err
}

// trimPprof keeps the first n lines of go tool pprof's output.
func trimPprof(out string, n int) string {
	lines := strings.Split(strings.TrimSpace(out), "\n")
	if len(lines) > n {
		lines = lines[:n]
	}
	return strings.Join(lines, "\n")
}
