package pgauth

import (
	"bufio"
	"bytes"
	"context"
	"crypto/sha256"
	"errors"
	"fmt"
	"io"
	"net"
	"os"
	"os/exec"
	"path/filepath"
	"strconv"
	"strings"
	"sync/atomic"
	"syscall"
	"testing"
	"time"

	"github.com/jackc/pgx/v5"
	"github.com/jackc/pgx/v5/pgconn"
	"github.com/jackc/pgx/v5/pgconn/ctxwatch"
	"github.com/jackc/pgx/v5/pgxpool"

	"github.com/knoxcall/dbproxy/credsource"
	"github.com/knoxcall/dbproxy/internal/dbtest"
)

// appCreds are the credentials dbtest.StartPostgres gives the role app.
var appCreds = credsource.Credentials{Username: "app", Password: "secret"}

// startPostgres starts PostgreSQL with connection logging, so tests can tell from the
// server log whether a login was authorized.
func startPostgres(t *testing.T, opts dbtest.PostgresOptions) *dbtest.Postgres {
	t.Helper()
	opts.Conf += "\nlog_connections = on\n"
	return dbtest.StartPostgres(t, opts)
}

func pgProxy(t *testing.T, pg *dbtest.Postgres, creds credsource.Credentials) *testProxy {
	t.Helper()
	return startProxy(t, proxyConfig{
		Upstream: fmt.Sprintf("%s:%d", pg.Host, pg.Port),
		Creds:    creds,
		TLS:      pg.Certs.ClientTLS("127.0.0.1"),
	})
}

// psql runs psql against the proxy with no password anywhere in its environment.
func psql(t *testing.T, ctx context.Context, conninfo string, args ...string) *exec.Cmd {
	t.Helper()
	bin := dbtest.LookPath(t, "psql")
	cmd := exec.CommandContext(ctx, bin, append([]string{conninfo, "-X", "-A", "-t", "-v", "ON_ERROR_STOP=1"}, args...)...)
	home := t.TempDir()
	cmd.Env = []string{"HOME=" + home, "PATH=" + os.Getenv("PATH"), "PGUSER=mallory", "PGCONNECT_TIMEOUT=10", "LC_ALL=C"}
	return cmd
}

func pgxConfig(t *testing.T, p *testProxy, extra string) *pgxpool.Config {
	t.Helper()
	cfg, err := pgxpool.ParseConfig(fmt.Sprintf("host=127.0.0.1 port=%d dbname=appdb user=mallory sslmode=prefer connect_timeout=10 %s", p.Port, extra))
	if err != nil {
		t.Fatal(err)
	}
	return cfg
}

func newPool(t *testing.T, p *testProxy, extra string) *pgxpool.Pool {
	t.Helper()
	pool, err := pgxpool.NewWithConfig(t.Context(), pgxConfig(t, p, extra))
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(pool.Close)
	return pool
}

func countInFile(t *testing.T, file, substr string) int {
	t.Helper()
	data, err := os.ReadFile(file)
	if err != nil {
		t.Fatal(err)
	}
	return bytes.Count(data, []byte(substr))
}

