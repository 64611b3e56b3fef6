package knoxproxy_test

import (
	"bytes"
	"context"
	"database/sql"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"net"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"sync/atomic"
	"syscall"
	"testing"
	"time"

	"github.com/go-sql-driver/mysql"
	"github.com/jackc/pgx/v5"
	"github.com/redis/go-redis/v9"
	"go.mongodb.org/mongo-driver/bson"
	"go.mongodb.org/mongo-driver/mongo"
	"go.mongodb.org/mongo-driver/mongo/options"

	"github.com/knoxcall/dbproxy/credsource"
	"github.com/knoxcall/dbproxy/internal/dbtest"
	"github.com/knoxcall/dbproxy/knoxproxy"
)

// The stored password in every test is this marker, which must appear in no log line.
const canary = "Canary-9c41e7d2-pw"

// countingSource counts fetches, so tests can prove that a rejected peer caused none.
type countingSource struct {
	credsource.Source
	fetches atomic.Int64
}

func (s *countingSource) Fetch(ctx context.Context, id string) (credsource.Credentials, error) {
	s.fetches.Add(1)
	return s.Source.Fetch(ctx, id)
}

type running struct {
	srv    *knoxproxy.Server
	source *countingSource
	logs   *dbtest.LogBuffer
}

// serve runs one route with the stored credentials creds until the test ends.
func serve(t *testing.T, route knoxproxy.Route, creds credsource.Credentials) *running {
	t.Helper()
	route.Name = "it"
	route.SecretID = "sec"
	if route.LocalPort == 0 {
		route.LocalPort = dbtest.FreePort(t)
	}
	src := &countingSource{Source: credsource.NewCache(credsource.NewStatic(map[string]credsource.Credentials{"sec": creds}), time.Minute)}
	logs := &dbtest.LogBuffer{}
	srv, err := knoxproxy.New(knoxproxy.Config{
		Routes:          []knoxproxy.Route{route},
		Credentials:     src,
		Logger:          slog.New(slog.NewTextHandler(logs, &slog.HandlerOptions{Level: slog.LevelDebug})),
		ShutdownTimeout: time.Second,
	})
	if err != nil {
		t.Fatal(err)
	}
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan error, 1)
	go func() { done <- srv.Serve(ctx) }()
	select {
	case <-srv.Ready():
	case err := <-done:
		cancel()
		t.Fatalf("Serve: %v", err)
	}
	t.Cleanup(func() {
		cancel()
		<-done
		if strings.Contains(logs.String(), canary) {
			t.Errorf("log contains the stored password:\n%s", logs)
		}
		for line := range strings.Lines(logs.String()) {
			if strings.Count(line, " route=") > 1 {
				t.Errorf("log line names the route twice: %s", line)
			}
		}
	})
	return &running{srv: srv, source: src, logs: logs}
}

func (r *running) port() int { return r.srv.Addr("it").(*net.TCPAddr).Port }

func pgRoute(pg *dbtest.Postgres) knoxproxy.Route {
	return knoxproxy.Route{Protocol: "postgres", UpstreamHost: pg.Host, UpstreamPort: pg.Port,
		TLS: knoxproxy.TLS{CAFile: pg.Certs.CAFile}}
}

func startPG(t *testing.T) *dbtest.Postgres {
	t.Helper()
	pg := dbtest.StartPostgres(t, dbtest.PostgresOptions{})
	pg.Exec(t, "ALTER ROLE app PASSWORD '"+canary+"'")
	return pg
}

func psqlCommand(t *testing.T, dsn string, args ...string) *exec.Cmd {
	t.Helper()
	cmd := exec.Command(dbtest.LookPath(t, "psql"), append([]string{dsn, "-XAtq"}, args...)...)
	cmd.Env = append(os.Environ(), "PGPASSWORD=", "PGUSER=", "PGCONNECT_TIMEOUT=10")
	return cmd
}

