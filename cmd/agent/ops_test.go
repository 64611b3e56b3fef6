package main

import (
	"bytes"
	"context"
	"errors"
	"fmt"
	"io"
	"net"
	"net/http"
	"os"
	"os/exec"
	"path/filepath"
	"regexp"
	"strconv"
	"strings"
	"syscall"
	"testing"
	"time"

	"github.com/jackc/pgx/v5"
	"github.com/redis/go-redis/v9"

	"github.com/knoxcall/dbproxy/internal/dbtest"
)

// runConfig writes config (and secrets, if not empty) into a temp dir and runs the agent
// on it in-process until the test ends. It returns the agent and the config path.
func runConfig(t *testing.T, config, secrets string) (*agent, string) {
	t.Helper()
	dir := t.TempDir()
	a := &agent{logs: &dbtest.LogBuffer{}, done: make(chan error, 1), secrets: filepath.Join(dir, "secrets.yaml")}
	if secrets != "" {
		dbtest.ReplaceFile(t, a.secrets, secrets)
	}
	path := filepath.Join(dir, "agent.yaml")
	dbtest.ReplaceFile(t, path, config)
	ctx, cancel := context.WithCancel(context.Background())
	a.cancel = cancel
	go func() {
		a.done <- run(ctx, []string{"-config", path, "-log-level", "debug"}, a.logs, a.logs)
	}()
	t.Cleanup(func() {
		a.stop(t)
		if strings.Contains(a.logs.String(), canary) {
			t.Errorf("the agent log contains the password:\n%s", a.logs)
		}
	})
	return a, path
}

// waitListening waits until port accepts TCP connections, or fails the test.
func waitListening(t *testing.T, a *agent, port int) {
	t.Helper()
	for i := 0; ; i++ {
		c, err := net.Dial("tcp", net.JoinHostPort("127.0.0.1", strconv.Itoa(port)))
		if err == nil {
			c.Close()
			return
		}
		select {
		case err := <-a.done:
			t.Fatalf("agent exited: %v\n%s", err, a.logs)
		default:
		}
		if i > 200 {
			t.Fatalf("port %d not listening after 10s:\n%s", port, a.logs)
		}
		time.Sleep(50 * time.Millisecond)
	}
}

func pgRoute(name string, port int, pg *dbtest.Postgres, secretID, extra string) string {
	return fmt.Sprintf(`  - name: %s
    protocol: postgres
    local_port: %d
    upstream_host: 127.0.0.1
    upstream_port: %d
    committed_secret_id: %s
    dial_timeout: 2s
    tls: {ca_file: %s}
%s`, name, port, pg.Port, secretID, pg.Certs.CAFile, extra)
}

func pgConnect(t *testing.T, port int) *pgx.Conn {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	conn, err := pgx.Connect(ctx, fmt.Sprintf("host=127.0.0.1 port=%d dbname=appdb sslmode=disable user=x", port))
	if err != nil {
		t.Fatalf("connect through port %d: %v", port, err)
	}
	t.Cleanup(func() { conn.Close(context.Background()) })
	return conn
}

func queryInt(conn *pgx.Conn, sql string) (int, error) {
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	var n int
	err := conn.QueryRow(ctx, sql).Scan(&n)
	return n, err
}

func httpGet(t *testing.T, url string) (int, string) {
	t.Helper()
	client := &http.Client{Timeout: 5 * time.Second}
	resp, err := client.Get(url)
	if err != nil {
		t.Fatalf("GET %s: %v", url, err)
	}
	defer resp.Body.Close()
	body, _ := io.ReadAll(resp.Body)
	return resp.StatusCode, string(body)
}

// metricValue returns the value of the sample whose name and labels start with series, or
// -1 when the scrape has none.
func metricValue(t *testing.T, scrape, series string) float64 {
	t.Helper()
	re := regexp.MustCompile(`(?m)^` + regexp.QuoteMeta(series) + ` (\S+)$`)
	m := re.FindStringSubmatch(scrape)
	if m == nil {
		return -1
	}
	v, err := strconv.ParseFloat(m[1], 64)
	if err != nil {
		t.Fatalf("sample %s: %v", series, err)
	}
	return v
}

