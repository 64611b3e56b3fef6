package bench

import (
	"bufio"
	"context"
	"crypto/tls"
	"database/sql/driver"
	"fmt"
	"io"
	"net"
	"testing"
	"time"

	"github.com/go-sql-driver/mysql"
	"github.com/jackc/pgx/v5/pgconn"
	"go.mongodb.org/mongo-driver/mongo"
	"go.mongodb.org/mongo-driver/mongo/options"
	"go.mongodb.org/mongo-driver/mongo/readpref"

	"github.com/knoxcall/dbproxy/credsource"
	"github.com/knoxcall/dbproxy/internal/dbtest"
	"github.com/knoxcall/dbproxy/internal/dbtest/mysql8"
	"github.com/knoxcall/dbproxy/internal/handshake"
	"github.com/knoxcall/dbproxy/internal/splice"
	"github.com/knoxcall/dbproxy/mongoauth"
	"github.com/knoxcall/dbproxy/myauth"
	"github.com/knoxcall/dbproxy/pgauth"
	"github.com/knoxcall/dbproxy/redisauth"
)

// handshakeFunc is the signature shared by pgauth.Handshake and its siblings.
type handshakeFunc func(ctx context.Context, client, upstream net.Conn, creds credsource.Credentials, opts handshake.Options) (handshake.Conns, error)

// startHandshakeProxy serves a loopback listener and returns its address. For each
// connection it does what the agent's core does after the peer check and credential fetch.
// It dials upstream, runs hs with creds and a TLS configuration that caches sessions as a
// route's does, then splices.
func startHandshakeProxy(b *testing.B, upstream string, certs *dbtest.Certs, creds credsource.Credentials, hs handshakeFunc) string {
	b.Helper()
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		b.Fatal(err)
	}
	b.Cleanup(func() { ln.Close() })
	tlsConfig := &tls.Config{RootCAs: certs.Pool, ServerName: "127.0.0.1", MinVersion: tls.VersionTLS12,
		ClientSessionCache: tls.NewLRUClientSessionCache(64)}
	go func() {
		for {
			client, err := ln.Accept()
			if err != nil {
				return
			}
			go proxySession(client, upstream, tlsConfig, creds, hs)
		}
	}()
	return ln.Addr().String()
}

func proxySession(client net.Conn, upstreamAddr string, tlsConfig *tls.Config, creds credsource.Credentials, hs handshakeFunc) {
	defer client.Close()
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	upstream, err := net.Dial("tcp", upstreamAddr)
	if err != nil {
		return
	}
	defer upstream.Close()
	conns, err := hs(ctx, client, upstream, creds, handshake.Options{Route: "bench", TLSConfig: tlsConfig})
	if err != nil {
		if conns.Upstream != nil {
			conns.Upstream.Close()
		}
		return
	}
	defer conns.Upstream.Close()
	splice.Run(conns.Client, conns.Upstream)
}

// BenchmarkHandshakePostgres times a pgconn login through pgauth.Handshake against
// PostgreSQL, next to a direct TLS login with SCRAM-SHA-256 from the same client. The
// difference is the agent's share; -benchmem counts the client's allocations too.
func BenchmarkHandshakePostgres(b *testing.B) {
	pg := dbtest.StartPostgres(b, dbtest.PostgresOptions{})
	creds := credsource.Credentials{Username: "app", Password: "secret"}
	addr := startHandshakeProxy(b, fmt.Sprintf("127.0.0.1:%d", pg.Port), pg.Certs, creds, pgauth.Handshake)
	host, port, _ := net.SplitHostPort(addr)
	paths := map[string]string{
		"agent":  fmt.Sprintf("host=%s port=%s dbname=appdb user=app sslmode=disable", host, port),
		"direct": fmt.Sprintf("host=127.0.0.1 port=%d dbname=appdb user=app password=secret sslmode=verify-full sslrootcert=%s", pg.Port, pg.Certs.CAFile),
	}
	for _, name := range []string{"agent", "direct"} {
		b.Run(name, func(b *testing.B) {
			cfg, err := pgconn.ParseConfig(paths[name])
			if err != nil {
				b.Fatal(err)
			}
			b.ReportAllocs()
			for b.Loop() {
				conn, err := pgconn.ConnectConfig(b.Context(), cfg)
				if err != nil {
					b.Fatal(err)
				}
				conn.Close(b.Context())
			}
		})
	}
}

// benchMySQLConnect opens and closes a go-sql-driver session per iteration.
func benchMySQLConnect(b *testing.B, cfg *mysql.Config) {
	connector, err := mysql.NewConnector(cfg)
	if err != nil {
		b.Fatal(err)
	}
	b.ReportAllocs()
	for b.Loop() {
		conn, err := connector.Connect(b.Context())
		if err != nil {
			b.Fatal(err)
		}
		conn.(driver.Pinger).Ping(b.Context())
		conn.Close()
	}
}

