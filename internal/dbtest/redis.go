package dbtest

import (
	"bufio"
	"crypto/tls"
	"fmt"
	"io"
	"net"
	"os"
	"path/filepath"
	"strconv"
	"strings"
	"syscall"
	"testing"
	"time"
)

// Users that StartRedis configures. The default user is protected by requirepass, and the
// ACL user RedisUser may run every command on every key and Pub/Sub channel.
const (
	RedisDefaultPassword = "defaultsecret"
	RedisUser            = "app"
	RedisPassword        = "secret"
)

// redisStartTimeout bounds the wait for a new server to reply to PING.
const redisStartTimeout = 10 * time.Second

// RedisOptions change how StartRedis configures the server. The zero value gives a server
// that requires TLS but no client certificate.
type RedisOptions struct {
	// TLSAuthClients sets tls-auth-clients yes, so the server rejects TLS clients without a
	// certificate signed by the test CA. ClientTLS then includes the client certificate.
	TLSAuthClients bool
}

// Redis is a running Redis server that listens only on a TLS port on 127.0.0.1 (port 0
// turns the plaintext port off).
type Redis struct {
	Host  string
	Port  int
	Dir   string // server directory, with redis.log
	Certs *Certs

	tlsAuthClients bool
}

// StartRedis starts redis-server as the redis system user on a free TLS port, with
// requirepass RedisDefaultPassword and the ACL user RedisUser, and stops it in t.Cleanup.
func StartRedis(t testing.TB, opts RedisOptions) *Redis {
	t.Helper()
	RequireRoot(t)
	bin := LookPath(t, "redis-server")
	base := SharedDir(t)
	certs := NewCerts(t, filepath.Join(base, "certs"))
	dir := filepath.Join(base, "redis")
	r := &Redis{Host: "127.0.0.1", Port: FreePort(t), Dir: dir, Certs: certs,
		tlsAuthClients: opts.TLSAuthClients}
	if err := os.MkdirAll(dir, 0o700); err != nil {
		t.Fatal(err)
	}
	for _, f := range []string{"server.pem", "server.key", "ca.pem"} {
		copyFile(t, filepath.Join(certs.Dir, f), filepath.Join(dir, f), 0o600)
	}
	chownTree(t, dir, "redis")

	authClients := "no"
	if opts.TLSAuthClients {
		authClients = "yes"
	}
	runAs(t, "redis", bin,
		"--bind", r.Host, "--port", "0", "--tls-port", strconv.Itoa(r.Port),
		"--tls-cert-file", filepath.Join(dir, "server.pem"),
		"--tls-key-file", filepath.Join(dir, "server.key"),
		"--tls-ca-cert-file", filepath.Join(dir, "ca.pem"),
		"--tls-auth-clients", authClients,
		"--requirepass", RedisDefaultPassword,
		// &* grants every Pub/Sub channel: Redis 7 defaults to acl-pubsub-default resetchannels.
		"--user", RedisUser, "on", ">"+RedisPassword, "~*", "&*", "+@all",
		"--save", "", "--appendonly", "no",
		"--dir", dir, "--pidfile", r.pidFile(), "--logfile", filepath.Join(dir, "redis.log"),
		"--daemonize", "yes")
	t.Cleanup(r.Stop)
	r.waitReady(t)
	return r
}

// Addr returns the server's host:port.
func (r *Redis) Addr() string { return net.JoinHostPort(r.Host, strconv.Itoa(r.Port)) }

// ClientTLS returns a TLS configuration that verifies the server as 127.0.0.1 and presents
// the test client certificate when the server requires one.
func (r *Redis) ClientTLS(t testing.TB) *tls.Config {
	t.Helper()
	cfg := r.Certs.ClientTLS(r.Host)
	if r.tlsAuthClients {
		cert, err := tls.LoadX509KeyPair(r.Certs.ClientCert, r.Certs.ClientKey)
		if err != nil {
			t.Fatalf("load client certificate: %v", err)
		}
		cfg.Certificates = []tls.Certificate{cert}
	}
	return cfg
}

// Stop stops the server by the pid in its pid file. Tests use it to make the upstream
// unreachable; calling it twice is harmless.
func (r *Redis) Stop() {
	data, err := os.ReadFile(r.pidFile())
	if err != nil {
		return
	}
	pid, err := strconv.Atoi(strings.TrimSpace(string(data)))
	if err != nil {
		return
	}
	StopPID(pid, syscall.SIGTERM)
}

func (r *Redis) pidFile() string { return filepath.Join(r.Dir, "redis.pid") }

// waitReady polls until the server accepts a TLS login as RedisUser and replies to PING.
func (r *Redis) waitReady(t testing.TB) {
	t.Helper()
	deadline := time.Now().Add(redisStartTimeout)
	var lastErr error
	for time.Now().Before(deadline) {
		if lastErr = r.ping(t); lastErr == nil {
			return
		}
		time.Sleep(20 * time.Millisecond)
	}
	log, _ := os.ReadFile(filepath.Join(r.Dir, "redis.log"))
	t.Fatalf("redis on %s not ready after %v: %v\n%s", r.Addr(), redisStartTimeout, lastErr, log)
}

func (r *Redis) ping(t testing.TB) error {
	d := tls.Dialer{Config: r.ClientTLS(t), NetDialer: &net.Dialer{Timeout: time.Second}}
	c, err := d.Dial("tcp", r.Addr())
	if err != nil {
		return err
	}
	defer c.Close()
	c.SetDeadline(time.Now().Add(2 * time.Second))
	if _, err := fmt.Fprintf(c, "AUTH %s %s\r\nPING\r\n", RedisUser, RedisPassword); err != nil {
		return err
	}
	br := bufio.NewReader(c)
	for _, want := range []string{"+OK\r\n", "+PONG\r\n"} {
		line, err := br.ReadString('\n')
		if err != nil && err != io.EOF {
			return err
		}
		if line != want {
			return fmt.Errorf("got reply %q, want %q", line, want)
		}
	}
	return nil
}
