package bench

import (
	"flag"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"runtime"
	"strings"
	"syscall"
	"testing"
	"time"
)

var (
	modeFlag   = flag.String("bench.mode", os.Getenv("DBPROXY_BENCH"), "harness run: smoke (a few seconds per step) or full; empty skips TestHarness")
	outFlag    = flag.String("bench.out", "", "file for the Markdown results; empty means results/full.md for a full run and a file in the temp dir for a smoke run")
	roundsFlag = flag.Int("bench.rounds", 0, "rounds of each interleaved comparison; zero means the mode's default")
	agentEnv   = flag.String("bench.agent-env", "", "space-separated NAME=VALUE pairs added to the agent's environment, such as GOMAXPROCS=1")
	onlyFlag   = flag.String("bench.only", "", "comma-separated steps to run (pgbench, connect, copy, redis, mysql, memory, profile); empty runs all")
)

// settings are the sizes of one harness run.
type settings struct {
	mode            string
	rounds          int
	pgbenchTime     time.Duration
	pgbenchScale    int
	connectDials    int // connects per concurrency level and round
	copyBytes       int64
	redisRequests   int // per test without pipelining; 10 times as many with -P 16
	mysqlTime       time.Duration
	memPostgres     int // idle PostgreSQL sessions in the memory step
	memRedis        int // idle Redis sessions in the memory step
	profileTime     time.Duration
	profileSessions int // idle sessions per protocol in the profile step's heap profile
	maxConnections  int // PostgreSQL max_connections
	fileLimit       uint64
}

func settingsFor(mode string) (settings, error) {
	switch mode {
	case "smoke":
		return settings{mode: mode, rounds: 1, pgbenchTime: 2 * time.Second, pgbenchScale: 1,
			connectDials: 100, copyBytes: 16 << 20, redisRequests: 5000, mysqlTime: 2 * time.Second,
			memPostgres: 50, memRedis: 200, profileTime: 3 * time.Second, profileSessions: 50, maxConnections: 300}, nil
	case "full":
		// 2,000 PostgreSQL backends take about 4 GiB here; 10,000 would not fit with the
		// other work on a 24 GiB machine, so the 10,000-session figure comes from Redis.
		return settings{mode: mode, rounds: 3, pgbenchTime: 20 * time.Second, pgbenchScale: 10,
			connectDials: 600, copyBytes: 1 << 30, redisRequests: 200000, mysqlTime: 10 * time.Second,
			memPostgres: 2000, memRedis: 10000, profileTime: 15 * time.Second, profileSessions: 500, maxConnections: 2200}, nil
	}
	return settings{}, fmt.Errorf("-bench.mode %q: want smoke or full", mode)
}

func (s settings) wants(step string) bool {
	if *onlyFlag == "" {
		return true
	}
	for _, name := range strings.Split(*onlyFlag, ",") {
		if strings.TrimSpace(name) == step {
			return true
		}
	}
	return false
}