func TestAdminEndpointsWhileSessionsRun(t *testing.T) {
	pg := startPG(t)
	port, adminPort := dbtest.FreePort(t), dbtest.FreePort(t)
	config := fmt.Sprintf("credentials: {source: file, path: secrets.yaml}\nadmin_address: 127.0.0.1:%d\nroutes:\n%s",
		adminPort, pgRoute("orders", port, pg, "sec_orders", "    max_connections: 2\n"))
	a, _ := runConfig(t, config, fmt.Sprintf("secrets:\n  sec_orders: {username: app, password: %q}\n", canary))
	waitListening(t, a, port)
	admin := fmt.Sprintf("http://127.0.0.1:%d", adminPort)

	if code, body := httpGet(t, admin+"/healthz"); code != 200 {
		t.Errorf("healthz = %d %q, want 200", code, body)
	}
	if code, body := httpGet(t, admin+"/readyz"); code != 200 {
		t.Errorf("readyz before any session = %d %q, want 200", code, body)
	}

	// One session open, with some traffic.
	first := pgConnect(t, port)
	if _, err := queryInt(first, "select count(*) from generate_series(1, 1000)"); err != nil {
		t.Fatal(err)
	}
	_, scrape := httpGet(t, admin+"/metrics")
	if v := metricValue(t, scrape, `dbproxy_sessions_open{protocol="postgres",route="orders"}`); v != 1 {
		t.Errorf("sessions_open = %v, want 1", v)
	}
	toClient := metricValue(t, scrape, `dbproxy_bytes_total{direction="to_client",route="orders"}`)
	if toClient <= 0 {
		t.Errorf("bytes to client = %v, want > 0 during the session", toClient)
	}
	if v := metricValue(t, scrape, `dbproxy_login_duration_seconds_count{outcome="ok",protocol="postgres",route="orders"}`); v != 1 {
		t.Errorf("login duration count = %v, want 1", v)
	}
	if code, _ := httpGet(t, admin+"/readyz"); code != 200 {
		t.Errorf("readyz with 1 of 2 sessions = %d, want 200", code)
	}

	// More traffic moves the byte counter while the session stays open.
	if _, err := queryInt(first, "select length(repeat('x', 100000))"); err != nil {
		t.Fatal(err)
	}
	_, scrape = httpGet(t, admin+"/metrics")
	if v := metricValue(t, scrape, `dbproxy_bytes_total{direction="to_client",route="orders"}`); v <= toClient {
		t.Errorf("bytes to client = %v after a query, want more than %v", v, toClient)
	}

	// At the limit the agent is not ready, and one more client is rejected.
	second := pgConnect(t, port)
	code, body := httpGet(t, admin+"/readyz")
	if code != http.StatusServiceUnavailable || !strings.Contains(body, "max_connections") {
		t.Errorf("readyz at the limit = %d %q, want 503 naming max_connections", code, body)
	}
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	if c, err := pgx.Connect(ctx, fmt.Sprintf("host=127.0.0.1 port=%d dbname=appdb sslmode=disable", port)); err == nil {
		c.Close(ctx)
		t.Error("third connection succeeded beyond max_connections 2")
	}
	_, scrape = httpGet(t, admin+"/metrics")
	if v := metricValue(t, scrape, `dbproxy_peer_rejections_total{reason="too_many_connections",route="orders"}`); v != 1 {
		t.Errorf("too_many_connections rejections = %v, want 1", v)
	}

	// Closing the sessions brings the gauge down and the totals up.
	first.Close(ctx)
	second.Close(ctx)
	deadline := time.Now().Add(5 * time.Second)
	for {
		_, scrape = httpGet(t, admin+"/metrics")
		if metricValue(t, scrape, `dbproxy_sessions_open{protocol="postgres",route="orders"}`) == 0 || time.Now().After(deadline) {
			break
		}
		time.Sleep(50 * time.Millisecond)
	}
	for _, tc := range []struct {
		series string
		want   float64
	}{
		{`dbproxy_sessions_open{protocol="postgres",route="orders"}`, 0},
		{`dbproxy_sessions_total{outcome="ok",route="orders"}`, 2},
		{`dbproxy_sessions_total{outcome="too_many_connections",route="orders"}`, 1},
		{`dbproxy_credential_fetches_total{result="ok",route="orders"}`, 2},
		// The fetch at start fills the cache, so both sessions are cache hits.
		{`dbproxy_credential_cache_hits_total`, 2},
		{`dbproxy_credential_source_fetches_total`, 1},
		{`dbproxy_route_credentials_ok{route="orders"}`, 1},
	} {
		if v := metricValue(t, scrape, tc.series); v != tc.want {
			t.Errorf("%s = %v, want %v", tc.series, v, tc.want)
		}
	}
	if code, _ := httpGet(t, admin+"/readyz"); code != 200 {
		t.Errorf("readyz after the sessions closed = %d, want 200", code)
	}
}

