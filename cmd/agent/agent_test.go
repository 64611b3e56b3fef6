package main

import (
	"bytes"
	"context"
	"errors"
	"fmt"
	"net"
	"os"
	"os/exec"
	"path/filepath"
	"strconv"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/jackc/pgx/v5/pgxpool"

	"github.com/knoxcall/dbproxy/internal/dbtest"
)

// The password of the app role is replaced with this marker, which must appear in no log
// line and no error.
const canary = "Canary-pw-5f0c2e9d"

// agent is a running agent.
type agent struct {
	port    int
	logs    *dbtest.LogBuffer
	cancel  context.CancelFunc
	done    chan error
	secrets string
}

// startAgent writes a config with one postgres route in front of pg and runs the agent.
// routeExtra is appended to the route's YAML.
func startAgent(t *testing.T, pg *dbtest.Postgres, password, routeExtra string) *agent {
	t.Helper()
	dir := t.TempDir()
	a := &agent{port: dbtest.FreePort(t), logs: &dbtest.LogBuffer{}, done: make(chan error, 1),
		secrets: filepath.Join(dir, "secrets.yaml")}
	a.writeSecrets(t, password)
	config := fmt.Sprintf(`credentials:
  source: file
  path: secrets.yaml
  cache_ttl: 1h
shutdown_timeout: 2s
routes:
  - name: orders
    protocol: postgres
    local_port: %d
    upstream_host: 127.0.0.1
    upstream_port: %d
    committed_secret_id: sec_orders
    dial_timeout: 2s
    tls:
      ca_file: %s
%s`, a.port, pg.Port, pg.Certs.CAFile, routeExtra)
	configPath := filepath.Join(dir, "agent.yaml")
	if err := os.WriteFile(configPath, []byte(config), 0o600); err != nil {
		t.Fatal(err)
	}
	ctx, cancel := context.WithCancel(context.Background())
	a.cancel = cancel
	go func() {
		a.done <- run(ctx, []string{"-config", configPath, "-log-level", "debug"}, a.logs, a.logs)
	}()
	t.Cleanup(func() {
		a.stop(t)
		if strings.Contains(a.logs.String(), canary) {
			t.Errorf("the agent log contains the password:\n%s", a.logs)
		}
	})
	// Wait for the listener.
	for i := 0; ; i++ {
		c, err := net.Dial("tcp", net.JoinHostPort("127.0.0.1", strconv.Itoa(a.port)))
		if err == nil {
			c.Close()
			return a
		}
		select {
		case err := <-a.done:
			t.Fatalf("agent exited: %v\n%s", err, a.logs)
		default:
		}
		if i > 200 {
			t.Fatalf("agent not listening after 10s:\n%s", a.logs)
		}
		time.Sleep(50 * time.Millisecond)
	}
}

// waitLog waits until the log contains want, and fails the test with the log if it does
// not within timeout.
func waitLog(t *testing.T, logs *dbtest.LogBuffer, want string, timeout time.Duration) {
	t.Helper()
	deadline := time.Now().Add(timeout)
	for !strings.Contains(logs.String(), want) {
		if time.Now().After(deadline) {
			t.Errorf("log lacks %q after %v:\n%s", want, timeout, logs)
			return
		}
		time.Sleep(20 * time.Millisecond)
	}
}

func (a *agent) writeSecrets(t *testing.T, password string) {
	t.Helper()
	data := fmt.Sprintf("secrets:\n  sec_orders: {username: app, password: %q}\n", password)
	tmp := a.secrets + ".tmp"
	if err := os.WriteFile(tmp, []byte(data), 0o600); err != nil {
		t.Fatal(err)
	}
	if err := os.Rename(tmp, a.secrets); err != nil {
		t.Fatal(err)
	}
}

func (a *agent) stop(t *testing.T) error {
	t.Helper()
	a.cancel()
	select {
	case err, ok := <-a.done:
		if ok {
			close(a.done)
		}
		return err
	case <-time.After(15 * time.Second):
		t.Fatal("agent did not stop within 15s")
		return nil
	}
}

func (a *agent) dsn(extra string) string {
	return fmt.Sprintf("host=127.0.0.1 port=%d dbname=appdb sslmode=disable connect_timeout=10 %s", a.port, extra)
}

