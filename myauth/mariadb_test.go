package myauth

import (
	"bytes"
	"compress/zlib"
	"context"
	"crypto/rand"
	"crypto/sha256"
	"database/sql"
	"encoding/hex"
	"errors"
	"fmt"
	"io"
	"net"
	"os/exec"
	"strconv"
	"strings"
	"sync/atomic"
	"testing"
	"time"

	"github.com/go-mysql-org/go-mysql/mysql"
	gomysql "github.com/go-sql-driver/mysql"

	"github.com/knoxcall/dbproxy/credsource"
	"github.com/knoxcall/dbproxy/internal/dbtest"
)

// TestMariaDB runs real clients through the agent against MariaDB 10.11 with TLS required
// (require_secure_transport) and users on mysql_native_password and ed25519.
func TestMariaDB(t *testing.T) {
	m := dbtest.StartMariaDB(t, dbtest.MariaDBOptions{Args: []string{"--max-allowed-packet=256M"}})
	tlsConf := m.Certs.ClientTLS("127.0.0.1")
	proxies := map[string]*testProxy{}
	for _, user := range []string{"native", "ed"} {
		proxies[user] = startProxy(t, proxyConfig{upstream: m.Addr(), tls: tlsConf,
			creds: credsource.Credentials{Username: user, Password: "secret"}})
	}

	t.Run("go driver", func(t *testing.T) {
		for _, user := range []string{"native", "ed"} {
			for _, params := range []string{"", "compress=true", "multiStatements=true", "interpolateParams=true",
				"compress=true&multiStatements=true&interpolateParams=true"} {
				t.Run(user+"/"+params, func(t *testing.T) {
					db := openDB(t, proxies[user].Addr, params)
					var current, sslVersion, name string
					if err := db.QueryRow("SELECT CURRENT_USER()").Scan(&current); err != nil {
						t.Fatal(err)
					}
					if current != user+"@%" {
						t.Errorf("CURRENT_USER() = %q, want %q", current, user+"@%")
					}
					if err := db.QueryRow("SHOW SESSION STATUS LIKE 'Ssl_version'").Scan(&name, &sslVersion); err != nil {
						t.Fatal(err)
					}
					if !strings.HasPrefix(sslVersion, "TLSv1.") {
						t.Errorf("upstream Ssl_version = %q, want TLSv1.x", sslVersion)
					}
					var sum int
					if err := db.QueryRow("SELECT ? + 1", 41).Scan(&sum); err != nil {
						t.Fatal(err)
					}
					if sum != 42 {
						t.Errorf("SELECT ? + 1 = %d, want 42", sum)
					}
					if strings.Contains(params, "multiStatements") {
						if _, err := db.Exec("DO 1; DO 2; DO 3"); err != nil {
							t.Errorf("multi statement: %v", err)
						}
					}
				})
			}
		}
	})

	t.Run("load data local infile", func(t *testing.T) {
		m.Exec(t, "CREATE TABLE appdb.infile_rows (id INT, name VARCHAR(40))")
		const rows = 20000
		gomysql.RegisterReaderHandler("rows", func() io.Reader {
			var b bytes.Buffer
			for i := range rows {
				fmt.Fprintf(&b, "%d\trow-%d\n", i, i)
			}
			return &b
		})
		t.Cleanup(func() { gomysql.DeregisterReaderHandler("rows") })
		for _, params := range []string{"", "compress=true"} {
			t.Run("params="+params, func(t *testing.T) {
				db := openDB(t, proxies["native"].Addr, params)
				if _, err := db.Exec("DELETE FROM infile_rows"); err != nil {
					t.Fatal(err)
				}
				res, err := db.Exec("LOAD DATA LOCAL INFILE 'Reader::rows' INTO TABLE infile_rows")
				if err != nil {
					t.Fatal(err)
				}
				if n, _ := res.RowsAffected(); n != rows {
					t.Errorf("rows affected = %d, want %d", n, rows)
				}
				var count int
				if err := db.QueryRow("SELECT COUNT(*) FROM infile_rows").Scan(&count); err != nil {
					t.Fatal(err)
				}
				if count != rows {
					t.Errorf("count = %d, want %d", count, rows)
				}
			})
		}
	})

	t.Run("64 MiB blob", func(t *testing.T) {
		m.Exec(t, "CREATE TABLE appdb.blobs (id INT PRIMARY KEY, b LONGBLOB)")
		blob := make([]byte, 64<<20)
		rand.Read(blob)
		want := sha256.Sum256(blob)
		for i, params := range []string{"maxAllowedPacket=0", "maxAllowedPacket=0&compress=true"} {
			t.Run(params, func(t *testing.T) {
				db := openDB(t, proxies["ed"].Addr, params)
				if _, err := db.Exec("INSERT INTO blobs VALUES (?, ?)", i, blob); err != nil {
					t.Fatal(err)
				}
				var serverSum string
				var back []byte
				if err := db.QueryRow("SELECT SHA2(b, 256), b FROM blobs WHERE id = ?", i).Scan(&serverSum, &back); err != nil {
					t.Fatal(err)
				}
				if serverSum != hex.EncodeToString(want[:]) {
					t.Errorf("server SHA2 = %s, want %x", serverSum, want)
				}
				if got := sha256.Sum256(back); got != want {
					t.Errorf("read back %d bytes with sha256 %x, want %x", len(back), got, want)
				}
			})
		}
	})

	t.Run("cli", func(t *testing.T) {
		for _, user := range []string{"native", "ed"} {
			for _, extra := range [][]string{nil, {"--compress"}, {"-pnot-the-password"}} {
				args := append([]string{"--no-defaults", "-h", "127.0.0.1", "-P", port(t, proxies[user].Addr),
					"-u", "app", "-N", "-B", "appdb", "-e",
					"SELECT CURRENT_USER(); SHOW SESSION STATUS LIKE 'Ssl_version'"}, extra...)
				out, err := exec.Command("mariadb", args...).CombinedOutput()
				if err != nil {
					t.Fatalf("mariadb %v: %v\n%s", extra, err, out)
				}
				if !strings.Contains(string(out), user+"@%") {
					t.Errorf("mariadb %v output %q, want %s@%%", extra, out, user)
				}
				if !strings.Contains(string(out), "TLSv1.") {
					t.Errorf("mariadb %v output %q, want an upstream TLS version", extra, out)
				}
			}
		}
	})

	t.Run("cli with another plugin than the greeting's", func(t *testing.T) {
		// With --default-auth naming another plugin than the greeting's, the client sends an
		// empty auth response and waits for its plugin's data, as from a server that then
		// switches it with an AuthSwitchRequest.
		for _, plugin := range []string{"caching_sha2_password", "sha256_password", "client_ed25519",
			"mysql_clear_password", "mysql_native_password"} {
			for _, password := range []string{"", "-pnot-the-password"} {
				args := []string{"--no-defaults", "-h", "127.0.0.1", "-P", port(t, proxies["ed"].Addr),
					"-u", "app", "--default-auth=" + plugin, "-N", "-B", "appdb", "-e", "SELECT CURRENT_USER()"}
				if password != "" {
					args = append(args, password)
				}
				out, err := exec.Command("mariadb", args...).CombinedOutput()
				if bytes.Contains(out, []byte("could not be loaded")) {
					t.Logf("client plugin %s not installed: %s", plugin, out)
					continue
				}
				if err != nil || !strings.Contains(string(out), "ed@%") {
					t.Errorf("mariadb --default-auth=%s %s: %v\n%s", plugin, password, err, out)
				}
			}
		}
	})

	t.Run("wrong password", func(t *testing.T) {
		p := startProxy(t, proxyConfig{upstream: m.Addr(), tls: tlsConf,
			creds: credsource.Credentials{Username: "native", Password: "wrong"},
			redial: func(ctx context.Context) (net.Conn, credsource.Credentials, error) {
				return nil, credsource.Credentials{}, fmt.Errorf("refetch: %w", ErrCredentialsUnchanged)
			}})
		err := openDB(t, p.Addr, "").Ping()
		if got := mysqlErrorNumber(err); got != 1045 {
			t.Fatalf("ping error %v (number %d), want 1045", err, got)
		}
		waitFor(t, func() bool { return len(p.Errors()) > 0 })
		errs := p.Errors()
		if len(errs) != 1 || !errors.Is(errs[0], ErrAuthFailed) {
			t.Errorf("handshake errors %v, want one wrapping ErrAuthFailed", errs)
		}
	})

	t.Run("redial with new password", func(t *testing.T) {
		var redials atomic.Int32
		p := startProxy(t, proxyConfig{upstream: m.Addr(), tls: tlsConf,
			creds: credsource.Credentials{Username: "native", Password: "old"},
			redial: func(ctx context.Context) (net.Conn, credsource.Credentials, error) {
				redials.Add(1)
				c, err := (&net.Dialer{}).DialContext(ctx, "tcp", m.Addr())
				return c, credsource.Credentials{Username: "native", Password: "secret"}, err
			}})
		if err := openDB(t, p.Addr, "").Ping(); err != nil {
			t.Fatalf("ping after redial: %v", err)
		}
		if n := redials.Load(); n != 1 {
			t.Errorf("redials = %d, want 1", n)
		}
	})

	t.Run("unknown database", func(t *testing.T) {
		// With a grant on it, a missing database is 1049 rather than 1044 (access denied).
		m.Exec(t, "GRANT ALL ON nosuchdb.* TO 'native'@'%'")
		db, err := sql.Open("mysql", fmt.Sprintf("app@tcp(%s)/nosuchdb?timeout=5s", proxies["native"].Addr))
		if err != nil {
			t.Fatal(err)
		}
		defer db.Close()
		err = db.Ping()
		if got := mysqlErrorNumber(err); got != 1049 {
			t.Errorf("ping error %v (number %d), want 1049", err, got)
		}
	})

	t.Run("change user and reset connection", func(t *testing.T) {
		c := rawLogin(t, proxies["native"].Addr)
		// COM_RESET_CONNECTION passes through to the server.
		if p := rawCommand(t, c, []byte{0x1f}); p[0] != 0x00 {
			t.Errorf("COM_RESET_CONNECTION reply %x, want OK", p)
		}
		// COM_CHANGE_USER: user, auth response length 0, database, charset, plugin.
		change := append([]byte{0x11}, "native\x00\x00appdb\x00\x21\x00mysql_native_password\x00"...)
		p := rawCommand(t, c, change)
		if p[0] != 0xff {
			t.Fatalf("COM_CHANGE_USER reply %x, want ERR", p)
		}
		serr := parseErrPacket(p)
		if serr.Code != 1235 || !strings.Contains(serr.Message, "COM_RESET_CONNECTION") {
			t.Errorf("COM_CHANGE_USER error %v, want 1235 naming COM_RESET_CONNECTION", serr)
		}
		// The session still works.
		if p := rawCommand(t, c, []byte{0x0e}); p[0] != 0x00 {
			t.Errorf("COM_PING after COM_CHANGE_USER reply %x, want OK", p)
		}
	})

	t.Run("change user on compressed session", func(t *testing.T) {
		// The parser is off on compressed sessions, so COM_CHANGE_USER reaches the server,
		// which must reject it: the client has no password.
		caps := mysql.CLIENT_LONG_PASSWORD | mysql.CLIENT_PROTOCOL_41 | mysql.CLIENT_SECURE_CONNECTION |
			mysql.CLIENT_PLUGIN_AUTH | mysql.CLIENT_TRANSACTIONS | mysql.CLIENT_COMPRESS
		c, _ := rawLoginCaps(t, proxies["native"].Addr, caps)
		change := append([]byte{mysql.COM_CHANGE_USER}, "native\x00\x00appdb\x00\x21\x00mysql_native_password\x00"...)
		if err := writeFrame(c, 0, 0, change); err != nil {
			t.Fatal(err)
		}
		cseq, p := readFrame(t, c)
		if p[0] == 0xfe {
			// AuthSwitchRequest: reply as a client without a password would.
			if err := writeFrame(c, cseq+1, 2, nil); err != nil {
				t.Fatal(err)
			}
			_, p = readFrame(t, c)
		}
		if p[0] != mysql.ERR_HEADER {
			t.Fatalf("COM_CHANGE_USER without password on a compressed session got %x, want ERR", p)
		}
		if code := parseErrPacket(p).Code; code != 1045 {
			t.Errorf("COM_CHANGE_USER error %v, want 1045 from the server", parseErrPacket(p))
		}
	})

	t.Run("upstream down", func(t *testing.T) {
		closed := "127.0.0.1:" + strconv.Itoa(dbtest.FreePort(t))
		p := startProxy(t, proxyConfig{upstream: closed, tls: tlsConf,
			creds: credsource.Credentials{Username: "native", Password: "secret"}})
		start := time.Now()
		err := openDB(t, p.Addr, "").Ping()
		var me *gomysql.MySQLError
		if !errors.As(err, &me) {
			t.Fatalf("ping error %v, want a MySQL error", err)
		}
		if me.SQLState != [5]byte{'0', '8', 'S', '0', '1'} || !strings.Contains(me.Message, `"test-route"`) {
			t.Errorf("error %v (state %s), want 08S01 naming the route", me, me.SQLState)
		}
		if d := time.Since(start); d > 3*time.Second {
			t.Errorf("error took %v, want it promptly", d)
		}
	})
}