func TestAdminCountsAuthFailures(t *testing.T) {
	pg := startPG(t)
	port, adminPort := dbtest.FreePort(t), dbtest.FreePort(t)
	config := fmt.Sprintf("credentials: {source: file, path: secrets.yaml}\nadmin_address: 127.0.0.1:%d\nroutes:\n%s",
		adminPort, pgRoute("orders", port, pg, "sec_orders", "")+pgRoute("missing", dbtest.FreePort(t), pg, "sec_missing", ""))
	a, _ := runConfig(t, config, "secrets:\n  sec_orders: {username: app, password: wrong}\n")
	waitListening(t, a, port)
	if out, err := psql(t, fmt.Sprintf("host=127.0.0.1 port=%d dbname=appdb sslmode=disable", port), "select 1"); err == nil {
		t.Fatalf("psql succeeded with a wrong password: %s", out)
	}
	admin := fmt.Sprintf("http://127.0.0.1:%d", adminPort)
	waitLog(t, a.logs, "outcome=upstream_auth_failed", 5*time.Second)
	_, scrape := httpGet(t, admin+"/metrics")
	if v := metricValue(t, scrape, `dbproxy_upstream_auth_failures_total{route="orders"}`); v != 1 {
		t.Errorf("upstream auth failures = %v, want 1", v)
	}
	if v := metricValue(t, scrape, `dbproxy_sessions_total{outcome="upstream_auth_failed",route="orders"}`); v != 1 {
		t.Errorf("sessions_total upstream_auth_failed = %v, want 1", v)
	}

	// A route whose secret is missing makes the agent unready after its first fetch.
	missingPort := 0
	for _, line := range strings.Split(a.logs.String(), "\n") {
		if strings.Contains(line, "route=missing") && strings.Contains(line, "route listening") {
			_, p, _ := net.SplitHostPort(regexp.MustCompile(`listen=(\S+)`).FindStringSubmatch(line)[1])
			missingPort, _ = strconv.Atoi(p)
		}
	}
	psql(t, fmt.Sprintf("host=127.0.0.1 port=%d dbname=appdb sslmode=disable", missingPort), "select 1")
	code, body := httpGet(t, admin+"/readyz")
	if code != http.StatusServiceUnavailable || !strings.Contains(body, `route "missing": credentials unavailable`) {
		t.Errorf("readyz = %d %q, want 503 naming route missing", code, body)
	}
	_, scrape = httpGet(t, admin+"/metrics")
	// One error from the fetch at start, one from the session, and one more for each
	// background retry that ran since.
	if v := metricValue(t, scrape, `dbproxy_credential_source_errors_total`); v < 2 {
		t.Errorf("credential source errors = %v, want at least 2", v)
	}
}

func TestAdminAddressMustBeLoopback(t *testing.T) {
	dir := t.TempDir()
	os.WriteFile(filepath.Join(dir, "secrets.yaml"), []byte("secrets:\n  s: {username: u, password: p}\n"), 0o600)
	for _, address := range []string{"0.0.0.0:9090", ":9090", "192.168.1.1:9090", "[::]:9090", "127.0.0.1"} {
		config := "credentials: {source: file, path: secrets.yaml}\nadmin_address: \"" + address + "\"\n" +
			"routes:\n  - {name: r, protocol: postgres, upstream_host: db, upstream_port: 5432, committed_secret_id: s}\n"
		path := filepath.Join(dir, "agent.yaml")
		os.WriteFile(path, []byte(config), 0o600)
		var stderr bytes.Buffer
		err := run(context.Background(), []string{"-config", path}, &stderr, &stderr)
		if !errors.Is(err, errUsage) || !strings.Contains(err.Error(), "admin_address") {
			t.Errorf("admin_address %s: run = %v, want a usage error naming admin_address", address, err)
		}
	}
}