// psql runs psql with no password and no user against the agent and returns its output.
func psql(t *testing.T, dsn, sql string) (string, error) {
	t.Helper()
	bin := dbtest.LookPath(t, "psql")
	cmd := exec.Command(bin, dsn, "-XAtq", "-v", "ON_ERROR_STOP=1", "-c", sql)
	cmd.Env = append(os.Environ(), "PGPASSWORD=", "PGUSER=", "PGCONNECT_TIMEOUT=10")
	out, err := cmd.CombinedOutput()
	return strings.TrimSpace(string(out)), err
}

func startPG(t *testing.T) *dbtest.Postgres {
	t.Helper()
	pg := dbtest.StartPostgres(t, dbtest.PostgresOptions{})
	pg.Exec(t, fmt.Sprintf("ALTER ROLE app PASSWORD '%s'", canary))
	return pg
}

func TestPsqlWithoutPassword(t *testing.T) {
	pg := startPG(t)
	a := startAgent(t, pg, canary, "")
	out, err := psql(t, a.dsn(""), "select current_user || ' ' || ssl from pg_stat_ssl where pid = pg_backend_pid()")
	if err != nil {
		t.Fatalf("psql: %v\n%s", err, out)
	}
	if out != "app true" {
		t.Fatalf("got %q, want %q (user app over TLS)", out, "app true")
	}
	// The close line is written after psql has seen the session end.
	waitLog(t, a.logs, "outcome=ok", 5*time.Second)
	logs := a.logs.String()
	for _, want := range []string{"route listening", "session open", "session closed"} {
		if !strings.Contains(logs, want) {
			t.Errorf("log lacks %q", want)
		}
	}
}

func TestPgxPoolThroughAgent(t *testing.T) {
	pg := startPG(t)
	a := startAgent(t, pg, canary, "")
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	pool, err := pgxpool.New(ctx, a.dsn("pool_max_conns=4"))
	if err != nil {
		t.Fatal(err)
	}
	defer pool.Close()
	var wg sync.WaitGroup
	errs := make(chan error, 16)
	for i := range 16 {
		wg.Add(1)
		go func() {
			defer wg.Done()
			var got int
			if err := pool.QueryRow(ctx, "select $1::int * 2", i).Scan(&got); err != nil {
				errs <- err
				return
			}
			if got != 2*i {
				errs <- fmt.Errorf("query %d returned %d", i, got)
			}
		}()
	}
	wg.Wait()
	close(errs)
	for err := range errs {
		t.Error(err)
	}
}

func TestWrongStoredPassword(t *testing.T) {
	pg := startPG(t)
	a := startAgent(t, pg, "not-the-password", "")
	out, err := psql(t, a.dsn(""), "select 1")
	if err == nil {
		t.Fatalf("psql succeeded with a wrong stored password: %s", out)
	}
	if !strings.Contains(out, `password authentication failed for user "app"`) {
		t.Errorf("psql output %q lacks the server's authentication error", out)
	}
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	pool, err := pgxpool.New(ctx, a.dsn(""))
	if err != nil {
		t.Fatal(err)
	}
	defer pool.Close()
	err = pool.Ping(ctx)
	if err == nil || !strings.Contains(err.Error(), "28P01") {
		t.Errorf("pgx error = %v, want SQLSTATE 28P01", err)
	}
}

func TestRotationWithoutRestart(t *testing.T) {
	pg := startPG(t)
	a := startAgent(t, pg, canary, "")
	if out, err := psql(t, a.dsn(""), "select 1"); err != nil {
		t.Fatalf("before rotation: %v\n%s", err, out)
	}
	// The cache TTL is an hour: only the rejection makes the agent read the file again.
	pg.Exec(t, "ALTER ROLE app PASSWORD 'rotated-pw'")
	a.writeSecrets(t, "rotated-pw")
	out, err := psql(t, a.dsn(""), "select 'after'")
	if err != nil || out != "after" {
		t.Fatalf("after rotation: %v, %q", err, out)
	}
}