// TestHarness runs every comparison of the benchmark page and writes its results as
// Markdown. It needs root, pgbench, pgbouncer, redis-benchmark, redis-server and MariaDB.
func TestHarness(t *testing.T) {
	if *modeFlag == "" {
		t.Skip("benchmark harness: set -bench.mode=smoke|full or DBPROXY_BENCH to run it")
	}
	cfg, err := settingsFor(*modeFlag)
	if err != nil {
		t.Fatal(err)
	}
	if *roundsFlag > 0 {
		cfg.rounds = *roundsFlag
	}
	cfg.fileLimit = raiseFileLimit(t, 1<<18)
	// The agent holds two descriptors per session, and Redis takes redisDefaultMaxClients
	// clients unless its own file limit allows more. Keep a few hundred for everything else.
	if limit := min(int(cfg.fileLimit/2), redisDefaultMaxClients) - redisSpareClients; cfg.memRedis > limit {
		t.Logf("memory step: %d Redis sessions instead of %d, to stay under RLIMIT_NOFILE %d", limit, cfg.memRedis, cfg.fileLimit)
		cfg.memRedis = limit
	}

	rep := newReport(cfg)
	servers := startEnv(t, cfg)
	rep.header(servers)

	steps := []struct {
		name string
		run  func(*testing.T, *env, *report)
	}{
		{"pgbench", runPgbench},
		{"connect", runConnectLatency},
		{"copy", runCopy},
		{"redis", runRedisBenchmark},
		{"mysql", runMySQLLoop},
		{"memory", runMemory},
		{"profile", runProfile},
	}
	for _, step := range steps {
		if !cfg.wants(step.name) {
			continue
		}
		start := time.Now()
		ok := t.Run(step.name, func(t *testing.T) { step.run(t, servers, rep) })
		t.Logf("step %s: %v in %v", step.name, map[bool]string{true: "ok", false: "FAILED"}[ok], time.Since(start).Round(time.Second))
		if !ok {
			rep.line("Step %s failed; see the test log.", step.name)
		}
	}

	out := *outFlag
	if out == "" {
		out = filepath.Join("results", "full.md")
		if cfg.mode == "smoke" {
			out = filepath.Join(os.TempDir(), "dbproxy-bench-smoke.md")
		}
	}
	if err := os.MkdirAll(filepath.Dir(out), 0o755); err != nil {
		t.Fatal(err)
	}
	if err := os.WriteFile(out, []byte(rep.String()), 0o644); err != nil {
		t.Fatal(err)
	}
	t.Logf("results written to %s", out)
}

// raiseFileLimit sets RLIMIT_NOFILE to n, or to the hard limit when the process may not
// raise that (no CAP_SYS_RESOURCE), and returns the limit in force. The memory step holds
// one descriptor per session here and two in the agent, and the children inherit the limit.
func raiseFileLimit(t *testing.T, n uint64) uint64 {
	t.Helper()
	if err := syscall.Setrlimit(syscall.RLIMIT_NOFILE, &syscall.Rlimit{Cur: n, Max: n}); err == nil {
		return n
	}
	var lim syscall.Rlimit
	if err := syscall.Getrlimit(syscall.RLIMIT_NOFILE, &lim); err != nil {
		t.Fatalf("read RLIMIT_NOFILE: %v", err)
	}
	lim.Cur = lim.Max
	if err := syscall.Setrlimit(syscall.RLIMIT_NOFILE, &lim); err != nil {
		t.Fatalf("raise RLIMIT_NOFILE to the hard limit %d: %v", lim.Max, err)
	}
	t.Logf("RLIMIT_NOFILE stays at the hard limit %d: raising it needs CAP_SYS_RESOURCE", lim.Max)
	return lim.Max
}

// loadAverage returns the 1, 5 and 15 minute load averages of /proc/loadavg.
func loadAverage() string {
	data, err := os.ReadFile("/proc/loadavg")
	if err != nil {
		return "unknown"
	}
	fields := strings.Fields(string(data))
	if len(fields) < 3 {
		return "unknown"
	}
	return strings.Join(fields[:3], " ")
}

// machine describes the CPU and memory from lscpu and /proc/meminfo.
func machine() string {
	model := "unknown CPU"
	if out, err := exec.Command("lscpu").Output(); err == nil {
		for _, line := range strings.Split(string(out), "\n") {
			if name, ok := strings.CutPrefix(line, "Model name:"); ok {
				model = strings.TrimSpace(name)
			}
		}
	}
	mem := "unknown memory"
	if data, err := os.ReadFile("/proc/meminfo"); err == nil {
		var kib int64
		fmt.Sscanf(strings.SplitN(string(data), "\n", 2)[0], "MemTotal: %d kB", &kib)
		mem = fmt.Sprintf("%.1f GiB", float64(kib)/(1<<20))
	}
	return fmt.Sprintf("%s, %d cores, %s, %s/%s", model, runtime.NumCPU(), mem, runtime.GOOS, runtime.GOARCH)
}