func TestReloadAddsAndRemovesRoutesUnderTraffic(t *testing.T) {
	pg := startPG(t)
	portA, portB := dbtest.FreePort(t), dbtest.FreePort(t)
	head := "credentials: {source: file, path: secrets.yaml}\nconfig_check_interval: 100ms\nroutes:\n"
	a, path := runConfig(t, head+pgRoute("a", portA, pg, "sec_orders", ""),
		fmt.Sprintf("secrets:\n  sec_orders: {username: app, password: %q}\n", canary))
	waitListening(t, a, portA)

	// Traffic on route a keeps running through both reloads below.
	connA := pgConnect(t, portA)
	stopTraffic := make(chan struct{})
	trafficErr := make(chan error, 1)
	queries := 0
	go func() {
		for {
			select {
			case <-stopTraffic:
				trafficErr <- nil
				return
			default:
			}
			if _, err := queryInt(connA, "select 1"); err != nil {
				trafficErr <- err
				return
			}
			queries++
		}
	}()

	// Add route b: a's session is not touched.
	dbtest.ReplaceFile(t, path, head+pgRoute("a", portA, pg, "sec_orders", "")+pgRoute("b", portB, pg, "sec_orders", ""))
	waitListening(t, a, portB)
	connB := pgConnect(t, portB)
	if n, err := queryInt(connB, "select 2"); err != nil || n != 2 {
		t.Fatalf("query through the added route = %d, %v", n, err)
	}

	// An invalid config keeps both routes.
	dbtest.ReplaceFile(t, path, head+"  - {name: broken, protocol: oracle}\n")
	waitLog(t, a.logs, "reload failed: keeping the running configuration", 5*time.Second)
	if n, err := queryInt(connB, "select 3"); err != nil || n != 3 {
		t.Fatalf("query through route b after an invalid reload = %d, %v", n, err)
	}

	close(stopTraffic)
	if err := <-trafficErr; err != nil {
		t.Fatalf("traffic on route a failed during the reloads: %v", err)
	}
	if queries == 0 {
		t.Fatal("no query ran on route a during the reloads")
	}

	// Remove route a: its live session is closed and its port stops accepting.
	dbtest.ReplaceFile(t, path, head+pgRoute("b", portB, pg, "sec_orders", ""))
	waitLog(t, a.logs, `msg="route removed" route=a`, 5*time.Second)
	if _, err := queryInt(connA, "select 1"); err == nil {
		t.Error("query on the removed route's session succeeded, want it closed")
	}
	if c, err := net.DialTimeout("tcp", net.JoinHostPort("127.0.0.1", strconv.Itoa(portA)), time.Second); err == nil {
		c.Close()
		t.Error("the removed route's port still accepts connections")
	}
	if n, err := queryInt(connB, "select 4"); err != nil || n != 4 {
		t.Fatalf("query through route b after removing a = %d, %v", n, err)
	}
}

// checkOutput runs `agent check -timeout 10s` on config and returns its error and stdout.
func checkOutput(t *testing.T, config, secrets string) (error, string) {
	t.Helper()
	err, stdout, _ := checkOutputArgs(t, config, secrets, "-timeout", "10s")
	return err, stdout
}

// checkRow returns the table row of route, or fails the test.
func checkRow(t *testing.T, table, route string) string {
	t.Helper()
	for _, line := range strings.Split(table, "\n") {
		if strings.HasPrefix(line, route+" ") {
			return line
		}
	}
	t.Fatalf("check table has no row for %s:\n%s", route, table)
	return ""
}

func redisRoute(name string, r *dbtest.Redis, port int, secretID string) string {
	return fmt.Sprintf(`  - name: %s
    protocol: redis
    upstream_host: 127.0.0.1
    upstream_port: %d
    committed_secret_id: %s
    dial_timeout: 2s
    tls: {ca_file: %s}
`, name, port, secretID, r.Certs.CAFile)
}