// TestMariaDBProbesNotAbortedConnects checks that clients that connect to the agent and leave
// before logging in do not leave aborted logins at the server, which max_connect_errors
// counts per host until it blocks the host (error 1129).
//
// MariaDB exempts 127.0.0.1 from the host cache, and another source address would need a
// reverse DNS lookup, so the test reads the Aborted_connects status counter instead, which
// grows for the same logins that end during the login phase.
func TestMariaDBProbesNotAbortedConnects(t *testing.T) {
	m := dbtest.StartMariaDB(t, dbtest.MariaDBOptions{Args: []string{"--max-connect-errors=2"}})
	p := startProxy(t, proxyConfig{upstream: m.Addr(), tls: m.Certs.ClientTLS("127.0.0.1"),
		creds: credsource.Credentials{Username: "native", Password: "secret"}})
	aborted := func() string {
		return strings.Fields(m.Exec(t, "SHOW GLOBAL STATUS LIKE 'Aborted_connects'"))[1]
	}
	const probes = 6
	for i := range probes {
		c, err := net.Dial("tcp", p.Addr)
		if err != nil {
			t.Fatal(err)
		}
		if i%2 == 0 {
			readPacket(c, maxGreetingLen) // read the greeting, then leave
		}
		c.Close()
	}
	waitFor(t, func() bool { return len(p.Errors()) == probes })
	if got := aborted(); got != "0" {
		t.Errorf("Aborted_connects after %d probes through the agent = %s, want 0", probes, got)
	}
	if err := openDB(t, p.Addr, "").Ping(); err != nil {
		t.Fatalf("login after probes: %v", err)
	}

	// Control: the same probes straight at the server are counted, so the check above can fail.
	for range 3 {
		c, err := net.Dial("tcp", m.Addr())
		if err != nil {
			t.Fatal(err)
		}
		readPacket(c, maxGreetingLen)
		c.Close()
	}
	waitFor(t, func() bool { return aborted() == "3" })
}