// TestPostgresPsql runs psql through the proxy against a server that accepts only TLS with
// scram-sha-256.
func TestPostgresPsql(t *testing.T) {
	pg := startPostgres(t, dbtest.PostgresOptions{})
	p := pgProxy(t, pg, appCreds)

	t.Run("query as stored user", func(t *testing.T) {
		out, err := psql(t, t.Context(), fmt.Sprintf("host=127.0.0.1 port=%d dbname=appdb application_name=probe", p.Port),
			"-c", "select current_user, current_database(), current_setting('application_name'), ssl from pg_stat_ssl where pid = pg_backend_pid()").CombinedOutput()
		if err != nil {
			t.Fatalf("psql: %v\n%s", err, out)
		}
		if got, want := strings.TrimSpace(string(out)), "app|appdb|probe|t"; got != want {
			t.Errorf("psql output = %q, want %q", got, want)
		}
	})

	t.Run("channel binding used", func(t *testing.T) {
		if !strings.Contains(p.Logs.String(), "method=SCRAM-SHA-256-PLUS") {
			t.Errorf("log shows no SCRAM-SHA-256-PLUS login:\n%s", p.Logs.String())
		}
	})

	t.Run("sslmode=require fails", func(t *testing.T) {
		before := len(p.Errors())
		out, err := psql(t, t.Context(), fmt.Sprintf("host=127.0.0.1 port=%d dbname=appdb sslmode=require", p.Port), "-c", "select 1").CombinedOutput()
		if err == nil {
			t.Fatalf("psql with sslmode=require succeeded: %s", out)
		}
		if !strings.Contains(string(out), "server does not support SSL") {
			t.Errorf("psql output %q does not explain the failure", out)
		}
		// The session log line is the only record an operator has, so the error names the cause.
		herr := p.lastError(t, before+1)
		if !errors.Is(herr, ErrClientClosed) {
			t.Errorf("Handshake error = %v, want ErrClientClosed", herr)
		}
		if !errors.Is(herr, ErrEncryptionDeclined) {
			t.Errorf("Handshake error = %v, want ErrEncryptionDeclined", herr)
		}
		if herr == nil || !strings.Contains(herr.Error(), "requires TLS (sslmode=require") {
			t.Errorf("Handshake error = %v, want it to name sslmode=require as the likely cause", herr)
		}
	})

	t.Run("Ctrl-C cancels the query", func(t *testing.T) {
		cmd := psql(t, t.Context(), fmt.Sprintf("host=127.0.0.1 port=%d dbname=appdb", p.Port), "-c", "select pg_sleep(30)")
		var out bytes.Buffer
		cmd.Stdout, cmd.Stderr = &out, &out
		if err := cmd.Start(); err != nil {
			t.Fatal(err)
		}
		waitForSleep(t, pg)
		start := time.Now()
		cmd.Process.Signal(syscall.SIGINT)
		err := cmd.Wait()
		elapsed := time.Since(start)
		if err == nil {
			t.Errorf("psql exited 0 after Ctrl-C: %s", out.String())
		}
		if !strings.Contains(out.String(), "canceling statement due to user request") {
			t.Errorf("psql output %q shows no cancellation", out.String())
		}
		if elapsed > time.Second {
			t.Errorf("query ended %v after Ctrl-C, want under 1 s", elapsed)
		}
		checkNoSleep(t, pg)
	})
}

// waitForSleep waits until a pg_sleep query runs on the server.
func waitForSleep(t *testing.T, pg *dbtest.Postgres) {
	t.Helper()
	for range 100 {
		if pg.Exec(t, "select count(*) from pg_stat_activity where query like 'select pg_sleep%' and state = 'active'") != "0" {
			return
		}
		time.Sleep(50 * time.Millisecond)
	}
	t.Fatal("pg_sleep did not start within 5 s")
}

func checkNoSleep(t *testing.T, pg *dbtest.Postgres) {
	t.Helper()
	if n := pg.Exec(t, "select count(*) from pg_stat_activity where query like 'select pg_sleep%' and state = 'active'"); n != "0" {
		t.Errorf("%s pg_sleep queries still active on the server", n)
	}
}

