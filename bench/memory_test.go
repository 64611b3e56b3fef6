package bench

import (
	"bufio"
	"context"
	"fmt"
	"io"
	"net"
	"os/exec"
	"strconv"
	"sync"
	"testing"
	"time"

	"github.com/jackc/pgx/v5/pgconn"
)

const (
	// memoryOpenWorkers is how many sessions the memory step opens at the same time.
	memoryOpenWorkers = 32
	// memorySettle is how long the memory step waits after opening the sessions before it
	// reads the agent's RSS, so the login phase's garbage can be collected.
	memorySettle = 5 * time.Second
	// redisDefaultMaxClients is Redis 7's default maxclients.
	redisDefaultMaxClients = 10000
	// redisSpareClients are the Redis clients kept free beyond the memory step's sessions.
	redisSpareClients = 200
)

// openParallel calls open n times from memoryOpenWorkers goroutines and returns the
// closers of the sessions opened, stopping at the first error.
func openParallel(n int, open func() (io.Closer, error)) ([]io.Closer, error) {
	var (
		mu       sync.Mutex
		closers  []io.Closer
		firstErr error
		wg       sync.WaitGroup
	)
	next := make(chan struct{}, n)
	for range n {
		next <- struct{}{}
	}
	close(next)
	for range memoryOpenWorkers {
		wg.Add(1)
		go func() {
			defer wg.Done()
			for range next {
				c, err := open()
				mu.Lock()
				if err != nil {
					if firstErr == nil {
						firstErr = err
					}
					mu.Unlock()
					return
				}
				closers = append(closers, c)
				mu.Unlock()
			}
		}()
	}
	wg.Wait()
	return closers, firstErr
}

func closeAll(closers []io.Closer) {
	for _, c := range closers {
		c.Close()
	}
}

// pgSession adapts a pgconn session to io.Closer.
type pgSession struct{ conn *pgconn.PgConn }

func (s pgSession) Close() error { return s.conn.Close(context.Background()) }

// openRedisSession connects to addr, sends PING and waits for +PONG, so that the agent
// has logged in upstream and the session is in its splice.
func openRedisSession(addr string) (io.Closer, error) {
	c, err := net.DialTimeout("tcp", addr, 30*time.Second)
	if err != nil {
		return nil, err
	}
	c.SetDeadline(time.Now().Add(60 * time.Second))
	if _, err := io.WriteString(c, "PING\r\n"); err != nil {
		c.Close()
		return nil, err
	}
	line, err := bufio.NewReaderSize(c, 64).ReadString('\n')
	if err != nil || line != "+PONG\r\n" {
		c.Close()
		return nil, fmt.Errorf("redis session: reply %q: %v", line, err)
	}
	c.SetDeadline(time.Time{})
	return c, nil
}

// idleSessionMemory opens n sessions with open, waits memorySettle, and returns the
// agent's RSS before and after in KiB and the time it took to open them.
func idleSessionMemory(t *testing.T, e *env, n int, open func() (io.Closer, error)) (before, after int64, took time.Duration) {
	t.Helper()
	pid := e.agent.cmd.Process.Pid
	time.Sleep(memorySettle)
	before, err := rssKiB(pid)
	if err != nil {
		t.Fatal(err)
	}
	start := time.Now()
	closers, err := openParallel(n, open)
	took = time.Since(start)
	defer closeAll(closers)
	if err != nil {
		t.Fatalf("opened %d of %d sessions: %v", len(closers), n, err)
	}
	time.Sleep(memorySettle)
	after, err = rssKiB(pid)
	if err != nil {
		t.Fatal(err)
	}
	return before, after, took
}

func runMemory(t *testing.T, e *env, rep *report) {
	cfg := e.cfg
	rep.section("Agent memory per idle session")
	rep.line("The harness opens the sessions through the agent with %d parallel workers, waits %v, and", memoryOpenWorkers, memorySettle)
	rep.line("reads VmRSS of the agent process; per session is (RSS after − RSS before) / sessions.")
	rep.line("RLIMIT_NOFILE is %d for the harness and every process it starts (the agent holds two", cfg.fileLimit)
	rep.line("descriptors per session, so this bounds the session count);")
	rep.line("PostgreSQL runs with max_connections = %d, Redis with maxclients of at least %d.", cfg.maxConnections, redisDefaultMaxClients)
	rep.line("")

	// Redis accepts 10000 clients by default; beyond that CONFIG SET maxclients must fit
	// under the server's own file limit.
	if maxClients := cfg.memRedis + redisSpareClients; maxClients > redisDefaultMaxClients {
		out, err := exec.Command("redis-cli", "--tls", "--cacert", e.redis.Certs.CAFile, "-h", "127.0.0.1",
			"-p", strconv.Itoa(e.redis.Port), "--user", "app", "--pass", "secret", "--no-auth-warning",
			"CONFIG", "SET", "maxclients", strconv.Itoa(maxClients)).CombinedOutput()
		if err != nil || string(out) != "OK\n" {
			t.Fatalf("redis CONFIG SET maxclients %d: %v: %s", maxClients, err, out)
		}
	}

	rows := [][]string{}
	pgCfg, err := pgconn.ParseConfig(e.pgAgent())
	if err != nil {
		t.Fatal(err)
	}
	before, after, took := idleSessionMemory(t, e, cfg.memPostgres, func() (io.Closer, error) {
		conn, err := pgconn.ConnectConfig(t.Context(), pgCfg)
		if err != nil {
			return nil, err
		}
		return pgSession{conn}, nil
	})
	rows = append(rows, memoryRow("PostgreSQL", cfg.memPostgres, before, after, took))

	redisAddr := "127.0.0.1:" + strconv.Itoa(e.agent.redisPort)
	before, after, took = idleSessionMemory(t, e, cfg.memRedis, func() (io.Closer, error) {
		return openRedisSession(redisAddr)
	})
	rows = append(rows, memoryRow("Redis", cfg.memRedis, before, after, took))
	rep.table([]string{"protocol", "idle sessions", "RSS before MiB", "RSS after MiB", "KiB per session", "target", "verdict", "time to open"}, rows)
}

func memoryRow(protocol string, n int, before, after int64, took time.Duration) []string {
	per := float64(after-before) / float64(n)
	return []string{protocol, strconv.Itoa(n), fmt.Sprintf("%.1f", float64(before)/1024), fmt.Sprintf("%.1f", float64(after)/1024),
		fmt.Sprintf("%.1f", per), "≤ 64", verdict(per, 64, false), took.Round(100 * time.Millisecond).String()}
}