func waitFor(t *testing.T, cond func() bool) {
	t.Helper()
	deadline := time.Now().Add(15 * time.Second)
	for !cond() {
		if time.Now().After(deadline) {
			t.Fatal("condition not met within 15 s")
		}
		time.Sleep(20 * time.Millisecond)
	}
}

func port(t *testing.T, addr string) string {
	t.Helper()
	_, p, err := net.SplitHostPort(addr)
	if err != nil {
		t.Fatal(err)
	}
	return p
}

// rawLogin logs in through the agent with hand-built packets, offering the server's
// capabilities less CLIENT_SSL and CLIENT_COMPRESS, and returns the connection in the
// command phase.
func rawLogin(t *testing.T, addr string) net.Conn {
	t.Helper()
	c, _ := rawLoginCaps(t, addr, 0)
	return c
}

// rawLoginCaps is rawLogin with the given capabilities, or the default ones when caps is 0.
// It also returns the greeting the client received.
func rawLoginCaps(t *testing.T, addr string, caps uint32) (net.Conn, *greeting) {
	t.Helper()
	c, err := net.Dial("tcp", addr)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { c.Close() })
	c.SetDeadline(time.Now().Add(10 * time.Second))
	_, p, err := readPacket(c, maxGreetingLen)
	if err != nil {
		t.Fatal(err)
	}
	g, err := parseGreeting(p)
	if err != nil {
		t.Fatal(err)
	}
	if caps == 0 {
		caps = g.capabilities &^ (mysql.CLIENT_SSL | mysql.CLIENT_COMPRESS | mysql.CLIENT_ZSTD_COMPRESSION_ALGORITHM)
	}
	resp := &response{capabilities: caps | mysql.CLIENT_CONNECT_WITH_DB, maxPacketSize: 1 << 24,
		charset: 33, database: "appdb"}
	// The greeting's plugin, as clients use it: with another, the agent would send an
	// AuthSwitchRequest first.
	if err := writePacket(c, 1, resp.marshal("app", nil, g.authPlugin, false)); err != nil {
		t.Fatal(err)
	}
	_, p, err = readPacket(c, maxServerPacketLen)
	if err != nil {
		t.Fatal(err)
	}
	if p[0] != mysql.OK_HEADER {
		t.Fatalf("login reply %x, want OK", p)
	}
	return c, g
}

