package bench

import (
	"context"
	"database/sql"
	"strconv"
	"sync"
	"testing"
	"time"

	"github.com/go-sql-driver/mysql"
)

// mysqlLoopWorkers is the number of goroutines that connect and query at the same time.
const mysqlLoopWorkers = 4

// mysqlLoop connects, runs SELECT 1 and disconnects in a loop from mysqlLoopWorkers
// goroutines for d, and returns the loops per second and each loop's latency.
func mysqlLoop(ctx context.Context, cfg *mysql.Config, d time.Duration) (float64, []time.Duration, error) {
	connector, err := mysql.NewConnector(cfg)
	if err != nil {
		return 0, nil, err
	}
	db := sql.OpenDB(connector)
	defer db.Close()
	// No idle connections: every loop opens a new session and closes it.
	db.SetMaxIdleConns(0)

	var (
		mu        sync.Mutex
		latencies []time.Duration
		firstErr  error
		wg        sync.WaitGroup
	)
	start := time.Now()
	deadline := start.Add(d)
	for range mysqlLoopWorkers {
		wg.Add(1)
		go func() {
			defer wg.Done()
			for time.Now().Before(deadline) {
				t0 := time.Now()
				var result int
				err := db.QueryRowContext(ctx, "SELECT 1").Scan(&result)
				elapsed := time.Since(t0)
				mu.Lock()
				if err != nil {
					if firstErr == nil {
						firstErr = err
					}
					mu.Unlock()
					return
				}
				latencies = append(latencies, elapsed)
				mu.Unlock()
			}
		}()
	}
	wg.Wait()
	return float64(len(latencies)) / time.Since(start).Seconds(), latencies, firstErr
}

func runMySQLLoop(t *testing.T, e *env, rep *report) {
	if e.maria == nil {
		t.Skip("MariaDB not started")
	}
	cfg := e.cfg
	rep.section("MySQL connect-and-query loop (go-sql-driver/mysql against MariaDB)")
	rep.line("%d goroutines each connect, run SELECT 1 and disconnect, for %v per path and round.", mysqlLoopWorkers, cfg.mysqlTime)
	rep.line("Direct logs in as `native` (mysql_native_password) over TLS verified against the test CA;")
	rep.line("through the agent the driver connects in plaintext with no password.")
	rep.line("")

	direct := mysql.NewConfig()
	direct.User, direct.Passwd = "native", "secret"
	direct.Net, direct.Addr, direct.DBName = "tcp", e.maria.Addr(), "appdb"
	direct.TLS = e.maria.Certs.ClientTLS("127.0.0.1")

	agent := mysql.NewConfig()
	agent.User = "app"
	agent.Net, agent.Addr, agent.DBName = "tcp", "127.0.0.1:"+strconv.Itoa(e.agent.mysqlPort), "appdb"

	type path struct {
		name string
		cfg  *mysql.Config
	}
	paths := []path{{"direct", direct}, {"agent", agent}}
	rate, p50, p99 := map[string]sample{}, map[string]sample{}, map[string]sample{}
	for round := range cfg.rounds {
		for _, p := range rotate(paths, round) {
			r, lat, err := mysqlLoop(t.Context(), p.cfg, cfg.mysqlTime)
			if err != nil {
				t.Fatalf("%s: %v", p.name, err)
			}
			rate[p.name] = append(rate[p.name], r)
			p50[p.name] = append(p50[p.name], percentile(lat, 50))
			p99[p.name] = append(p99[p.name], percentile(lat, 99))
			t.Logf("mysql round %d %s: %.0f loops/s", round, p.name, r)
		}
	}
	rows := [][]string{}
	for _, p := range paths {
		rows = append(rows, []string{p.name, rate[p.name].spread("%.0f"), p50[p.name].spread("%.2f"), p99[p.name].spread("%.2f")})
	}
	rep.table([]string{"path", "loops/s", "p50 ms", "p99 ms"}, rows)
	rep.line("Agent / direct loops per second: %s.", ratios(rate["agent"], rate["direct"]).spread("%.2f"))
}