func TestPeerUIDAllowlistWithRealClients(t *testing.T) {
	dbtest.RequireRoot(t)
	pg := startPG(t)
	route := pgRoute(pg)
	route.AllowedUIDs = []uint32{0}
	r := serve(t, route, credsource.Credentials{Username: "app", Password: canary})
	dsn := fmt.Sprintf("host=127.0.0.1 port=%d dbname=appdb sslmode=disable", r.port())

	// UID 65534 (nobody) is not in the list: closed before a byte is read, with no
	// credential fetch and no upstream session.
	cmd := psqlCommand(t, dsn, "-c", "select 1")
	cmd.Path = dbtest.LookPath(t, "setpriv")
	cmd.Args = append([]string{"setpriv", "--reuid=65534", "--regid=65534", "--clear-groups", dbtest.LookPath(t, "psql")}, cmd.Args[1:]...)
	cmd.Dir = "/" // the test's directory may be closed to uid 65534
	out, err := cmd.CombinedOutput()
	if err == nil {
		t.Fatalf("psql as uid 65534 succeeded: %s", out)
	}
	if n := r.source.fetches.Load(); n != 0 {
		t.Errorf("credential fetches after a rejected peer = %d, want 0", n)
	}
	if n := pg.Exec(t, "select count(*) from pg_stat_activity where usename = 'app'"); n != "0" {
		t.Errorf("upstream sessions of app = %s, want 0", n)
	}
	logs := r.logs.String()
	if !strings.Contains(logs, "peer_uid=65534") || !strings.Contains(logs, "reason=uid_not_allowed") {
		t.Errorf("log does not name the rejected UID:\n%s", logs)
	}

	// Root is in the list.
	out, err = psqlCommand(t, dsn, "-c", "select current_user").CombinedOutput()
	if err != nil || strings.TrimSpace(string(out)) != "app" {
		t.Fatalf("psql as root: %v, %q", err, out)
	}
	if !strings.Contains(r.logs.String(), "peer_uid=0") {
		t.Errorf("session log lacks the peer UID:\n%s", r.logs)
	}
	// The PID of a TCP peer is not looked up by default, and an unknown PID is left out
	// rather than shown as 0.
	if strings.Contains(r.logs.String(), "peer_pid=0") {
		t.Errorf("session log shows an unknown PID as 0:\n%s", r.logs)
	}
}

func TestUnixSocketRoute(t *testing.T) {
	dbtest.RequireRoot(t)
	pg := startPG(t)
	dir := dbtest.SharedDir(t) // traversable by uid 65534, unlike t.TempDir
	route := pgRoute(pg)
	route.UnixSocket = filepath.Join(dir, ".s.PGSQL.5432")
	route.AllowedUIDs = []uint32{0, 65534}
	r := serve(t, route, credsource.Credentials{Username: "app", Password: canary})

	st, err := os.Stat(route.UnixSocket)
	if err != nil {
		t.Fatal(err)
	}
	if mode := st.Mode().Perm(); mode != 0o600 {
		t.Errorf("socket mode = %#o, want 0600", mode)
	}
	dsn := fmt.Sprintf("host=%s port=5432 dbname=appdb", dir)
	out, err := psqlCommand(t, dsn, "-c", "select current_user").CombinedOutput()
	if err != nil || strings.TrimSpace(string(out)) != "app" {
		t.Fatalf("psql over the Unix socket: %v, %q", err, out)
	}
	// Another user cannot open a 0600 socket of root's, whatever the allowlist says.
	cmd := exec.Command(dbtest.LookPath(t, "setpriv"), "--reuid=65534", "--regid=65534", "--clear-groups",
		dbtest.LookPath(t, "psql"), dsn, "-XAtqc", "select 1")
	cmd.Env = append(os.Environ(), "PGPASSWORD=")
	cmd.Dir = "/"
	if out, err := cmd.CombinedOutput(); err == nil {
		t.Fatalf("uid 65534 opened a 0600 socket: %s", out)
	}
	if n := r.source.fetches.Load(); n != 1 {
		t.Errorf("credential fetches = %d, want 1 (only root's session)", n)
	}
}

func TestUnixSocketUIDCheck(t *testing.T) {
	dbtest.RequireRoot(t)
	pg := startPG(t)
	dir := dbtest.SharedDir(t) // traversable by uid 65534, unlike t.TempDir
	route := pgRoute(pg)
	route.UnixSocket = filepath.Join(dir, ".s.PGSQL.5432")
	route.UnixSocketMode = 0o666
	route.AllowedUIDs = []uint32{0}
	r := serve(t, route, credsource.Credentials{Username: "app", Password: canary})

	cmd := exec.Command(dbtest.LookPath(t, "setpriv"), "--reuid=65534", "--regid=65534", "--clear-groups",
		dbtest.LookPath(t, "psql"), fmt.Sprintf("host=%s port=5432 dbname=appdb", dir), "-XAtqc", "select 1")
	cmd.Env = append(os.Environ(), "PGPASSWORD=")
	cmd.Dir = "/"
	if out, err := cmd.CombinedOutput(); err == nil {
		t.Fatalf("uid 65534 passed the allowlist over the socket: %s", out)
	}
	if !strings.Contains(r.logs.String(), "peer_uid=65534") {
		t.Errorf("log does not name uid 65534:\n%s", r.logs)
	}
	if n := r.source.fetches.Load(); n != 0 {
		t.Errorf("credential fetches = %d, want 0", n)
	}
}