// TestPostgresPgx runs pgx through the proxy: both query protocols, prepared statements,
// LISTEN/NOTIFY, large COPY both ways, cancellation and protocol negotiation.
func TestPostgresPgx(t *testing.T) {
	pg := startPostgres(t, dbtest.PostgresOptions{})
	p := pgProxy(t, pg, appCreds)
	pool := newPool(t, p, "")
	ctx := t.Context()

	t.Run("simple protocol", func(t *testing.T) {
		var user string
		err := pool.QueryRow(ctx, "select current_user", pgx.QueryExecModeSimpleProtocol).Scan(&user)
		if err != nil {
			t.Fatal(err)
		}
		if user != "app" {
			t.Errorf("current_user = %q, want app", user)
		}
	})

	t.Run("extended protocol", func(t *testing.T) {
		var n int
		if err := pool.QueryRow(ctx, "select $1::int + 1", 41).Scan(&n); err != nil {
			t.Fatal(err)
		}
		if n != 42 {
			t.Errorf("got %d, want 42", n)
		}
	})

	t.Run("prepared statement", func(t *testing.T) {
		conn, err := pool.Acquire(ctx)
		if err != nil {
			t.Fatal(err)
		}
		defer conn.Release()
		if _, err := conn.Conn().Prepare(ctx, "upper", "select upper($1::text)"); err != nil {
			t.Fatal(err)
		}
		for _, in := range []string{"a", "bc"} {
			var out string
			if err := conn.QueryRow(ctx, "upper", in).Scan(&out); err != nil {
				t.Fatal(err)
			}
			if out != strings.ToUpper(in) {
				t.Errorf("upper(%q) = %q", in, out)
			}
		}
	})

	t.Run("LISTEN and NOTIFY", func(t *testing.T) {
		listener, err := pool.Acquire(ctx)
		if err != nil {
			t.Fatal(err)
		}
		defer listener.Release()
		if _, err := listener.Exec(ctx, "listen events"); err != nil {
			t.Fatal(err)
		}
		if _, err := pool.Exec(ctx, "select pg_notify('events', 'hello')"); err != nil {
			t.Fatal(err)
		}
		waitCtx, cancel := context.WithTimeout(ctx, 5*time.Second)
		defer cancel()
		n, err := listener.Conn().WaitForNotification(waitCtx)
		if err != nil {
			t.Fatal(err)
		}
		if n.Channel != "events" || n.Payload != "hello" {
			t.Errorf("notification = %s/%s, want events/hello", n.Channel, n.Payload)
		}
	})

	t.Run("COPY 64 MiB both ways", func(t *testing.T) {
		testCopy(t, pool, 64<<20)
	})

	t.Run("context cancel stops pg_sleep", func(t *testing.T) {
		// pgx v5's default handler only sets a deadline on cancel; this one sends a
		// CancelRequest, on a new connection through the proxy.
		cfg := pgxConfig(t, p, "")
		cfg.ConnConfig.BuildContextWatcherHandler = func(c *pgconn.PgConn) ctxwatch.Handler {
			return &pgconn.CancelRequestContextWatcherHandler{Conn: c, DeadlineDelay: 3 * time.Second}
		}
		conn, err := pgconn.ConnectConfig(ctx, cfg.ConnConfig.Config.Copy())
		if err != nil {
			t.Fatal(err)
		}
		defer conn.Close(ctx)
		qctx, cancel := context.WithCancel(ctx)
		done := make(chan error, 1)
		go func() {
			_, err := conn.Exec(qctx, "select pg_sleep(30)").ReadAll()
			done <- err
		}()
		waitForSleep(t, pg)
		start := time.Now()
		cancel()
		err = <-done
		elapsed := time.Since(start)
		var pgErr *pgconn.PgError
		// 57014 (query_canceled) comes from the server, so the CancelRequest reached it; a
		// lost cancel would end in pgx's own deadline instead.
		if !errors.As(err, &pgErr) || pgErr.Code != "57014" {
			t.Errorf("error = %v, want SQLSTATE 57014 from the server", err)
		}
		if elapsed > time.Second {
			t.Errorf("query ended %v after the cancel, want under 1 s", elapsed)
		}
		checkNoSleep(t, pg)
		if n := countCancels(p); n == 0 {
			t.Error("no Handshake returned ErrCancelRequest")
		}
	})

	t.Run("raw CancelRequest after SSLRequest", func(t *testing.T) {
		conn, err := pgconn.ConnectConfig(ctx, pgxConfig(t, p, "").ConnConfig.Config.Copy())
		if err != nil {
			t.Fatal(err)
		}
		defer conn.Close(ctx)
		done := make(chan error, 1)
		go func() {
			_, err := conn.Exec(ctx, "select pg_sleep(30)").ReadAll()
			done <- err
		}()
		waitForSleep(t, pg)
		start := time.Now()
		sendCancel(t, p.Addr(), conn.PID(), conn.SecretKey())
		select {
		case err := <-done:
			var pgErr *pgconn.PgError
			if !errors.As(err, &pgErr) || pgErr.Code != "57014" {
				t.Errorf("error = %v, want SQLSTATE 57014", err)
			}
		case <-time.After(5 * time.Second):
			t.Fatal("query still running 5 s after the CancelRequest")
		}
		if elapsed := time.Since(start); elapsed > time.Second {
			t.Errorf("query ended %v after the CancelRequest, want under 1 s", elapsed)
		}
	})

	t.Run("protocol 3.2 requested", func(t *testing.T) {
		cfg := pgxConfig(t, p, "max_protocol_version=3.2")
		conn, err := pgconn.ConnectConfig(ctx, cfg.ConnConfig.Config.Copy())
		if err != nil {
			t.Fatalf("connect with max_protocol_version=3.2: %v", err)
		}
		defer conn.Close(ctx)
		if _, err := conn.Exec(ctx, "select 1").ReadAll(); err != nil {
			t.Fatal(err)
		}
	})

	t.Run("missing database defaults to stored user", func(t *testing.T) {
		cfg := pgxConfig(t, p, "")
		cfg.ConnConfig.Database = ""
		before := len(p.Errors())
		_, err := pgconn.ConnectConfig(ctx, cfg.ConnConfig.Config.Copy())
		var pgErr *pgconn.PgError
		if !errors.As(err, &pgErr) || pgErr.Code != "3D000" {
			t.Fatalf("error = %v, want SQLSTATE 3D000 for database app", err)
		}
		if !strings.Contains(pgErr.Message, `"app"`) {
			t.Errorf("message %q does not name database app", pgErr.Message)
		}
		// pgx may first try TLS and reconnect, so the rejected session need not be the first.
		herr := p.lastError(t, before+1)
		if !errors.Is(herr, ErrUpstreamRejected) {
			herr = p.lastError(t, before+2)
		}
		if !errors.Is(herr, ErrUpstreamRejected) || errors.Is(herr, ErrAuthFailed) {
			t.Errorf("Handshake error %v, want ErrUpstreamRejected and not ErrAuthFailed", herr)
		}
	})
}