// TestBrokenSecretsFileLogged checks that an edit that breaks the secrets file is logged
// while the cache still serves every fetch, that sessions keep the last valid content, and
// that the repair is logged too.
func TestBrokenSecretsFileLogged(t *testing.T) {
	pg := startPG(t)
	a := startAgent(t, pg, canary, "config_check_interval: 200ms\n")
	if out, err := psql(t, a.dsn(""), "select 1"); err != nil {
		t.Fatalf("before the edit: %v\n%s", err, out)
	}
	dbtest.ReplaceFile(t, a.secrets, "secrets: [oops\n")
	waitLog(t, a.logs, "secrets file invalid, still serving its last valid content", 5*time.Second)
	if out, err := psql(t, a.dsn(""), "select 'still'"); err != nil || out != "still" {
		t.Errorf("with the broken file: %v, %q", err, out)
	}
	a.writeSecrets(t, canary)
	waitLog(t, a.logs, "secrets file valid again", 5*time.Second)
}

func TestUpstreamDown(t *testing.T) {
	pg := startPG(t)
	a := startAgent(t, pg, canary, "")
	pg.Stop()
	start := time.Now()
	out, err := psql(t, a.dsn(""), "select 1")
	if err == nil {
		t.Fatalf("psql succeeded with the upstream down: %s", out)
	}
	if !strings.Contains(out, `route "orders"`) {
		t.Errorf("psql output %q does not name the route", out)
	}
	if d := time.Since(start); d > 5*time.Second {
		t.Errorf("error took %v, want within the 2s dial timeout", d)
	}
}

func TestUpstreamCertificateForAnotherHost(t *testing.T) {
	pg := startPG(t)
	a := startAgent(t, pg, canary, "      server_name: db.example.internal\n")
	out, err := psql(t, a.dsn(""), "select 1")
	if err == nil {
		t.Fatalf("psql succeeded though the certificate does not match: %s", out)
	}
	if !strings.Contains(out, "08006") && !strings.Contains(out, "certificate") {
		t.Errorf("psql output %q does not mention the certificate", out)
	}
	waitLog(t, a.logs, "outcome=upstream_tls_error", 5*time.Second)
	// The server saw no authentication attempt: TLS failed before the StartupMessage.
	if n := pg.Exec(t, "select count(*) from pg_stat_activity where usename = 'app'"); n != "0" {
		t.Errorf("app sessions on the server = %s, want 0", n)
	}
}

func TestHTTPFirstBytesRejected(t *testing.T) {
	pg := startPG(t)
	a := startAgent(t, pg, canary, "")
	c, err := net.Dial("tcp", net.JoinHostPort("127.0.0.1", strconv.Itoa(a.port)))
	if err != nil {
		t.Fatal(err)
	}
	defer c.Close()
	fmt.Fprintf(c, "POST / HTTP/1.1\r\nHost: 127.0.0.1\r\nContent-Length: 0\r\n\r\n")
	c.SetReadDeadline(time.Now().Add(5 * time.Second))
	if n, err := c.Read(make([]byte, 64)); err == nil {
		t.Fatalf("read %d bytes, want the connection closed", n)
	}
	if logs := a.logs.String(); !strings.Contains(logs, "reason=http_request") {
		t.Errorf("log lacks reason=http_request:\n%s", logs)
	}
}