func TestCheckPassing(t *testing.T) {
	pg := startPG(t)
	rd := dbtest.StartRedis(t, dbtest.RedisOptions{})
	config := "credentials: {source: file, path: secrets.yaml}\nroutes:\n" +
		pgRoute("orders", 0, pg, "sec_orders", "") + redisRoute("cache", rd, rd.Port, "sec_cache")
	secrets := fmt.Sprintf("secrets:\n  sec_orders: {username: app, password: %q}\n  sec_cache: {username: %s, password: %s}\n",
		canary, dbtest.RedisUser, dbtest.RedisPassword)
	err, table := checkOutput(t, config, secrets)
	if err != nil {
		t.Fatalf("check = %v, want success:\n%s", err, table)
	}
	if !strings.HasPrefix(table, "ROUTE") {
		t.Errorf("table lacks its header:\n%s", table)
	}
	for _, route := range []string{"orders", "cache"} {
		row := checkRow(t, table, route)
		if !regexp.MustCompile(`\sok\s+\d+ms`).MatchString(row) {
			t.Errorf("row %q lacks ok and a latency", row)
		}
	}
	// Without a database name the agent requests the database named after the user.
	if row := checkRow(t, table, "orders"); !strings.Contains(row, `database "app" does not exist`) {
		t.Errorf("row %q lacks the server's note on the missing database", row)
	}
}

func TestCheckFailing(t *testing.T) {
	pg := startPG(t)
	rd := dbtest.StartRedis(t, dbtest.RedisOptions{})
	downPort := dbtest.FreePort(t)
	config := "credentials: {source: file, path: secrets.yaml}\nroutes:\n" +
		pgRoute("good", 0, pg, "sec_orders", "") +
		pgRoute("wrongpw", 0, pg, "sec_wrong", "") +
		redisRoute("cache_wrongpw", rd, rd.Port, "sec_wrong") +
		redisRoute("cache_down", rd, downPort, "sec_cache") +
		pgRoute("nosecret", 0, pg, "sec_missing", "")
	secrets := fmt.Sprintf("secrets:\n  sec_orders: {username: app, password: %q}\n  sec_wrong: {username: app, password: nope}\n"+
		"  sec_cache: {username: %s, password: %s}\n", canary, dbtest.RedisUser, dbtest.RedisPassword)
	err, table := checkOutput(t, config, secrets)
	if !errors.Is(err, errCheckFailed) {
		t.Fatalf("check = %v, want errCheckFailed:\n%s", err, table)
	}
	if !strings.Contains(err.Error(), "4 of 5 routes failed") {
		t.Errorf("error %q, want 4 of 5 routes failed", err)
	}
	for _, tc := range []struct{ route, want string }{
		{"good", " ok "},
		{"wrongpw", "password authentication failed"},
		{"cache_wrongpw", "WRONGPASS"},
		{"cache_down", `route "cache_down"`},
		// The source's own message, which a client through the route does not get.
		{"nosecret", `agent error: fetch credentials "sec_missing": secrets file secrets.yaml: secret "sec_missing": secret not found`},
	} {
		if row := checkRow(t, table, tc.route); !strings.Contains(row, tc.want) {
			t.Errorf("row %q lacks %q", row, tc.want)
		}
	}
}

// clientCertSecrets returns a secrets file whose sec_app has the password and whose
// sec_cert has only the test client certificate.
func clientCertSecrets(t *testing.T, certs *dbtest.Certs, user, password string) string {
	t.Helper()
	cert, err := os.ReadFile(certs.ClientCert)
	if err != nil {
		t.Fatal(err)
	}
	key, err := os.ReadFile(certs.ClientKey)
	if err != nil {
		t.Fatal(err)
	}
	indent := func(b []byte) string {
		return "      " + strings.ReplaceAll(strings.TrimSpace(string(b)), "\n", "\n      ")
	}
	return fmt.Sprintf("secrets:\n  sec_app: {username: %s, password: %q}\n  sec_cert:\n    certificate: |\n%s\n    private_key: |\n%s\n"+
		"  sec_both:\n    username: %s\n    password: %q\n    certificate: |\n%s\n    private_key: |\n%s\n",
		user, password, indent(cert), indent(key), user, password, indent(cert), indent(key))
}

