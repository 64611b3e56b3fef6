package bench

import (
	"context"
	"fmt"
	"io"
	"os"
	"os/exec"
	"regexp"
	"slices"
	"strconv"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/jackc/pgx/v5/pgconn"
)

// pgMode is one way of reaching PostgreSQL.
type pgMode struct {
	name    string
	connstr func(*env) string
}

var (
	modeDirect    = pgMode{"direct", (*env).pgDirect}
	modeAgent     = pgMode{"agent", (*env).pgAgent}
	modePgBouncer = pgMode{"pgbouncer", (*env).pgBouncer}
)

// rotate returns modes starting at round's position, so no mode always runs first.
func rotate[T any](modes []T, round int) []T {
	k := round % len(modes)
	return append(append([]T(nil), modes[k:]...), modes[:k]...)
}

var tpsPattern = regexp.MustCompile(`(?m)^tps = ([0-9.]+)`)

// pgbench runs pgbench with args against connstr and returns the transactions per second.
func pgbench(connstr string, args ...string) (float64, error) {
	cmd := exec.Command("pgbench", append(args, connstr)...)
	cmd.Env = append(os.Environ(), "PGCONNECT_TIMEOUT=10")
	out, err := cmd.CombinedOutput()
	if err != nil {
		return 0, fmt.Errorf("pgbench %s: %v\n%s", strings.Join(args, " "), err, out)
	}
	m := tpsPattern.FindSubmatch(out)
	if m == nil {
		return 0, fmt.Errorf("pgbench %s: no tps line in its output:\n%s", strings.Join(args, " "), out)
	}
	return strconv.ParseFloat(string(m[1]), 64)
}

func runPgbench(t *testing.T, e *env, rep *report) {
	cfg := e.cfg
	modes := []pgMode{modeDirect, modeAgent, modePgBouncer}
	seconds := strconv.Itoa(int(cfg.pgbenchTime.Seconds()))
	variants := []struct {
		title string
		args  []string
	}{
		{"pgbench -S (select only, 8 clients)", []string{"-n", "-S", "-c", "8", "-j", "2", "-T", seconds}},
		{"pgbench -S -C (a new connection per transaction, 8 clients)", []string{"-n", "-S", "-C", "-c", "8", "-j", "2", "-T", seconds}},
	}
	for _, variant := range variants {
		rep.section(variant.title)
		rep.line("Command: `pgbench %s CONNSTR`, scale %d, %d rounds.", strings.Join(variant.args, " "), cfg.pgbenchScale, cfg.rounds)
		rep.line("")
		tps, cpu := map[string]sample{}, map[string]sample{}
		proxyPIDs := map[string]int{"agent": e.agent.cmd.Process.Pid, "pgbouncer": e.bouncerPID}
		for round := range cfg.rounds {
			for _, m := range rotate(modes, round) {
				meter := startCPUMeter(proxyPIDs[m.name])
				value, err := pgbench(m.connstr(e), variant.args...)
				if err != nil {
					t.Fatalf("%s: %v", m.name, err)
				}
				tps[m.name] = append(tps[m.name], value)
				if proxyPIDs[m.name] != 0 {
					cpu[m.name] = append(cpu[m.name], meter.perOp(value*cfg.pgbenchTime.Seconds()))
				}
				t.Logf("%s round %d %s: %.0f tps (load %s)", variant.title, round, m.name, value, loadAverage())
			}
		}
		rows := [][]string{}
		for _, m := range modes {
			rows = append(rows, []string{m.name, tps[m.name].spread("%.0f"), cpu[m.name].spread("%.0f")})
		}
		rep.table([]string{"path", "TPS", "proxy CPU µs per transaction"}, rows)
		agentVsDirect := ratios(tps["agent"], tps["direct"])
		agentVsBouncer := ratios(tps["agent"], tps["pgbouncer"])
		if slices.Contains(variant.args, "-C") {
			rep.table([]string{"ratio", "value", "target", "verdict"}, [][]string{
				{"agent / direct", agentVsDirect.spread("%.2f"), "≥ 1.00", verdict(agentVsDirect.median(), 1.0, true)},
				{"agent / pgbouncer", agentVsBouncer.spread("%.2f"), "none", ""},
			})
		} else {
			rep.table([]string{"ratio", "value", "target", "verdict"}, [][]string{
				{"agent / direct", agentVsDirect.spread("%.2f"), "≥ 0.90", verdict(agentVsDirect.median(), 0.90, true)},
				{"agent / pgbouncer", agentVsBouncer.spread("%.2f"), "≥ 1.00", verdict(agentVsBouncer.median(), 1.0, true)},
			})
		}
	}
}