// sendCancel sends a CancelRequest as libpq 17 does when sslmode=prefer: an SSLRequest
// first, then, after 'N', the CancelRequest. It waits for the proxy to close the connection.
func sendCancel(t *testing.T, addr string, pid uint32, key []byte) {
	t.Helper()
	c := dialClient(t, addr)
	c.Write(sslRequest)
	var reply [1]byte
	if _, err := io.ReadFull(c, reply[:]); err != nil || reply[0] != 'N' {
		t.Fatalf("SSLRequest reply = %q, %v; want N", reply, err)
	}
	msg := []byte{0, 0, 0, byte(12 + len(key)), 0x04, 0xd2, 0x16, 0x2e,
		byte(pid >> 24), byte(pid >> 16), byte(pid >> 8), byte(pid)}
	c.Write(append(msg, key...))
	rest, err := io.ReadAll(c)
	if err != nil || len(rest) != 0 {
		t.Errorf("after CancelRequest got %q, %v; want a close with no reply", rest, err)
	}
}

func countCancels(p *testProxy) int {
	n := 0
	for _, err := range p.Errors() {
		if errors.Is(err, ErrCancelRequest) {
			n++
		}
	}
	return n
}

// testCopy sends size bytes with COPY FROM STDIN, reads them back with COPY TO STDOUT and
// compares SHA-256 sums.
func testCopy(t *testing.T, pool *pgxpool.Pool, size int) {
	ctx := t.Context()
	conn, err := pool.Acquire(ctx)
	if err != nil {
		t.Fatal(err)
	}
	defer conn.Release()
	if _, err := conn.Exec(ctx, "create temp table copied (n int, line text)"); err != nil {
		t.Fatal(err)
	}

	const lineLength = 128
	lines := size / lineLength
	in := sha256.New()
	pr, pw := io.Pipe()
	go func() {
		// COPY TO writes integers without padding, so the generated n column has none; the
		// text column fills each line to lineLength bytes.
		w := bufio.NewWriterSize(io.MultiWriter(pw, in), 64<<10)
		pad := strings.Repeat("x", lineLength)
		for i := range lines {
			n := strconv.Itoa(i)
			fmt.Fprintf(w, "%s\t%s\n", n, pad[:lineLength-len(n)-2])
		}
		w.Flush()
		pw.Close()
	}()
	start := time.Now()
	tag, err := conn.Conn().PgConn().CopyFrom(ctx, pr, "copy copied from stdin")
	if err != nil {
		t.Fatalf("COPY FROM: %v", err)
	}
	if tag.RowsAffected() != int64(lines) {
		t.Errorf("COPY FROM rows = %d, want %d", tag.RowsAffected(), lines)
	}
	t.Logf("COPY FROM %d MiB took %v", size>>20, time.Since(start))

	start = time.Now()
	out := sha256.New()
	counter := &countingWriter{w: out}
	if _, err := conn.Conn().PgConn().CopyTo(ctx, counter, "copy (select * from copied order by n) to stdout"); err != nil {
		t.Fatalf("COPY TO: %v", err)
	}
	t.Logf("COPY TO %d MiB took %v", counter.n.Load()>>20, time.Since(start))
	if !bytes.Equal(in.Sum(nil), out.Sum(nil)) {
		t.Errorf("COPY TO checksum %x differs from COPY FROM %x (%d bytes back)", out.Sum(nil), in.Sum(nil), counter.n.Load())
	}
}

