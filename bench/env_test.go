package bench

import (
	"fmt"
	"math"
	"net"
	"os"
	"os/exec"
	"path/filepath"
	"strconv"
	"strings"
	"syscall"
	"testing"
	"time"

	"github.com/knoxcall/dbproxy/internal/dbtest"
)

// env is the servers, PgBouncer and the agent of one harness run.
type env struct {
	cfg   settings
	dir   string
	pg    *dbtest.Postgres
	redis *dbtest.Redis
	maria *dbtest.MariaDB

	bouncerPort int
	bouncerPID  int
	agent       *agentProcess
}

// agentProcess is the agent binary running with one route per server.
type agentProcess struct {
	bin, config, log string
	cmd              *exec.Cmd
	pgPort           int
	redisPort        int
	mysqlPort        int
}

func startEnv(t *testing.T, cfg settings) *env {
	t.Helper()
	dbtest.RequireRoot(t)
	for _, tool := range []string{"pgbench", "pgbouncer", "redis-benchmark"} {
		dbtest.LookPath(t, tool, "/usr/sbin")
	}
	e := &env{cfg: cfg, dir: dbtest.SharedDir(t)}
	e.pg = dbtest.StartPostgres(t, dbtest.PostgresOptions{
		Conf: fmt.Sprintf("max_connections = %d\nshared_buffers = 256MB\n", cfg.maxConnections),
	})
	// pgbench's tables serve the pgbench and profile steps.
	run(t, "pgbench", "-i", "-q", "-s", strconv.Itoa(cfg.pgbenchScale), e.pgDirect())
	e.redis = dbtest.StartRedis(t, dbtest.RedisOptions{})
	if cfg.wants("mysql") {
		e.maria = dbtest.StartMariaDB(t, dbtest.MariaDBOptions{Args: []string{"--max-connections=500"}})
	}
	e.bouncerPort, e.bouncerPID = startPgBouncer(t, e)
	e.agent = startAgent(t, e)
	return e
}

func (e *env) versions() []string {
	v := []string{
		toolVersion("runuser", "-u", "postgres", "--", filepath.Join(pgBinDir(), "postgres"), "--version"),
		toolVersion("pgbouncer", "--version"),
		toolVersion("redis-server", "--version"),
	}
	if e.maria != nil {
		v = append(v, toolVersion("mariadbd", "--version"))
	}
	return v
}

func pgBinDir() string {
	if p, err := exec.LookPath("initdb"); err == nil {
		if real, err := filepath.EvalSymlinks(p); err == nil {
			return filepath.Dir(real)
		}
	}
	matches, _ := filepath.Glob("/usr/lib/postgresql/*/bin")
	if len(matches) > 0 {
		return matches[len(matches)-1]
	}
	return "/usr/lib/postgresql/15/bin"
}

// pgDirect returns the libpq connection string of a direct TLS login to appdb as app.
func (e *env) pgDirect() string {
	return fmt.Sprintf("host=127.0.0.1 port=%d dbname=appdb user=app password=secret sslmode=verify-full sslrootcert=%s",
		e.pg.Port, e.pg.Certs.CAFile)
}

// pgAgent returns the connection string through the agent: plaintext on loopback and no
// password, as an application uses it.
func (e *env) pgAgent() string {
	return fmt.Sprintf("host=127.0.0.1 port=%d dbname=appdb user=app sslmode=disable", e.agent.pgPort)
}

// pgBouncer returns the connection string through PgBouncer, plaintext on loopback.
func (e *env) pgBouncer() string {
	return fmt.Sprintf("host=127.0.0.1 port=%d dbname=appdb user=app sslmode=disable", e.bouncerPort)
}