func TestPsqlCancel(t *testing.T) {
	pg := startPG(t)
	r := serve(t, pgRoute(pg), credsource.Credentials{Username: "app", Password: canary})
	dsn := fmt.Sprintf("host=127.0.0.1 port=%d dbname=appdb sslmode=disable", r.port())
	cmd := psqlCommand(t, dsn, "-c", "select pg_sleep(30)")
	var out bytes.Buffer
	cmd.Stdout, cmd.Stderr = &out, &out
	if err := cmd.Start(); err != nil {
		t.Fatal(err)
	}
	defer cmd.Process.Kill()
	waitFor(t, 10*time.Second, func() bool {
		return pg.Exec(t, "select count(*) from pg_stat_activity where query like 'select pg_sleep%' and state = 'active'") == "1"
	})

	// Ctrl-C: psql sends a CancelRequest to the agent's port.
	start := time.Now()
	cmd.Process.Signal(syscall.SIGINT)
	cmd.Wait()
	if !strings.Contains(out.String(), "canceling statement due to user request") {
		t.Errorf("psql output %q lacks the cancel error", out.String())
	}
	waitFor(t, time.Second, func() bool {
		return pg.Exec(t, "select count(*) from pg_stat_activity where query like 'select pg_sleep%' and state = 'active'") == "0"
	})
	t.Logf("query stopped %v after Ctrl-C", time.Since(start).Round(time.Millisecond))
}

func TestPgxContextCancel(t *testing.T) {
	pg := startPG(t)
	r := serve(t, pgRoute(pg), credsource.Credentials{Username: "app", Password: canary})
	ctx := context.Background()
	conn, err := pgx.Connect(ctx, fmt.Sprintf("host=127.0.0.1 port=%d dbname=appdb sslmode=disable", r.port()))
	if err != nil {
		t.Fatal(err)
	}
	defer conn.Close(ctx)
	qctx, cancel := context.WithTimeout(ctx, 500*time.Millisecond)
	defer cancel()
	start := time.Now()
	_, err = conn.Exec(qctx, "select pg_sleep(30)")
	if err == nil {
		t.Fatal("pg_sleep(30) returned without error")
	}
	waitFor(t, 1500*time.Millisecond, func() bool {
		return pg.Exec(t, "select count(*) from pg_stat_activity where query like 'select pg_sleep%' and state = 'active'") == "0"
	})
	t.Logf("query stopped %v after the query began", time.Since(start).Round(time.Millisecond))
}

// TestKeyShareLearnedFromPostgres checks that the agent learns PostgreSQL's key exchange
// group. PostgreSQL 15 accepts only its ssl_ecdh_curve, prime256v1 by default, so the first
// handshake, which offers Go's default shares, needs a HelloRetryRequest and later ones do not.
func TestKeyShareLearnedFromPostgres(t *testing.T) {
	pg := startPG(t)
	r := serve(t, pgRoute(pg), credsource.Credentials{Username: "app", Password: canary})
	ctx := context.Background()
	for i := range 2 {
		conn, err := pgx.Connect(ctx, fmt.Sprintf("host=127.0.0.1 port=%d dbname=appdb sslmode=disable", r.port()))
		if err != nil {
			t.Fatal(err)
		}
		conn.Close(ctx)
		waitFor(t, 5*time.Second, func() bool {
			return strings.Count(r.logs.String(), `msg="session closed"`) == i+1
		})
	}

	lines := knoxproxy.CloseLines(r.logs.String())
	for i, want := range []string{"tls_group=CurveP256 tls_hello_retry=true", "tls_group=CurveP256 tls_hello_retry=false"} {
		if !strings.Contains(lines[i], want) {
			t.Errorf("session %d close line lacks %q:\n%s", i+1, want, lines[i])
		}
	}
}