type countingWriter struct {
	w io.Writer
	n atomic.Int64
}

func (c *countingWriter) Write(p []byte) (int, error) {
	c.n.Add(int64(len(p)))
	return c.w.Write(p)
}

// TestPostgresAuthFailures covers a wrong stored password, the canary, an upstream
// certificate for another host name, and a rotated password with Redial.
func TestPostgresAuthFailures(t *testing.T) {
	pg := startPostgres(t, dbtest.PostgresOptions{})
	serverLog := filepath.Join(pg.Dir, "server.log")
	ctx := t.Context()

	t.Run("wrong password reaches client as 28P01", func(t *testing.T) {
		p := pgProxy(t, pg, credsource.Credentials{Username: "app", Password: canaryPassword})
		// With sslmode=prefer pgx would make a first connection that ends at the 'N'.
		_, err := pgconn.ConnectConfig(ctx, pgxConfig(t, p, "sslmode=disable").ConnConfig.Config.Copy())
		var pgErr *pgconn.PgError
		if !errors.As(err, &pgErr) || pgErr.Code != "28P01" {
			t.Fatalf("error = %v, want SQLSTATE 28P01", err)
		}
		if herr := p.lastError(t, 1); !errors.Is(herr, ErrAuthFailed) {
			t.Errorf("Handshake error = %v, want ErrAuthFailed", herr)
		}
		out, _ := psql(t, ctx, fmt.Sprintf("host=127.0.0.1 port=%d dbname=appdb", p.Port), "-c", "select 1").CombinedOutput()
		if !strings.Contains(string(out), "password authentication failed") {
			t.Errorf("psql output %q does not show the server's error", out)
		}
		checkNoCanary(t, p, err.Error(), string(out))
	})

	t.Run("certificate for another host", func(t *testing.T) {
		before := countInFile(t, serverLog, "connection authorized")
		p := startProxy(t, proxyConfig{
			Upstream: fmt.Sprintf("%s:%d", pg.Host, pg.Port),
			Creds:    appCreds,
			TLS:      pg.Certs.ClientTLS("db.example.com"),
		})
		_, err := pgconn.ConnectConfig(ctx, pgxConfig(t, p, "sslmode=disable").ConnConfig.Config.Copy())
		var pgErr *pgconn.PgError
		if !errors.As(err, &pgErr) || pgErr.Code != codeConnectionFailure {
			t.Fatalf("error = %v, want SQLSTATE 08006", err)
		}
		for _, want := range []string{`dbproxy route "testroute"`, "certificate"} {
			if !strings.Contains(pgErr.Message, want) {
				t.Errorf("message %q does not contain %q", pgErr.Message, want)
			}
		}
		time.Sleep(200 * time.Millisecond) // let the server write its log
		if after := countInFile(t, serverLog, "connection authorized"); after != before {
			t.Errorf("server authorized %d logins during the refused session", after-before)
		}
	})

	t.Run("redial after rotation", func(t *testing.T) {
		pg.Exec(t, "create role rotor login password 'new-password'")
		pg.Exec(t, "grant all on database appdb to rotor")
		var redials atomic.Int32
		upstreamAddr := fmt.Sprintf("%s:%d", pg.Host, pg.Port)
		p := startProxy(t, proxyConfig{
			Upstream: upstreamAddr,
			Creds:    credsource.Credentials{Username: "rotor", Password: canaryPassword},
			TLS:      pg.Certs.ClientTLS("127.0.0.1"),
			Redial: func(ctx context.Context) (net.Conn, credsource.Credentials, error) {
				redials.Add(1)
				c, err := (&net.Dialer{}).DialContext(ctx, "tcp", upstreamAddr)
				return c, credsource.Credentials{Username: "rotor", Password: "new-password"}, err
			},
		})
		pool := newPool(t, p, "")
		var user string
		if err := pool.QueryRow(ctx, "select current_user").Scan(&user); err != nil {
			t.Fatalf("query after rotation: %v", err)
		}
		if user != "rotor" {
			t.Errorf("current_user = %q, want rotor", user)
		}
		if n := redials.Load(); n != 1 {
			t.Errorf("Redial called %d times, want 1", n)
		}
		checkNoCanary(t, p)
	})

	t.Run("redial with unchanged credentials", func(t *testing.T) {
		p := startProxy(t, proxyConfig{
			Upstream: fmt.Sprintf("%s:%d", pg.Host, pg.Port),
			Creds:    credsource.Credentials{Username: "app", Password: canaryPassword},
			TLS:      pg.Certs.ClientTLS("127.0.0.1"),
			Redial: func(ctx context.Context) (net.Conn, credsource.Credentials, error) {
				return nil, credsource.Credentials{}, fmt.Errorf("fetch secret: %w", ErrCredentialsUnchanged)
			},
		})
		// With sslmode=prefer pgx would make a first connection that ends at the 'N'.
		_, err := pgconn.ConnectConfig(ctx, pgxConfig(t, p, "sslmode=disable").ConnConfig.Config.Copy())
		var pgErr *pgconn.PgError
		if !errors.As(err, &pgErr) || pgErr.Code != "28P01" {
			t.Fatalf("error = %v, want SQLSTATE 28P01", err)
		}
		if herr := p.lastError(t, 1); !errors.Is(herr, ErrAuthFailed) {
			t.Errorf("Handshake error = %v, want ErrAuthFailed", herr)
		}
	})
}