// startPgBouncer runs PgBouncer in session mode in front of the PostgreSQL server, with the
// password stored in its configuration and TLS verified upstream, as the agent does it.
func startPgBouncer(t *testing.T, e *env) (port, pid int) {
	t.Helper()
	dir := filepath.Join(e.dir, "pgbouncer")
	if err := os.MkdirAll(dir, 0o700); err != nil {
		t.Fatal(err)
	}
	port = dbtest.FreePort(t)
	ca, err := os.ReadFile(e.pg.Certs.CAFile)
	if err != nil {
		t.Fatal(err)
	}
	writeFile(t, filepath.Join(dir, "ca.pem"), string(ca))
	writeFile(t, filepath.Join(dir, "userlist.txt"), "\"app\" \"\"\n")
	conf := fmt.Sprintf(`[databases]
appdb = host=127.0.0.1 port=%d dbname=appdb user=app password=secret

[pgbouncer]
listen_addr = 127.0.0.1
listen_port = %d
unix_socket_dir =
auth_type = trust
auth_file = %s/userlist.txt
pool_mode = session
max_client_conn = 2000
default_pool_size = 200
server_tls_sslmode = verify-full
server_tls_ca_file = %s/ca.pem
logfile = %s/pgbouncer.log
`, e.pg.Port, port, dir, dir, dir)
	writeFile(t, filepath.Join(dir, "pgbouncer.ini"), conf)
	run(t, "chown", "-R", "postgres:postgres", dir)

	cmd := exec.Command("pgbouncer", "-u", "postgres", filepath.Join(dir, "pgbouncer.ini"))
	cmd.Stderr, cmd.Stdout = nil, nil
	if err := cmd.Start(); err != nil {
		t.Fatalf("start pgbouncer: %v", err)
	}
	exited := make(chan error, 1)
	go func() { exited <- cmd.Wait() }()
	t.Cleanup(func() {
		dbtest.StopPID(cmd.Process.Pid, syscall.SIGTERM)
		<-exited
	})
	waitListening(t, "pgbouncer", port, exited, filepath.Join(dir, "pgbouncer.log"))
	return port, cmd.Process.Pid
}

// startAgent builds cmd/agent and runs it with a postgres, a redis and (when MariaDB runs) a
// mysql route, and stops it with SIGTERM at the end of the test.
func startAgent(t *testing.T, e *env) *agentProcess {
	t.Helper()
	dir := filepath.Join(e.dir, "agent")
	if err := os.MkdirAll(dir, 0o700); err != nil {
		t.Fatal(err)
	}
	a := &agentProcess{
		bin:       filepath.Join(dir, "agent"),
		config:    filepath.Join(dir, "agent.yaml"),
		log:       filepath.Join(dir, "agent.log"),
		pgPort:    dbtest.FreePort(t),
		redisPort: dbtest.FreePort(t),
		mysqlPort: dbtest.FreePort(t),
	}
	build := exec.Command("go", "build", "-o", a.bin, "./cmd/agent")
	build.Dir = ".."
	if out, err := build.CombinedOutput(); err != nil {
		t.Fatalf("go build ./cmd/agent: %v\n%s", err, out)
	}

	secrets := "secrets:\n" +
		"  sec_pg: {username: app, password: secret}\n" +
		"  sec_redis: {username: app, password: secret}\n" +
		"  sec_mysql: {username: native, password: secret}\n"
	writeFile(t, filepath.Join(dir, "secrets.yaml"), secrets)
	routes := routeYAML("pg", "postgres", a.pgPort, e.pg.Port, "sec_pg", e.pg.Certs.CAFile) +
		routeYAML("cache", "redis", a.redisPort, e.redis.Port, "sec_redis", e.redis.Certs.CAFile)
	if e.maria != nil {
		routes += routeYAML("orders", "mysql", a.mysqlPort, e.maria.Port, "sec_mysql", e.maria.Certs.CAFile)
	}
	writeFile(t, a.config, "credentials:\n  source: file\n  path: secrets.yaml\nshutdown_timeout: 2s\nroutes:\n"+routes)

	logFile, err := os.Create(a.log)
	if err != nil {
		t.Fatal(err)
	}
	a.cmd = exec.Command(a.bin, "-config", a.config, "-log-level", "info")
	a.cmd.Stdout, a.cmd.Stderr = logFile, logFile
	a.cmd.Env = append(os.Environ(), strings.Fields(*agentEnv)...)
	if err := a.cmd.Start(); err != nil {
		t.Fatalf("start agent: %v", err)
	}
	exited := make(chan error, 1)
	go func() { exited <- a.cmd.Wait(); logFile.Close() }()
	t.Cleanup(func() {
		dbtest.StopPID(a.cmd.Process.Pid, syscall.SIGTERM)
		<-exited
	})
	waitListening(t, "agent", a.pgPort, exited, a.log)
	return a
}