// rawCommand sends one command packet and returns the first reply packet.
func rawCommand(t *testing.T, c net.Conn, cmd []byte) []byte {
	t.Helper()
	if err := writePacket(c, 0, cmd); err != nil {
		t.Fatal(err)
	}
	_, p, err := readPacket(c, maxServerPacketLen)
	if err != nil {
		t.Fatal(err)
	}
	return p
}

// TestMariaDBTooManyConnections checks that the server's 1040, which MariaDB sends in place
// of the greeting, reaches the client unchanged.
func TestMariaDBTooManyConnections(t *testing.T) {
	m := dbtest.StartMariaDB(t, dbtest.MariaDBOptions{Args: []string{"--max-connections=10"}})
	p := startProxy(t, proxyConfig{upstream: m.Addr(), tls: m.Certs.ClientTLS("127.0.0.1"),
		creds: credsource.Credentials{Username: "native", Password: "secret"}})
	// 10 is MariaDB's minimum max_connections. The one extra session it admits is for users
	// with the CONNECTION ADMIN privilege, which native lacks.
	first := openDB(t, p.Addr, "")
	for i := range 10 {
		conn, err := first.Conn(context.Background())
		if err != nil {
			t.Fatalf("connection %d: %v", i, err)
		}
		defer conn.Close()
	}
	err := openDB(t, p.Addr, "").Ping()
	if got := mysqlErrorNumber(err); got != 1040 {
		t.Errorf("connection beyond the limit: error %v (number %d), want 1040", err, got)
	}
}

