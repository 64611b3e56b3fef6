package myauth

import (
	"database/sql"
	"fmt"
	"os/exec"
	"strings"
	"testing"

	"github.com/go-mysql-org/go-mysql/mysql"

	"github.com/knoxcall/dbproxy/credsource"
	"github.com/knoxcall/dbproxy/internal/dbtest"
	"github.com/knoxcall/dbproxy/internal/dbtest/mysql8"
)

// TestCachingSHA2 logs in through the agent to a server with caching_sha2_password as its
// default plugin. MySQL 8 is not packaged for Debian, so the server is go-mysql's server
// package running in the test process (internal/dbtest/mysql8), which requires TLS like the
// agent does.
func TestCachingSHA2(t *testing.T) {
	certs := dbtest.NewCerts(t, t.TempDir())
	srv := mysql8.Start(t, certs)
	srv.AddUser(t, "nat", "secret", mysql.AUTH_NATIVE_PASSWORD)
	srv.AddUser(t, "sha", "secret", mysql.AUTH_SHA256_PASSWORD)
	tlsConf := certs.ClientTLS("127.0.0.1")
	proxy := func(user, password string) *testProxy {
		return startProxy(t, proxyConfig{upstream: srv.Addr, tls: tlsConf,
			creds: credsource.Credentials{Username: user, Password: password}})
	}
	app := proxy("app", "secret")

	t.Run("full then fast auth", func(t *testing.T) {
		srv.InvalidateCache("app")
		for i, wantFull := range []bool{true, false} {
			db := openDB(t, app.Addr, "multiStatements=true")
			var user string
			if err := db.QueryRow("SELECT CURRENT_USER()").Scan(&user); err != nil {
				t.Fatalf("login %d: %v", i, err)
			}
			if user != "app" {
				t.Errorf("login %d: user %q, want app", i, user)
			}
			login := srv.LastLogin()
			if login.FullAuth != wantFull {
				t.Errorf("login %d: full auth %v, want %v", i, login.FullAuth, wantFull)
			}
			if !login.TLS {
				t.Errorf("login %d: upstream leg without TLS", i)
			}
			if login.Attributes["_client_name"] != "Go-MySQL-Driver" {
				t.Errorf("login %d: attributes %v, want the driver's _client_name", i, login.Attributes)
			}
			db.Close()
		}
	})

	t.Run("capabilities forwarded exactly", func(t *testing.T) {
		clientCaps := mysql.CLIENT_PROTOCOL_41 | mysql.CLIENT_SECURE_CONNECTION | mysql.CLIENT_PLUGIN_AUTH |
			mysql.CLIENT_CONNECT_ATTRS | mysql.CLIENT_DEPRECATE_EOF | mysql.CLIENT_MULTI_STATEMENTS |
			mysql.CLIENT_MULTI_RESULTS | mysql.CLIENT_LOCAL_FILES | mysql.CLIENT_SESSION_TRACK |
			mysql.CLIENT_QUERY_ATTRIBUTES | mysql.CLIENT_TRANSACTIONS
		c, g := rawLoginCaps(t, app.Addr, clientCaps)
		c.Close()
		want := clientCaps&g.capabilities | mysql.CLIENT_SSL | mysql.CLIENT_PLUGIN_AUTH |
			mysql.CLIENT_CONNECT_WITH_DB | g.capabilities&mysql.CLIENT_PLUGIN_AUTH_LENENC_CLIENT_DATA
		if got := srv.LastLogin().Capabilities; got != want {
			t.Errorf("upstream capabilities %#x, want %#x (client %#x, server %#x)", got, want, clientCaps, g.capabilities)
		}
	})

	t.Run("client password ignored", func(t *testing.T) {
		// The driver sends a caching_sha2_password scramble, so the agent sends the fast-auth
		// marker before OK, as the driver expects.
		db, err := sql.Open("mysql", fmt.Sprintf("app:not-the-password@tcp(%s)/appdb?timeout=5s", app.Addr))
		if err != nil {
			t.Fatal(err)
		}
		defer db.Close()
		if err := db.Ping(); err != nil {
			t.Errorf("ping with a client password: %v", err)
		}
	})

	t.Run("auth switch", func(t *testing.T) {
		for _, user := range []string{"nat", "sha"} {
			db := openDB(t, proxy(user, "secret").Addr, "")
			var got string
			if err := db.QueryRow("SELECT CURRENT_USER()").Scan(&got); err != nil {
				t.Fatalf("%s: %v", user, err)
			}
			if got != user {
				t.Errorf("user %q, want %q", got, user)
			}
		}
	})

	t.Run("wrong password", func(t *testing.T) {
		srv.InvalidateCache("app")
		err := openDB(t, proxy("app", "wrong").Addr, "").Ping()
		if got := mysqlErrorNumber(err); got != 1045 {
			t.Errorf("ping error %v (number %d), want 1045", err, got)
		}
	})

	t.Run("cli", func(t *testing.T) {
		for i, cached := range []bool{false, true, false} {
			if !cached {
				srv.InvalidateCache("app")
			}
			args := []string{"--no-defaults", "-h", "127.0.0.1", "-P", port(t, app.Addr),
				"-u", "whoever", "-N", "-B", "appdb", "-e", "SELECT CURRENT_USER()"}
			if i == 2 {
				// A password makes the client send a scramble and wait for the fast-auth marker.
				args = append(args, "-pnot-the-password")
			}
			out, err := exec.Command("mariadb", args...).CombinedOutput()
			if err != nil {
				t.Fatalf("mariadb (cached %v): %v\n%s", cached, err, out)
			}
			if strings.TrimSpace(string(out)) != "app" {
				t.Errorf("mariadb (cached %v) output %q, want app", cached, out)
			}
			if full := srv.LastLogin().FullAuth; full == cached {
				t.Errorf("mariadb (cached %v): full auth %v", cached, full)
			}
		}
	})

	t.Run("cli with mysql_native_password", func(t *testing.T) {
		// As a client without caching_sha2_password does: its own plugin waits for a
		// scramble of its own form.
		for _, password := range []string{"", "-pnot-the-password"} {
			args := []string{"--no-defaults", "-h", "127.0.0.1", "-P", port(t, app.Addr), "-u", "whoever",
				"--default-auth=mysql_native_password", "-N", "-B", "appdb", "-e", "SELECT CURRENT_USER()"}
			if password != "" {
				args = append(args, password)
			}
			out, err := exec.Command("mariadb", args...).CombinedOutput()
			if err != nil || strings.TrimSpace(string(out)) != "app" {
				t.Errorf("mariadb %s: %v\n%s", password, err, out)
			}
		}
	})
}