func TestMutualTLSPostgres(t *testing.T) {
	pg := dbtest.StartPostgres(t, dbtest.PostgresOptions{HBA: "hostssl all all 127.0.0.1/32 scram-sha-256 clientcert=verify-full"})
	pg.Exec(t, fmt.Sprintf("ALTER ROLE app PASSWORD '%s'", canary))
	withCert, ownSecret, without := dbtest.FreePort(t), dbtest.FreePort(t), dbtest.FreePort(t)
	// Route cert_secret takes the client certificate from a second secret, route
	// own_secret from its own.
	certRoute := strings.Replace(pgRoute("cert_secret", withCert, pg, "sec_app", ""),
		"}\n", ", client_cert_secret_id: sec_cert}\n", 1)
	config := "credentials: {source: file, path: secrets.yaml}\nroutes:\n" + certRoute +
		pgRoute("own_secret", ownSecret, pg, "sec_both", "") +
		pgRoute("no_cert", without, pg, "sec_app", "")
	a, _ := runConfig(t, config, clientCertSecrets(t, pg.Certs, "app", canary))
	waitListening(t, a, without)

	for _, port := range []int{withCert, ownSecret} {
		out, err := psql(t, fmt.Sprintf("host=127.0.0.1 port=%d dbname=appdb sslmode=disable", port),
			"select client_dn from pg_stat_ssl where pid = pg_backend_pid()")
		if err != nil {
			t.Fatalf("port %d: psql with the client certificate: %v\n%s", port, err, out)
		}
		if out != "/CN=app" {
			t.Errorf("port %d: client DN = %q, want /CN=app", port, out)
		}
	}
	out, err := psql(t, fmt.Sprintf("host=127.0.0.1 port=%d dbname=appdb sslmode=disable", without), "select 1")
	if err == nil {
		t.Fatalf("psql without a client certificate succeeded: %s", out)
	}
	if !strings.Contains(out, "certificate") {
		t.Errorf("psql output %q does not mention the missing certificate", out)
	}
}

func TestMutualTLSRedis(t *testing.T) {
	rd := dbtest.StartRedis(t, dbtest.RedisOptions{TLSAuthClients: true})
	withCert, without := dbtest.FreePort(t), dbtest.FreePort(t)
	route := func(name string, port int, extraTLS string) string {
		return fmt.Sprintf(`  - name: %s
    protocol: redis
    local_port: %d
    upstream_host: 127.0.0.1
    upstream_port: %d
    committed_secret_id: sec_app
    dial_timeout: 2s
    tls: {ca_file: %s%s}
`, name, port, rd.Port, rd.Certs.CAFile, extraTLS)
	}
	config := "credentials: {source: file, path: secrets.yaml}\nroutes:\n" +
		route("with_cert", withCert, ", client_cert_secret_id: sec_cert") + route("no_cert", without, "")
	a, _ := runConfig(t, config, clientCertSecrets(t, rd.Certs, dbtest.RedisUser, dbtest.RedisPassword))
	waitListening(t, a, without)

	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	ok := redis.NewClient(&redis.Options{Addr: fmt.Sprintf("127.0.0.1:%d", withCert), MaxRetries: -1})
	defer ok.Close()
	if err := ok.Set(ctx, "k", "v", 0).Err(); err != nil {
		t.Fatalf("SET with the client certificate: %v", err)
	}
	if v, err := ok.Get(ctx, "k").Result(); err != nil || v != "v" {
		t.Errorf("GET = %q, %v, want v", v, err)
	}

	bad := redis.NewClient(&redis.Options{Addr: fmt.Sprintf("127.0.0.1:%d", without), MaxRetries: -1})
	defer bad.Close()
	err := bad.Ping(ctx).Err()
	if err == nil {
		t.Fatal("PING without a client certificate succeeded")
	}
	if !strings.Contains(err.Error(), `route "no_cert"`) {
		t.Errorf("error %q does not name the route", err)
	}
	waitLog(t, a.logs, "route=no_cert", 5*time.Second)
}