// writeFrame sends one packet in a frame of the compressed protocol, stored uncompressed
// (uncompressed length 0), which every server accepts.
func writeFrame(c net.Conn, frameSeq, seq byte, payload []byte) error {
	pkt := rawPacket(seq, payload)
	n := len(pkt)
	_, err := c.Write(append([]byte{byte(n), byte(n >> 8), byte(n >> 16), frameSeq, 0, 0, 0}, pkt...))
	return err
}

// readFrame reads one frame of the compressed protocol and returns its sequence id and the
// payload of the first packet in it.
func readFrame(t *testing.T, c net.Conn) (byte, []byte) {
	t.Helper()
	var header [7]byte
	if _, err := io.ReadFull(c, header[:]); err != nil {
		t.Fatal(err)
	}
	body := make([]byte, int(header[0])|int(header[1])<<8|int(header[2])<<16)
	if _, err := io.ReadFull(c, body); err != nil {
		t.Fatal(err)
	}
	if header[4] != 0 || header[5] != 0 || header[6] != 0 {
		zr, err := zlib.NewReader(bytes.NewReader(body))
		if err != nil {
			t.Fatal(err)
		}
		if body, err = io.ReadAll(zr); err != nil {
			t.Fatal(err)
		}
	}
	_, p, err := readPacket(bytes.NewReader(body), maxServerPacketLen)
	if err != nil {
		t.Fatal(err)
	}
	return header[3], p
}