// TestSHA256Greeting logs in through the agent to a server whose greeting names
// sha256_password. A client with a password then requests the server's RSA key, because the
// loopback leg has no TLS, and must be switched to mysql_native_password rather than read
// the OK as the key.
func TestSHA256Greeting(t *testing.T) {
	certs := dbtest.NewCerts(t, t.TempDir())
	srv := mysql8.StartWithDefaultPlugin(t, certs, mysql.AUTH_SHA256_PASSWORD)
	srv.AddUser(t, "sha", "secret", mysql.AUTH_SHA256_PASSWORD)
	p := startProxy(t, proxyConfig{upstream: srv.Addr, tls: certs.ClientTLS("127.0.0.1"),
		creds: credsource.Credentials{Username: "sha", Password: "secret"}})

	t.Run("go driver", func(t *testing.T) {
		for _, user := range []string{"anyone", "anyone:dummy"} {
			db, err := sql.Open("mysql", fmt.Sprintf("%s@tcp(%s)/appdb?timeout=10s", user, p.Addr))
			if err != nil {
				t.Fatal(err)
			}
			var got string
			if err := db.QueryRow("SELECT CURRENT_USER()").Scan(&got); err != nil {
				t.Errorf("query as %s: %v", user, err)
			} else if got != "sha" {
				t.Errorf("CURRENT_USER() as %s = %q, want sha", user, got)
			}
			db.Close()
		}
	})
	t.Run("cli", func(t *testing.T) {
		for _, password := range []string{"", "-pnot-the-password"} {
			args := []string{"--no-defaults", "-h", "127.0.0.1", "-P", port(t, p.Addr), "-u", "whoever",
				"-N", "-B", "appdb", "-e", "SELECT CURRENT_USER()"}
			if password != "" {
				args = append(args, password)
			}
			out, err := exec.Command("mariadb", args...).CombinedOutput()
			if err != nil || strings.TrimSpace(string(out)) != "sha" {
				t.Errorf("mariadb %s: %v\n%s", password, err, out)
			}
		}
	})
}