// TestKeySharePinSurvivesOtherFailures checks that logins that fail for reasons other than
// the upstream TLS handshake keep the pinned key exchange group: a psql with
// sslmode=require, which leaves after the agent declines SSL, and a server error after TLS
// (an unknown database).
func TestKeySharePinSurvivesOtherFailures(t *testing.T) {
	pg := startPG(t)
	r := serve(t, pgRoute(pg), credsource.Credentials{Username: "app", Password: canary})
	ctx := context.Background()
	dsn := fmt.Sprintf("host=127.0.0.1 port=%d sslmode=disable", r.port())
	connect := func(dsn string) error {
		conn, err := pgx.Connect(ctx, dsn)
		if err == nil {
			conn.Close(ctx)
		}
		return err
	}
	closed := func(n int) {
		waitFor(t, 5*time.Second, func() bool {
			return strings.Count(r.logs.String(), `msg="session closed"`) == n
		})
	}

	// The first login offers every group and pins the one PostgreSQL chose.
	if err := connect(dsn + " dbname=appdb"); err != nil {
		t.Fatal(err)
	}
	closed(1)

	out, err := psqlCommand(t, fmt.Sprintf("host=127.0.0.1 port=%d dbname=appdb sslmode=require", r.port()),
		"-c", "select 1").CombinedOutput()
	if err == nil || !strings.Contains(string(out), "server does not support SSL") {
		t.Fatalf("psql sslmode=require: %v, output %q; want libpq's SSL error", err, out)
	}
	closed(2)
	if err := connect(dsn + " dbname=nosuchdb"); err == nil || !strings.Contains(err.Error(), "3D000") {
		t.Fatalf("connect to an unknown database: %v, want SQLSTATE 3D000", err)
	}
	closed(3)

	if err := connect(dsn + " dbname=appdb"); err != nil {
		t.Fatal(err)
	}
	closed(4)
	logs := r.logs.String()
	if strings.Contains(logs, "login failed with the pinned TLS key exchange groups") {
		t.Errorf("a login that failed after or before the upstream TLS handshake dropped the pin:\n%s", logs)
	}
	lines := knoxproxy.CloseLines(logs)
	if want := "tls_hello_retry=false"; !strings.Contains(lines[3], want) {
		t.Errorf("last session's close line lacks %q:\n%s", want, lines[3])
	}
}

// TestSilentClientOverLimitClosed checks that a connection over max_connections that sends
// nothing is closed within a few seconds rather than at the end of the login timeout.
func TestSilentClientOverLimitClosed(t *testing.T) {
	pg := startPG(t)
	route := pgRoute(pg)
	route.MaxConnections = 1
	route.LoginTimeout = time.Minute
	r := serve(t, route, credsource.Credentials{Username: "app", Password: canary})
	ctx := context.Background()
	first, err := pgx.Connect(ctx, fmt.Sprintf("host=127.0.0.1 port=%d dbname=appdb sslmode=disable", r.port()))
	if err != nil {
		t.Fatal(err)
	}
	defer first.Close(ctx)

	silent, err := net.Dial("tcp", r.srv.Addr("it").String())
	if err != nil {
		t.Fatal(err)
	}
	defer silent.Close()
	silent.SetReadDeadline(time.Now().Add(10 * time.Second))
	start := time.Now()
	n, err := silent.Read(make([]byte, 1))
	if n != 0 || !errors.Is(err, io.EOF) {
		t.Fatalf("silent connection: read %d bytes, %v; want the agent to close it", n, err)
	}
	if waited := time.Since(start); waited > 5*time.Second {
		t.Errorf("silent connection closed after %v, want about 2s", waited)
	}
	if logs := r.logs.String(); strings.Count(logs, `msg="session open"`) != 1 {
		t.Errorf("want one session open line, for the first session:\n%s", logs)
	}
}

func TestDirectTLSClientHelloRejected(t *testing.T) {
	pg := startPG(t)
	r := serve(t, pgRoute(pg), credsource.Credentials{Username: "app", Password: canary})
	// What libpq 17 sends with sslnegotiation=direct: a TLS ClientHello as the first bytes.
	c, err := net.Dial("tcp", r.srv.Addr("it").String())
	if err != nil {
		t.Fatal(err)
	}
	defer c.Close()
	c.Write([]byte{0x16, 0x03, 0x01, 0x00, 0x40, 0x01, 0x00, 0x00, 0x3c, 0x03, 0x03})
	c.SetReadDeadline(time.Now().Add(5 * time.Second))
	if n, err := c.Read(make([]byte, 8)); err == nil {
		t.Fatalf("read %d bytes, want the connection closed", n)
	}
	if !strings.Contains(r.logs.String(), "reason=tls_client_hello") {
		t.Errorf("log lacks reason=tls_client_hello:\n%s", r.logs)
	}
	if n := r.source.fetches.Load(); n != 0 {
		t.Errorf("credential fetches = %d, want 0", n)
	}
}