// BenchmarkHandshakeMariaDB times a go-sql-driver login through myauth.Handshake against
// MariaDB with mysql_native_password, next to a direct TLS login.
func BenchmarkHandshakeMariaDB(b *testing.B) {
	m := dbtest.StartMariaDB(b, dbtest.MariaDBOptions{})
	creds := credsource.Credentials{Username: "native", Password: "secret"}
	addr := startHandshakeProxy(b, m.Addr(), m.Certs, creds, myauth.Handshake)
	b.Run("agent", func(b *testing.B) {
		cfg := mysql.NewConfig()
		cfg.User, cfg.Net, cfg.Addr, cfg.DBName = "app", "tcp", addr, "appdb"
		benchMySQLConnect(b, cfg)
	})
	b.Run("direct", func(b *testing.B) {
		cfg := mysql.NewConfig()
		cfg.User, cfg.Passwd, cfg.Net, cfg.Addr, cfg.DBName = "native", "secret", "tcp", m.Addr(), "appdb"
		cfg.TLS = m.Certs.ClientTLS("127.0.0.1")
		benchMySQLConnect(b, cfg)
	})
}

// BenchmarkHandshakeMySQL8 times a login through myauth.Handshake against the in-process
// MySQL 8 server with caching_sha2_password (fast authentication after the first login).
func BenchmarkHandshakeMySQL8(b *testing.B) {
	certs := dbtest.NewCerts(b, b.TempDir())
	srv := mysql8.Start(b, certs)
	creds := credsource.Credentials{Username: "app", Password: "secret"}
	addr := startHandshakeProxy(b, srv.Addr, certs, creds, myauth.Handshake)
	b.Run("agent", func(b *testing.B) {
		cfg := mysql.NewConfig()
		cfg.User, cfg.Net, cfg.Addr = "app", "tcp", addr
		benchMySQLConnect(b, cfg)
	})
	b.Run("direct", func(b *testing.B) {
		cfg := mysql.NewConfig()
		cfg.User, cfg.Passwd, cfg.Net, cfg.Addr = "app", "secret", "tcp", srv.Addr
		cfg.TLS = certs.ClientTLS("127.0.0.1")
		benchMySQLConnect(b, cfg)
	})
}

// BenchmarkHandshakeRedis times a session through redisauth.Handshake against Redis (TLS,
// AUTH as an ACL user) up to the reply to the first PING, next to a direct TLS session
// that sends AUTH itself.
func BenchmarkHandshakeRedis(b *testing.B) {
	r := dbtest.StartRedis(b, dbtest.RedisOptions{})
	creds := credsource.Credentials{Username: dbtest.RedisUser, Password: dbtest.RedisPassword}
	addr := startHandshakeProxy(b, r.Addr(), r.Certs, creds, redisauth.Handshake)
	b.Run("agent", func(b *testing.B) {
		b.ReportAllocs()
		for b.Loop() {
			c, err := net.Dial("tcp", addr)
			if err != nil {
				b.Fatal(err)
			}
			redisExchange(b, c, "PING\r\n", "+PONG\r\n")
		}
	})
	b.Run("direct", func(b *testing.B) {
		cfg := r.ClientTLS(b)
		cfg.ClientSessionCache = tls.NewLRUClientSessionCache(64)
		b.ReportAllocs()
		for b.Loop() {
			c, err := tls.Dial("tcp", r.Addr(), cfg)
			if err != nil {
				b.Fatal(err)
			}
			redisExchange(b, c, "AUTH app secret\r\nPING\r\n", "+OK\r\n", "+PONG\r\n")
		}
	})
}

// redisExchange sends request on c, checks each reply line and closes c.
func redisExchange(b *testing.B, c net.Conn, request string, replies ...string) {
	defer c.Close()
	if _, err := io.WriteString(c, request); err != nil {
		b.Fatal(err)
	}
	br := bufio.NewReader(c)
	for _, want := range replies {
		line, err := br.ReadString('\n')
		if err != nil || line != want {
			b.Fatalf("reply %q (%v), want %q", line, err, want)
		}
	}
}

// BenchmarkHandshakeMongoDB times a mongo-driver connect and ping through
// mongoauth.Handshake against FerretDB, next to a direct TLS login with SCRAM-SHA-256. The
// driver opens a monitoring connection besides the one it pings on, so each iteration
// runs two handshakes.
func BenchmarkHandshakeMongoDB(b *testing.B) {
	f := dbtest.StartFerretDB(b, dbtest.FerretDBOptions{})
	creds := credsource.Credentials{Username: "app", Password: "secret", AuthSource: "appdb"}
	addr := startHandshakeProxy(b, f.Addr(), f.Certs, creds, mongoauth.Handshake)
	uris := map[string]string{
		"agent": "mongodb://" + addr + "/appdb?directConnection=true",
		"direct": "mongodb://app:secret@" + f.Addr() + "/appdb?directConnection=true&tls=true&tlsCAFile=" +
			f.Certs.CAFile + "&authMechanism=SCRAM-SHA-256&authSource=appdb",
	}
	for _, name := range []string{"agent", "direct"} {
		b.Run(name, func(b *testing.B) {
			b.ReportAllocs()
			for b.Loop() {
				client, err := mongo.Connect(b.Context(), options.Client().ApplyURI(uris[name]))
				if err != nil {
					b.Fatal(err)
				}
				if err := client.Ping(b.Context(), readpref.Primary()); err != nil {
					b.Fatal(err)
				}
				client.Disconnect(b.Context())
			}
		})
	}
}