func TestCheckMySQLAndMongoDB(t *testing.T) {
	m := dbtest.StartMariaDB(t, dbtest.MariaDBOptions{})
	f := dbtest.StartFerretDB(t, dbtest.FerretDBOptions{})
	route := func(name, protocol string, host string, port int, ca, secret string) string {
		return fmt.Sprintf("  - {name: %s, protocol: %s, upstream_host: %s, upstream_port: %d, committed_secret_id: %s, tls: {ca_file: %s}}\n",
			name, protocol, host, port, secret, ca)
	}
	config := "credentials: {source: file, path: secrets.yaml}\nroutes:\n" +
		route("shop", "mysql", m.Host, m.Port, m.Certs.CAFile, "sec_shop") +
		route("docs", "mongodb", f.Host, f.Port, f.Certs.CAFile, "sec_docs") +
		route("shop_bad", "mysql", m.Host, m.Port, m.Certs.CAFile, "sec_bad")
	secrets := "secrets:\n" +
		"  sec_shop: {username: native, password: secret}\n" +
		"  sec_docs: {username: app, password: secret, auth_source: appdb}\n" +
		"  sec_bad: {username: native, password: wrong}\n"
	err, table := checkOutput(t, config, secrets)
	if err == nil {
		t.Fatalf("check succeeded with a wrong password on route shop_bad:\n%s", table)
	}
	for _, name := range []string{"shop", "docs"} {
		if row := checkRow(t, table, name); !regexp.MustCompile(`\sok\s+\d+ms`).MatchString(row) {
			t.Errorf("row %q lacks ok and a latency", row)
		}
	}
	if row := checkRow(t, table, "shop_bad"); !strings.Contains(row, "FAIL") || !strings.Contains(row, "1045") {
		t.Errorf("row %q lacks FAIL and the server's error 1045", row)
	}
}

// checkOutputArgs runs `agent check` on config with args after -config and returns its
// error, stdout and stderr.
func checkOutputArgs(t *testing.T, config, secrets string, args ...string) (err error, stdout, stderr string) {
	t.Helper()
	dir := t.TempDir()
	if secrets != "" {
		dbtest.ReplaceFile(t, filepath.Join(dir, "secrets.yaml"), secrets)
	}
	path := filepath.Join(dir, "agent.yaml")
	dbtest.ReplaceFile(t, path, config)
	var out, errOut bytes.Buffer
	ctx, cancel := context.WithTimeout(context.Background(), 60*time.Second)
	defer cancel()
	err = run(ctx, append([]string{"check", "-config", path}, args...), &out, &errOut)
	if strings.Contains(out.String()+errOut.String(), canary) {
		t.Errorf("check output contains the password")
	}
	return err, out.String(), errOut.String()
}

// startPlaintextRedis runs redis-server without TLS or a password on a free port of
// 127.0.0.1 until the test ends, and returns the port.
func startPlaintextRedis(t *testing.T) int {
	t.Helper()
	dbtest.RequireRoot(t)
	bin := dbtest.LookPath(t, "redis-server")
	port := dbtest.FreePort(t)
	cmd := exec.Command(bin, "--bind", "127.0.0.1", "--port", strconv.Itoa(port),
		"--save", "", "--appendonly", "no", "--dir", t.TempDir())
	if err := cmd.Start(); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() {
		dbtest.StopPID(cmd.Process.Pid, syscall.SIGTERM)
		cmd.Wait()
	})
	for i := 0; ; i++ {
		c, err := net.Dial("tcp", net.JoinHostPort("127.0.0.1", strconv.Itoa(port)))
		if err == nil {
			c.Close()
			return port
		}
		if i > 100 {
			t.Fatalf("plaintext redis not listening on %d after 5s: %v", port, err)
		}
		time.Sleep(50 * time.Millisecond)
	}
}

// A plaintext Redis never completes the agent's TLS handshake, so the agent gives up after
// the route's login_timeout (6s here) and sends an error naming the route. The check
// must wait for it, past go-redis's own 5s dial timeout, because -timeout is 10s.
func TestCheckRedisHonoursTimeout(t *testing.T) {
	port := startPlaintextRedis(t)
	rd := &dbtest.Redis{Certs: dbtest.NewCerts(t, t.TempDir())}
	config := "credentials: {source: file, path: secrets.yaml}\nroutes:\n" +
		redisRoute("plain", rd, port, "sec_cache") + "    login_timeout: 6s\n"
	secrets := "secrets:\n  sec_cache: {username: u, password: p}\n"
	err, table, _ := checkOutputArgs(t, config, secrets, "-timeout", "10s")
	if !errors.Is(err, errCheckFailed) {
		t.Fatalf("check = %v, want errCheckFailed:\n%s", err, table)
	}
	row := checkRow(t, table, "plain")
	if !strings.Contains(row, `agent error: ERR dbproxy route "plain"`) {
		t.Errorf("row %q lacks the agent's error naming the route", row)
	}
	if strings.Contains(row, "i/o timeout") {
		t.Errorf("row %q shows the driver's timeout", row)
	}
}

