package bench

import (
	"encoding/csv"
	"fmt"
	"os/exec"
	"strconv"
	"strings"
	"testing"
	"time"
)

// redisBenchmark runs redis-benchmark and returns the requests per second of each test and
// the CPU time redis-benchmark used.
func redisBenchmark(args ...string) (map[string]float64, time.Duration, error) {
	cmd := exec.Command("redis-benchmark", args...)
	out, err := cmd.CombinedOutput()
	if err != nil {
		return nil, 0, fmt.Errorf("redis-benchmark %s: %v\n%s", strings.Join(args, " "), err, out)
	}
	clientCPU := cmd.ProcessState.UserTime() + cmd.ProcessState.SystemTime()
	// --csv prints a header line, then "TEST","RPS",... per test.
	records, err := csv.NewReader(strings.NewReader(string(out))).ReadAll()
	if err != nil {
		return nil, 0, fmt.Errorf("redis-benchmark output: %v\n%s", err, out)
	}
	rps := map[string]float64{}
	for _, rec := range records {
		if len(rec) < 2 {
			continue
		}
		if v, err := strconv.ParseFloat(rec[1], 64); err == nil {
			rps[rec[0]] = v
		}
	}
	if len(rps) == 0 {
		return nil, 0, fmt.Errorf("redis-benchmark printed no results:\n%s", out)
	}
	return rps, clientCPU, nil
}

func runRedisBenchmark(t *testing.T, e *env, rep *report) {
	cfg := e.cfg
	rep.section("redis-benchmark GET and SET")
	rep.line("`redis-benchmark -t get,set -c 50 -n N --csv`: direct adds `--tls --cacert CA --user app -a PASSWORD`;")
	rep.line("through the agent it connects in plaintext with no password. N is %d, and %d with -P 16.", cfg.redisRequests, 10*cfg.redisRequests)
	rep.line("")
	type path struct {
		name string
		args []string
	}
	paths := []path{
		{"direct", []string{"-h", "127.0.0.1", "-p", strconv.Itoa(e.redis.Port), "--tls", "--cacert", e.redis.Certs.CAFile,
			"--user", "app", "-a", "secret"}},
		{"agent", []string{"-h", "127.0.0.1", "-p", strconv.Itoa(e.agent.redisPort)}},
	}

	rows, cpuRows := [][]string{}, [][]string{}
	for _, pipeline := range []int{1, 16} {
		n := cfg.redisRequests
		if pipeline > 1 {
			n *= 10
		}
		results := map[string]sample{}
		for round := range cfg.rounds {
			for _, p := range rotate(paths, round) {
				agentCPU, serverCPU := startCPUMeter(e.agent.cmd.Process.Pid), startCPUMeter(e.redisPID())
				args := append(append([]string(nil), p.args...), "-t", "get,set", "-c", "50", "-n", strconv.Itoa(n),
					"-P", strconv.Itoa(pipeline), "--csv")
				rps, clientCPU, err := redisBenchmark(args...)
				if err != nil {
					t.Fatalf("%s: %v", p.name, err)
				}
				for _, test := range []string{"SET", "GET"} {
					results[p.name+" "+test] = append(results[p.name+" "+test], rps[test])
				}
				// Both tests run n requests each.
				results[p.name+" server cpu"] = append(results[p.name+" server cpu"], serverCPU.perOp(float64(2*n)))
				results[p.name+" client cpu"] = append(results[p.name+" client cpu"], float64(clientCPU)/float64(time.Microsecond)/float64(2*n))
				if p.name == "agent" {
					results["agent cpu"] = append(results["agent cpu"], agentCPU.perOp(float64(2*n)))
				}
				t.Logf("redis -P %d round %d %s: %v", pipeline, round, p.name, rps)
			}
		}
		for _, test := range []string{"GET", "SET"} {
			ratio := ratios(results["agent "+test], results["direct "+test])
			rows = append(rows, []string{test, strconv.Itoa(pipeline),
				results["direct "+test].spread("%.0f"), results["agent "+test].spread("%.0f"),
				ratio.spread("%.2f"), "≥ 0.90", verdict(ratio.median(), 0.90, true)})
		}
		cpuRows = append(cpuRows, []string{strconv.Itoa(pipeline),
			results["direct client cpu"].spread("%.1f"), results["direct server cpu"].spread("%.1f"),
			results["agent client cpu"].spread("%.1f"), results["agent server cpu"].spread("%.1f"),
			results["agent cpu"].spread("%.1f")})
	}
	rep.table([]string{"test", "pipeline (-P)", "direct req/s", "agent req/s", "agent / direct", "target", "verdict"}, rows)
	rep.line("CPU time per request (GET and SET together), in microseconds:")
	rep.line("")
	rep.table([]string{"pipeline (-P)", "redis-benchmark, direct", "redis-server, direct",
		"redis-benchmark, via agent", "redis-server, via agent", "agent"}, cpuRows)
}