func TestRedisThroughCore(t *testing.T) {
	rd := dbtest.StartRedis(t, dbtest.RedisOptions{})
	r := serve(t, knoxproxy.Route{Protocol: "redis", UpstreamHost: rd.Host, UpstreamPort: rd.Port,
		TLS: knoxproxy.TLS{CAFile: rd.Certs.CAFile}}, credsource.Credentials{Username: dbtest.RedisUser, Password: dbtest.RedisPassword})
	client := redis.NewClient(&redis.Options{Addr: r.srv.Addr("it").String(), Password: "dummy"})
	defer client.Close()
	ctx := context.Background()
	who, err := client.Do(ctx, "ACL", "WHOAMI").Text()
	if err != nil {
		t.Fatal(err)
	}
	if who != dbtest.RedisUser {
		t.Errorf("ACL WHOAMI = %q, want %q", who, dbtest.RedisUser)
	}
}

// TestPsqlAtRedisRouteFails checks that psql pointed at a Redis route by mistake fails at
// once. Redis would wait for the end of an inline command that never comes.
func TestPsqlAtRedisRouteFails(t *testing.T) {
	rd := dbtest.StartRedis(t, dbtest.RedisOptions{})
	r := serve(t, knoxproxy.Route{Protocol: "redis", UpstreamHost: rd.Host, UpstreamPort: rd.Port,
		TLS: knoxproxy.TLS{CAFile: rd.Certs.CAFile}}, credsource.Credentials{Username: dbtest.RedisUser, Password: dbtest.RedisPassword})
	cmd := psqlCommand(t, fmt.Sprintf("host=127.0.0.1 port=%d dbname=appdb", r.port()), "-c", "select 1")
	start := time.Now()
	out, err := cmd.CombinedOutput()
	if err == nil {
		t.Fatalf("psql at a Redis route succeeded:\n%s", out)
	}
	if d := time.Since(start); d > 5*time.Second {
		t.Errorf("psql failed after %v, want at once", d)
	}
	if logs := r.logs.String(); !strings.Contains(logs, "reason=not_redis") {
		t.Errorf("log lacks reason=not_redis:\n%s", logs)
	}
}

func TestMariaDBThroughCore(t *testing.T) {
	m := dbtest.StartMariaDB(t, dbtest.MariaDBOptions{})
	r := serve(t, knoxproxy.Route{Protocol: "mysql", UpstreamHost: m.Host, UpstreamPort: m.Port,
		TLS: knoxproxy.TLS{CAFile: m.Certs.CAFile}}, credsource.Credentials{Username: "native", Password: "secret"})
	cfg := mysql.NewConfig()
	cfg.User = "whoever"
	cfg.Net = "tcp"
	cfg.Addr = r.srv.Addr("it").String()
	cfg.DBName = "appdb"
	connector, err := mysql.NewConnector(cfg)
	if err != nil {
		t.Fatal(err)
	}
	db := sql.OpenDB(connector)
	defer db.Close()
	var user string
	if err := db.QueryRow("select current_user()").Scan(&user); err != nil {
		t.Fatal(err)
	}
	if user != "native@%" {
		t.Errorf("current_user() = %q, want native@%%", user)
	}
}

func TestFerretDBThroughCore(t *testing.T) {
	f := dbtest.StartFerretDB(t, dbtest.FerretDBOptions{})
	r := serve(t, knoxproxy.Route{Protocol: "mongodb", UpstreamHost: f.Host, UpstreamPort: f.Port,
		TLS: knoxproxy.TLS{CAFile: f.Certs.CAFile}}, credsource.Credentials{Username: "app", Password: "secret", AuthSource: "appdb"})
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	client, err := mongo.Connect(ctx, options.Client().ApplyURI("mongodb://"+r.srv.Addr("it").String()+"/?directConnection=true").
		SetServerSelectionTimeout(10*time.Second))
	if err != nil {
		t.Fatal(err)
	}
	defer client.Disconnect(context.Background())
	coll := client.Database("appdb").Collection("it")
	if _, err := coll.InsertOne(ctx, bson.M{"k": "v"}); err != nil {
		t.Fatal(err)
	}
	var got bson.M
	if err := coll.FindOne(ctx, bson.M{"k": "v"}).Decode(&got); err != nil {
		t.Fatal(err)
	}
	if got["k"] != "v" {
		t.Errorf("found %v", got)
	}
}

func waitFor(t *testing.T, limit time.Duration, cond func() bool) {
	t.Helper()
	deadline := time.Now().Add(limit)
	for !cond() {
		if time.Now().After(deadline) {
			t.Fatalf("condition not met within %v", limit)
		}
		time.Sleep(20 * time.Millisecond)
	}
}