// BenchmarkMariaDBLogin compares a new TLS login straight to MariaDB with one through the
// agent (a plaintext loopback login plus the agent's TLS login upstream).
func BenchmarkMariaDBLogin(b *testing.B) {
	m := dbtest.StartMariaDB(b, dbtest.MariaDBOptions{})
	tlsConf := m.Certs.ClientTLS("127.0.0.1")
	if err := gomysql.RegisterTLSConfig("bench", tlsConf); err != nil {
		b.Fatal(err)
	}
	p := startProxy(b, proxyConfig{upstream: m.Addr(), tls: tlsConf,
		creds: credsource.Credentials{Username: "native", Password: "secret"}})
	for _, bc := range []struct{ name, dsn string }{
		{"direct", fmt.Sprintf("native:secret@tcp(%s)/appdb?tls=bench", m.Addr())},
		{"agent", fmt.Sprintf("app@tcp(%s)/appdb", p.Addr)},
	} {
		b.Run(bc.name, func(b *testing.B) {
			db, err := sql.Open("mysql", bc.dsn)
			if err != nil {
				b.Fatal(err)
			}
			defer db.Close()
			db.SetMaxIdleConns(0)
			for b.Loop() {
				if err := db.Ping(); err != nil {
					b.Fatal(err)
				}
			}
		})
	}
}

// TestMariaDBExpiredPassword checks that an account whose password has expired fails the
// login with the server's error 1862 instead of entering sandbox mode, on a server that
// disconnects such clients. The agent never announces that it can handle expired passwords.
func TestMariaDBExpiredPassword(t *testing.T) {
	m := dbtest.StartMariaDB(t, dbtest.MariaDBOptions{Args: []string{"--disconnect-on-expired-password=ON"}})
	m.Exec(t, `CREATE USER 'expired'@'%' IDENTIFIED VIA mysql_native_password USING PASSWORD('secret');
		GRANT ALL ON appdb.* TO 'expired'@'%';
		ALTER USER 'expired'@'%' PASSWORD EXPIRE;`)
	p := startProxy(t, proxyConfig{upstream: m.Addr(), tls: m.Certs.ClientTLS("127.0.0.1"),
		creds: credsource.Credentials{Username: "expired", Password: "secret"}})

	t.Run("go driver", func(t *testing.T) {
		err := openDB(t, p.Addr, "").Ping()
		if n := mysqlErrorNumber(err); n != 1862 {
			t.Errorf("Ping = %v, want error 1862 (ER_MUST_CHANGE_PASSWORD_LOGIN)", err)
		}
	})
	t.Run("cli", func(t *testing.T) {
		out, err := exec.Command("mariadb", "--no-defaults", "-h", "127.0.0.1", "-P", port(t, p.Addr),
			"-u", "app", "-N", "-B", "appdb", "-e", "SELECT 1").CombinedOutput()
		if err == nil {
			t.Fatalf("mariadb succeeded with an expired password: %s", out)
		}
		if !strings.Contains(string(out), "1862") {
			t.Errorf("mariadb output %q, want error 1862", out)
		}
	})
}