func routeYAML(name, protocol string, local, upstream int, secret, caFile string) string {
	return fmt.Sprintf(`  - name: %s
    protocol: %s
    local_port: %d
    upstream_host: 127.0.0.1
    upstream_port: %d
    committed_secret_id: %s
    tls: {ca_file: %s}
`, name, protocol, local, upstream, secret, caFile)
}

// rssKiB returns the resident set size of pid from /proc/PID/status, in KiB.
func rssKiB(pid int) (int64, error) {
	data, err := os.ReadFile("/proc/" + strconv.Itoa(pid) + "/status")
	if err != nil {
		return 0, err
	}
	for _, line := range strings.Split(string(data), "\n") {
		if v, ok := strings.CutPrefix(line, "VmRSS:"); ok {
			return strconv.ParseInt(strings.TrimSuffix(strings.TrimSpace(v), " kB"), 10, 64)
		}
	}
	return 0, fmt.Errorf("no VmRSS in /proc/%d/status", pid)
}

// clockTicksPerSecond is USER_HZ, the unit of the CPU times in /proc/PID/stat: 100 on
// every Linux architecture that Go supports.
const clockTicksPerSecond = 100

// cpuTime returns the user plus system CPU time pid has used, from /proc/PID/stat.
func cpuTime(pid int) (time.Duration, error) {
	data, err := os.ReadFile("/proc/" + strconv.Itoa(pid) + "/stat")
	if err != nil {
		return 0, err
	}
	// The command name in parentheses may contain spaces; utime and stime are the 12th
	// and 13th fields after it.
	s := string(data)
	fields := strings.Fields(s[strings.LastIndexByte(s, ')')+1:])
	if len(fields) < 13 {
		return 0, fmt.Errorf("/proc/%d/stat: too few fields", pid)
	}
	utime, err1 := strconv.ParseInt(fields[11], 10, 64)
	stime, err2 := strconv.ParseInt(fields[12], 10, 64)
	if err1 != nil || err2 != nil {
		return 0, fmt.Errorf("/proc/%d/stat: invalid CPU times %q %q", pid, fields[11], fields[12])
	}
	return time.Duration(utime+stime) * time.Second / clockTicksPerSecond, nil
}

// cpuMeter measures the CPU time of one process over a span of work.
type cpuMeter struct {
	pid   int
	start time.Duration
}

func startCPUMeter(pid int) cpuMeter {
	start, _ := cpuTime(pid)
	return cpuMeter{pid: pid, start: start}
}

// perOp returns the process's CPU time since the start in microseconds per operation.
func (m cpuMeter) perOp(ops float64) float64 {
	end, err := cpuTime(m.pid)
	if err != nil || ops <= 0 {
		return math.NaN()
	}
	return float64(end-m.start) / float64(time.Microsecond) / ops
}

// redisPID returns the pid of the Redis server from its pid file.
func (e *env) redisPID() int {
	data, err := os.ReadFile(filepath.Join(e.redis.Dir, "redis.pid"))
	if err != nil {
		return 0
	}
	pid, _ := strconv.Atoi(strings.TrimSpace(string(data)))
	return pid
}

// waitListening polls port for up to 10 s, failing early when the process exits.
func waitListening(t *testing.T, name string, port int, exited <-chan error, logFile string) {
	t.Helper()
	deadline := time.Now().Add(10 * time.Second)
	for time.Now().Before(deadline) {
		select {
		case err := <-exited:
			log, _ := os.ReadFile(logFile)
			t.Fatalf("%s exited during start: %v\n%s", name, err, log)
		default:
		}
		if c, err := net.DialTimeout("tcp", net.JoinHostPort("127.0.0.1", strconv.Itoa(port)), time.Second); err == nil {
			c.Close()
			return
		}
		time.Sleep(50 * time.Millisecond)
	}
	log, _ := os.ReadFile(logFile)
	t.Fatalf("%s not listening on port %d after 10 s\n%s", name, port, log)
}

func writeFile(t *testing.T, name, data string) {
	t.Helper()
	if err := os.WriteFile(name, []byte(data), 0o600); err != nil {
		t.Fatal(err)
	}
}

// run runs a command and fails the test with its output when it fails.
func run(t *testing.T, name string, args ...string) string {
	t.Helper()
	out, err := exec.Command(name, args...).CombinedOutput()
	if err != nil {
		t.Fatalf("%s %s: %v\n%s", name, strings.Join(args, " "), err, out)
	}
	return string(out)
}