// TestPostgresPasswordMethods logs in with MD5 and cleartext password authentication.
func TestPostgresPasswordMethods(t *testing.T) {
	tests := []struct {
		name, hba, conf, wantMethod string
	}{
		{"md5", "hostssl all all 127.0.0.1/32 md5", "password_encryption = 'md5'", "method=md5"},
		{"cleartext", "hostssl all all 127.0.0.1/32 password", "", "method=password"},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			pg := startPostgres(t, dbtest.PostgresOptions{HBA: tt.hba, Conf: tt.conf})
			if tt.name == "md5" {
				if got := pg.Exec(t, "select left(rolpassword, 3) from pg_authid where rolname = 'app'"); got != "md5" {
					t.Fatalf("stored password starts with %q, want md5", got)
				}
			}
			p := pgProxy(t, pg, appCreds)
			pool := newPool(t, p, "")
			var user string
			if err := pool.QueryRow(t.Context(), "select current_user").Scan(&user); err != nil {
				t.Fatal(err)
			}
			if user != "app" {
				t.Errorf("current_user = %q, want app", user)
			}
			if !strings.Contains(p.Logs.String(), tt.wantMethod) {
				t.Errorf("log shows no %s login:\n%s", tt.wantMethod, p.Logs.String())
			}
		})
	}
}

// BenchmarkLogin measures a full login through the proxy (client startup, upstream TLS and
// SCRAM-SHA-256-PLUS with the cached salted password) against a direct TLS login with
// SCRAM from pgx, which derives the salted password on every connection.
func BenchmarkLogin(b *testing.B) {
	pg := dbtest.StartPostgres(b, dbtest.PostgresOptions{})
	b.Run("through proxy", func(b *testing.B) {
		p := startProxy(b, proxyConfig{
			Upstream: fmt.Sprintf("%s:%d", pg.Host, pg.Port),
			Creds:    appCreds,
			TLS:      pg.Certs.ClientTLS("127.0.0.1"),
		})
		cfg, err := pgconn.ParseConfig(fmt.Sprintf("host=127.0.0.1 port=%d dbname=appdb sslmode=disable", p.Port))
		if err != nil {
			b.Fatal(err)
		}
		benchConnect(b, cfg)
	})
	b.Run("direct", func(b *testing.B) {
		cfg, err := pgconn.ParseConfig(fmt.Sprintf("host=127.0.0.1 port=%d dbname=appdb user=app password=secret sslmode=verify-full sslrootcert=%s", pg.Port, pg.Certs.CAFile))
		if err != nil {
			b.Fatal(err)
		}
		benchConnect(b, cfg)
	})
}

func benchConnect(b *testing.B, cfg *pgconn.Config) {
	for b.Loop() {
		conn, err := pgconn.ConnectConfig(b.Context(), cfg)
		if err != nil {
			b.Fatal(err)
		}
		conn.Close(b.Context())
	}
}