func TestConfigErrors(t *testing.T) {
	dir := t.TempDir()
	secrets := filepath.Join(dir, "secrets.yaml")
	os.WriteFile(secrets, []byte("secrets:\n  s: {username: u, password: p}\n"), 0o600)
	route := func(extra string) string {
		return "credentials: {source: file, path: secrets.yaml}\nroutes:\n  - name: orders\n    protocol: postgres\n" +
			"    upstream_host: db\n    upstream_port: 5432\n    committed_secret_id: s\n" + extra
	}
	for _, tc := range []struct {
		name, config, want string
	}{
		{"listen on all interfaces", route("    listen_address: 0.0.0.0\n"), `route "orders": listen_address: 0.0.0.0: listen address is not loopback`},
		{"listen on ipv6 any", route("    listen_address: '::'\n"), "not loopback"},
		{"lan address", route("    listen_address: 192.168.0.5\n"), "not loopback"},
		{"unknown protocol", strings.Replace(route(""), "postgres", "oracle", 1), `route "orders": protocol: unknown protocol "oracle"`},
		{"unknown field", route("    upstream_hots: x\n"), "upstream_hots"},
		{"misspelt key suggests the key", route("    upstream_hots: x\n"), "upstream_hots not found in a route (did you mean upstream_host?)"},
		{"secret_id suggests the key", route("    secret_id: s\n"), "secret_id not found in a route (did you mean committed_secret_id?)"},
		{"unrelated key suggests nothing", route("    colour: blue\n"), "field colour not found in a route"},
		{"non-loopback says what to use", route("    listen_address: 10.0.0.1\n"), "use 127.0.0.1 or ::1"},
		{"bad duration", route("    dial_timeout: ten\n"), `invalid duration "ten"`},
		{"port in upstream_host", strings.Replace(route(""), "upstream_host: db", "upstream_host: 'db:5432'", 1),
			`route "orders": upstream_host: "db:5432" is not a host name or IP address; give the port in upstream_port`},
		{"no source", "routes: []\n", "credentials.source: missing"},
		{"missing secrets file", strings.Replace(route(""), "secrets.yaml", "nope.yaml", 1), "nope.yaml"},
		{"empty file", "", "the file is empty"},
		{"typo names the section", route("    upstream_prot: 5\n"), "field upstream_prot not found in a route"},
		{"missing ca file", route("    tls: {ca_file: nope.pem}\n"), `route "orders": tls.ca_file`},
		{"missing socket directory", route("    unix_socket: /nonexistent-dir/s.sock\n"), "directory /nonexistent-dir does not exist"},
		{"negative max_logins", "max_logins: -1\n" + route(""), "max_logins: -1 is negative"},
		{"two routes on one port", route("    local_port: 7001\n") + "  - name: billing\n    protocol: redis\n" +
			"    upstream_host: db\n    upstream_port: 6379\n    committed_secret_id: s\n    local_port: 7001\n",
			`route "billing": local_port: 127.0.0.1 port 7001 is already the listener of route "orders"`},
	} {
		t.Run(tc.name, func(t *testing.T) {
			path := filepath.Join(dir, "agent.yaml")
			os.WriteFile(path, []byte(tc.config), 0o600)
			var stderr bytes.Buffer
			err := run(context.Background(), []string{"-config", path}, &stderr, &stderr)
			if !errors.Is(err, errUsage) {
				t.Fatalf("run = %v, want a usage error", err)
			}
			if !strings.Contains(err.Error(), tc.want) {
				t.Errorf("error %q lacks %q", err, tc.want)
			}
			if strings.Contains(tc.config, "colour") && strings.Contains(err.Error(), "did you mean") {
				t.Errorf("error %q suggests a key for an unrelated one", err)
			}
		})
	}
}

func TestNonLoopbackBindsNothing(t *testing.T) {
	dir := t.TempDir()
	os.WriteFile(filepath.Join(dir, "secrets.yaml"), []byte("secrets:\n  s: {username: u, password: p}\n"), 0o600)
	port := dbtest.FreePort(t)
	config := fmt.Sprintf(`credentials: {source: file, path: secrets.yaml}
routes:
  - {name: good, protocol: postgres, local_port: %d, upstream_host: db, upstream_port: 5432, committed_secret_id: s}
  - {name: bad, protocol: postgres, listen_address: 0.0.0.0, upstream_host: db, upstream_port: 5432, committed_secret_id: s}
`, port)
	path := filepath.Join(dir, "agent.yaml")
	os.WriteFile(path, []byte(config), 0o600)
	var stderr bytes.Buffer
	err := run(context.Background(), []string{"-config", path}, &stderr, &stderr)
	if err == nil || !strings.Contains(err.Error(), `route "bad"`) {
		t.Fatalf("run = %v, want an error naming route bad", err)
	}
	// The valid route was not bound either.
	ln, err := net.Listen("tcp", net.JoinHostPort("127.0.0.1", strconv.Itoa(port)))
	if err != nil {
		t.Fatalf("port of the valid route is taken: %v", err)
	}
	ln.Close()
}

func TestVersionFlag(t *testing.T) {
	var out bytes.Buffer
	if err := run(context.Background(), []string{"-version"}, &out, &out); err != nil {
		t.Fatal(err)
	}
	if !strings.HasPrefix(out.String(), "dbproxy agent ") {
		t.Errorf("got %q", out.String())
	}
}