func TestCheckLabelsAgentErrors(t *testing.T) {
	pg := startPG(t)
	downPort := dbtest.FreePort(t)
	config := "credentials: {source: file, path: secrets.yaml}\nroutes:\n" +
		pgRoute("down", 0, pg, "sec_orders", "") + pgRoute("nosecret", 0, pg, "sec_missing", "")
	config = strings.Replace(config, fmt.Sprintf("upstream_port: %d", pg.Port), fmt.Sprintf("upstream_port: %d", downPort), 1)
	secrets := fmt.Sprintf("secrets:\n  sec_orders: {username: app, password: %q}\n", canary)
	err, table, _ := checkOutputArgs(t, config, secrets)
	if !errors.Is(err, errCheckFailed) {
		t.Fatalf("check = %v, want errCheckFailed:\n%s", err, table)
	}
	for route, want := range map[string]string{
		"down": "agent error: FATAL: dbproxy route",
		// The check fetches the secret itself before it connects.
		"nosecret": `agent error: fetch credentials "sec_missing"`,
	} {
		row := checkRow(t, table, route)
		if !strings.Contains(row, want) {
			t.Errorf("row %q lacks the agent error label %q", row, want)
		}
		if strings.Contains(row, "server error") {
			t.Errorf("row %q labels the agent's error as the server's", row)
		}
	}
}

func TestCheckLogsConfigWarnings(t *testing.T) {
	pg := startPG(t)
	config := "credentials: {source: env, path: secrets.yaml}\nroutes:\n" + pgRoute("orders", 0, pg, "sec_orders", "")
	t.Setenv("DBPROXY_SECRET_SEC_ORDERS_USERNAME", "app")
	t.Setenv("DBPROXY_SECRET_SEC_ORDERS_PASSWORD", canary)
	err, table, stderr := checkOutputArgs(t, config, "", "-log-level", "warn")
	if err != nil {
		t.Fatalf("check = %v, want success:\n%s\n%s", err, table, stderr)
	}
	if want := "credentials.path is ignored with source: env"; !strings.Contains(stderr, want) {
		t.Errorf("stderr lacks %q:\n%s", want, stderr)
	}
}

// A route whose secret is missing at start is not ready, and turns ready by itself once the
// secret is added, because the agent retries the fetch without waiting for a client.
func TestReadyzFollowsMissingSecret(t *testing.T) {
	pg := startPG(t)
	port, adminPort := dbtest.FreePort(t), dbtest.FreePort(t)
	config := fmt.Sprintf("credentials: {source: file, path: secrets.yaml}\nadmin_address: 127.0.0.1:%d\nroutes:\n%s",
		adminPort, pgRoute("orders", port, pg, "sec_orders", ""))
	a, _ := runConfig(t, config, "secrets:\n  sec_other: {username: app, password: x}\n")
	waitListening(t, a, port)
	readyz := fmt.Sprintf("http://127.0.0.1:%d/readyz", adminPort)

	code, body := httpGet(t, readyz)
	if code != http.StatusServiceUnavailable {
		t.Errorf("readyz with the secret missing = %d %q, want 503", code, body)
	}
	if want := `route "orders": credentials unavailable: `; !strings.Contains(body, want) {
		t.Errorf("readyz body %q lacks %q", body, want)
	}
	if !strings.Contains(body, "sec_orders") {
		t.Errorf("readyz body %q does not name the secret id", body)
	}
	if want := "or fix the route's committed_secret_id"; !strings.Contains(body, want) {
		t.Errorf("readyz body %q lacks the next step %q", body, want)
	}

	dbtest.ReplaceFile(t, a.secrets, fmt.Sprintf("secrets:\n  sec_orders: {username: app, password: %q}\n", canary))
	deadline := time.Now().Add(2*credentialRetryInterval + fetchTimeout)
	for {
		code, body = httpGet(t, readyz)
		if code == http.StatusOK || time.Now().After(deadline) {
			break
		}
		time.Sleep(100 * time.Millisecond)
	}
	if code != http.StatusOK {
		t.Fatalf("readyz after adding the secret = %d %q, want 200 with no client connecting", code, body)
	}
	if strings.Contains(body, canary) {
		t.Errorf("readyz body contains the password")
	}
	waitLog(t, a.logs, `msg="secret available again" route=orders`, time.Second)
}
