package myauth

import (
	"context"
	"crypto/tls"
	"database/sql"
	"errors"
	"fmt"
	"log/slog"
	"net"
	"sync"
	"testing"
	"time"

	gomysql "github.com/go-sql-driver/mysql"

	"github.com/knoxcall/dbproxy/credsource"
	"github.com/knoxcall/dbproxy/internal/dbtest"
	"github.com/knoxcall/dbproxy/internal/splice"
)

// testProxy is a minimal agent for one route: it accepts on 127.0.0.1, dials the upstream,
// runs Handshake and splices, as the core does.
type testProxy struct {
	Addr string

	mu     sync.Mutex
	errs   []error
	logins int
}

type proxyConfig struct {
	upstream string
	creds    credsource.Credentials
	tls      *tls.Config
	redial   func(ctx context.Context) (net.Conn, credsource.Credentials, error)
	timeout  time.Duration
	logger   *slog.Logger
}

func startProxy(t testing.TB, cfg proxyConfig) *testProxy {
	t.Helper()
	if cfg.timeout == 0 {
		cfg.timeout = 10 * time.Second
	}
	p := &testProxy{}
	p.Addr = dbtest.ServeLoopback(t, func(c net.Conn) { p.serve(c, cfg) }).String()
	return p
}

func (p *testProxy) serve(c net.Conn, cfg proxyConfig) {
	defer c.Close()
	ctx, cancel := context.WithTimeout(context.Background(), cfg.timeout)
	defer cancel()
	up, err := (&net.Dialer{}).DialContext(ctx, "tcp", cfg.upstream)
	if err != nil {
		p.record(err)
		Reject(ctx, c, "test-route", fmt.Errorf("upstream unreachable: %w", err))
		return
	}
	defer up.Close()
	conns, err := Handshake(ctx, c, up, cfg.creds, Options{Route: "test-route", TLSConfig: cfg.tls,
		Redial: cfg.redial, Logger: cfg.logger})
	p.record(err)
	if err != nil {
		return
	}
	defer conns.Upstream.Close()
	splice.Run(conns.Client, conns.Upstream)
}

func (p *testProxy) record(err error) {
	p.mu.Lock()
	defer p.mu.Unlock()
	if err == nil {
		p.logins++
		return
	}
	p.errs = append(p.errs, err)
}

// Logins returns how many Handshakes have succeeded.
func (p *testProxy) Logins() int {
	p.mu.Lock()
	defer p.mu.Unlock()
	return p.logins
}

// Errors returns the Handshake errors so far.
func (p *testProxy) Errors() []error {
	p.mu.Lock()
	defer p.mu.Unlock()
	return append([]error(nil), p.errs...)
}

// openDB opens a go-sql-driver/mysql pool through the proxy, without password or TLS, and
// closes it when the test ends.
func openDB(t *testing.T, addr, params string) *sql.DB {
	t.Helper()
	dsn := fmt.Sprintf("app@tcp(%s)/appdb?timeout=10s", addr)
	if params != "" {
		dsn += "&" + params
	}
	db, err := sql.Open("mysql", dsn)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { db.Close() })
	return db
}

// mysqlErrorNumber returns the server error number in err, or 0.
func mysqlErrorNumber(err error) uint16 {
	var me *gomysql.MySQLError
	if errors.As(err, &me) {
		return me.Number
	}
	return 0
}