// connectOnce opens a session with cfg and closes it, returning the time until the
// session was ready for queries.
func connectOnce(ctx context.Context, cfg *pgconn.Config) (time.Duration, error) {
	start := time.Now()
	conn, err := pgconn.ConnectConfig(ctx, cfg)
	elapsed := time.Since(start)
	if err != nil {
		return 0, err
	}
	conn.Close(ctx)
	return elapsed, nil
}

// dialLatencies runs total connects from parallel workers and returns each one's latency.
func dialLatencies(ctx context.Context, cfg *pgconn.Config, parallel, total int) ([]time.Duration, error) {
	var (
		mu        sync.Mutex
		latencies = make([]time.Duration, 0, total)
		firstErr  error
		wg        sync.WaitGroup
	)
	next := make(chan struct{}, total)
	for range total {
		next <- struct{}{}
	}
	close(next)
	for range parallel {
		wg.Add(1)
		go func() {
			defer wg.Done()
			for range next {
				d, err := connectOnce(ctx, cfg)
				mu.Lock()
				if err != nil && firstErr == nil {
					firstErr = err
				}
				if err == nil {
					latencies = append(latencies, d)
				}
				mu.Unlock()
			}
		}()
	}
	wg.Wait()
	return latencies, firstErr
}

func runConnectLatency(t *testing.T, e *env, rep *report) {
	cfg := e.cfg
	rep.section("Connect latency (pgx, connect until ReadyForQuery, then close)")
	rep.line("Each level runs %d connects per path and round from that many parallel workers;", cfg.connectDials)
	rep.line("direct means TLS verify-full and SCRAM-SHA-256 from pgx, agent means plaintext to the agent.")
	rep.line("")
	modes := []pgMode{modeDirect, modeAgent}
	rows := [][]string{}
	for _, parallel := range []int{1, 10, 100} {
		p50, p99 := map[string]sample{}, map[string]sample{}
		for round := range cfg.rounds {
			for _, m := range rotate(modes, round) {
				pcfg, err := pgconn.ParseConfig(m.connstr(e))
				if err != nil {
					t.Fatal(err)
				}
				lat, err := dialLatencies(t.Context(), pcfg, parallel, cfg.connectDials)
				if err != nil {
					t.Fatalf("%s with %d parallel dials: %v", m.name, parallel, err)
				}
				p50[m.name] = append(p50[m.name], percentile(lat, 50))
				p99[m.name] = append(p99[m.name], percentile(lat, 99))
			}
		}
		ratio := ratios(p99["agent"], p99["direct"])
		target, v := "", ""
		if parallel == 100 {
			target, v = "≤ 1.20", verdict(ratio.median(), 1.2, false)
		}
		rows = append(rows, []string{strconv.Itoa(parallel),
			p50["direct"].spread("%.2f"), p99["direct"].spread("%.2f"),
			p50["agent"].spread("%.2f"), p99["agent"].spread("%.2f"),
			ratio.spread("%.2f"), target, v})
		t.Logf("connect %d parallel: direct p99 %v, agent p99 %v", parallel, p99["direct"], p99["agent"])
	}
	rep.table([]string{"parallel dials", "direct p50 ms", "direct p99 ms", "agent p50 ms", "agent p99 ms",
		"p99 agent / direct", "target", "verdict"}, rows)
}

// copyLine is one row of the COPY step: 249 bytes of text.
var copyLine = []byte("4711\t" + strings.Repeat("x", 243) + "\n")

// rowReader produces whole copyLine rows until at least limit bytes were read.
type rowReader struct {
	limit, done int64
}

func (r *rowReader) Read(p []byte) (int, error) {
	if r.done >= r.limit {
		return 0, io.EOF
	}
	n := 0
	for len(p)-n >= len(copyLine) && r.done < r.limit {
		n += copy(p[n:], copyLine)
		r.done += int64(len(copyLine))
	}
	if n == 0 {
		return 0, io.ErrShortBuffer
	}
	return n, nil
}

// countingWriter discards what it gets and counts it.
type countingWriter struct{ n int64 }

func (w *countingWriter) Write(p []byte) (int, error) {
	w.n += int64(len(p))
	return len(p), nil
}

func runCopy(t *testing.T, e *env, rep *report) {
	cfg := e.cfg
	ctx := t.Context()
	setup, err := pgconn.Connect(ctx, e.pgDirect())
	if err != nil {
		t.Fatal(err)
	}
	defer setup.Close(ctx)
	if err := setup.Exec(ctx, "DROP TABLE IF EXISTS copybench; CREATE UNLOGGED TABLE copybench (id int, payload text)").Close(); err != nil {
		t.Fatal(err)
	}

	rep.section(fmt.Sprintf("COPY of %d MiB in and out", cfg.copyBytes>>20))
	rep.line("COPY copybench FROM STDIN into an unlogged table, then COPY copybench TO STDOUT, with pgx;")
	rep.line("the table is truncated before each COPY in. MB/s are 10^6 bytes of COPY data per second.")
	rep.line("")
	modes := []pgMode{modeDirect, modeAgent}
	in, out := map[string]sample{}, map[string]sample{}
	for round := range cfg.rounds {
		for _, m := range rotate(modes, round) {
			conn, err := pgconn.Connect(ctx, m.connstr(e))
			if err != nil {
				t.Fatalf("%s: %v", m.name, err)
			}
			if err := conn.Exec(ctx, "TRUNCATE copybench").Close(); err != nil {
				t.Fatal(err)
			}
			meter := startCPUMeter(e.agent.cmd.Process.Pid)
			start := time.Now()
			src := &rowReader{limit: cfg.copyBytes}
			if _, err := conn.CopyFrom(ctx, src, "COPY copybench FROM STDIN"); err != nil {
				t.Fatalf("%s: copy in: %v", m.name, err)
			}
			in[m.name] = append(in[m.name], float64(src.done)/time.Since(start).Seconds()/1e6)
			if m.name == "agent" {
				in["agent cpu"] = append(in["agent cpu"], meter.perOp(float64(src.done)/1e6))
			}

			meter = startCPUMeter(e.agent.cmd.Process.Pid)
			start = time.Now()
			dst := &countingWriter{}
			if _, err := conn.CopyTo(ctx, dst, "COPY copybench TO STDOUT"); err != nil {
				t.Fatalf("%s: copy out: %v", m.name, err)
			}
			if dst.n != src.done {
				t.Fatalf("%s: copy out returned %d bytes, want %d", m.name, dst.n, src.done)
			}
			out[m.name] = append(out[m.name], float64(dst.n)/time.Since(start).Seconds()/1e6)
			if m.name == "agent" {
				out["agent cpu"] = append(out["agent cpu"], meter.perOp(float64(dst.n)/1e6))
			}
			conn.Close(ctx)
			t.Logf("copy round %d %s: in %.0f MB/s, out %.0f MB/s", round, m.name, in[m.name][round], out[m.name][round])
		}
	}
	inRatio, outRatio := ratios(in["agent"], in["direct"]), ratios(out["agent"], out["direct"])
	rep.table([]string{"direction", "direct MB/s", "agent MB/s", "agent / direct", "target", "verdict", "agent CPU µs per MB"}, [][]string{
		{"in (FROM STDIN)", in["direct"].spread("%.0f"), in["agent"].spread("%.0f"), inRatio.spread("%.2f"), "≥ 0.95",
			verdict(inRatio.median(), 0.95, true), in["agent cpu"].spread("%.0f")},
		{"out (TO STDOUT)", out["direct"].spread("%.0f"), out["agent"].spread("%.0f"), outRatio.spread("%.2f"), "≥ 0.95",
			verdict(outRatio.median(), 0.95, true), out["agent cpu"].spread("%.0f")},
	})
	if err := setup.Exec(ctx, "DROP TABLE copybench").Close(); err != nil {
		t.Fatal(err)
	}
}
