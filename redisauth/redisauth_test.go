package redisauth

import (
	"bufio"
	"context"
	"crypto/rand"
	"crypto/sha256"
	"crypto/tls"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"net"
	"os/exec"
	"strconv"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/redis/go-redis/v9"

	"github.com/knoxcall/dbproxy/credsource"
	"github.com/knoxcall/dbproxy/internal/dbtest"
	"github.com/knoxcall/dbproxy/internal/splice"
)

// proxy is a test listener that logs in to an upstream with Handshake for each accepted
// client and splices the two, as the agent does.
type proxy struct {
	addr   string
	errors chan error // the Handshake error of each session, nil on success
	logs   *dbtest.LogBuffer
}

type proxyConfig struct {
	upstream string
	tls      *tls.Config
	creds    credsource.Credentials
	redial   func(ctx context.Context) (net.Conn, credsource.Credentials, error)
	timeout  time.Duration
}

func startProxy(t *testing.T, cfg proxyConfig) *proxy {
	t.Helper()
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	if cfg.timeout == 0 {
		cfg.timeout = 5 * time.Second
	}
	p := &proxy{addr: ln.Addr().String(), errors: make(chan error, 100), logs: &dbtest.LogBuffer{}}
	logger := slog.New(slog.NewTextHandler(p.logs, &slog.HandlerOptions{Level: slog.LevelDebug}))

	var wg sync.WaitGroup
	var mu sync.Mutex
	var open []net.Conn
	t.Cleanup(func() {
		ln.Close()
		mu.Lock()
		for _, c := range open {
			c.Close()
		}
		mu.Unlock()
		wg.Wait()
	})

	wg.Add(1)
	go func() {
		defer wg.Done()
		for {
			client, err := ln.Accept()
			if err != nil {
				return
			}
			upstream, err := net.Dial("tcp", cfg.upstream)
			if err != nil {
				client.Close()
				p.errors <- err
				continue
			}
			mu.Lock()
			open = append(open, client, upstream)
			mu.Unlock()
			wg.Add(1)
			go func() {
				defer wg.Done()
				defer client.Close()
				defer upstream.Close()
				ctx, cancel := context.WithTimeout(context.Background(), cfg.timeout)
				conns, err := Handshake(ctx, client, upstream, cfg.creds,
					Options{Route: testRoute, TLSConfig: cfg.tls, Logger: logger, Redial: cfg.redial})
				cancel()
				p.errors <- err
				if err != nil {
					return
				}
				defer conns.Upstream.Close()
				splice.Run(conns.Client, conns.Upstream)
			}()
		}
	}()
	return p
}

// handshakeError waits for the result of the next session's Handshake.
func (p *proxy) handshakeError(t *testing.T) error {
	t.Helper()
	select {
	case err := <-p.errors:
		return err
	case <-time.After(10 * time.Second):
		t.Fatal("no handshake finished within 10s")
		return nil
	}
}

func appCreds() credsource.Credentials {
	return credsource.Credentials{Username: dbtest.RedisUser, Password: dbtest.RedisPassword}
}

// startRedisProxy starts a Redis server and a proxy in front of it with the given
// credentials.
func startRedisProxy(t *testing.T, creds credsource.Credentials) (*dbtest.Redis, *proxy) {
	t.Helper()
	r := dbtest.StartRedis(t, dbtest.RedisOptions{})
	return r, startProxy(t, proxyConfig{upstream: r.Addr(), tls: r.ClientTLS(t), creds: creds})
}

// redisCLI runs redis-cli against addr and returns its combined output. redis-cli exits 0
// on error replies, so callers check the output.
func redisCLI(t *testing.T, addr string, args ...string) string {
	t.Helper()
	bin := dbtest.LookPath(t, "redis-cli")
	host, port, _ := net.SplitHostPort(addr)
	ctx, cancel := context.WithTimeout(t.Context(), 20*time.Second)
	defer cancel()
	cmd := exec.CommandContext(ctx, bin, append([]string{"-h", host, "-p", port, "--no-auth-warning"}, args...)...)
	out, err := cmd.CombinedOutput()
	if err != nil {
		t.Logf("redis-cli %v: %v", args, err)
	}
	return strings.TrimSpace(string(out))
}

func TestRedisCLIThroughProxy(t *testing.T) {
	_, p := startRedisProxy(t, appCreds())
	tests := []struct {
		name string
		args []string
		want string
	}{
		{"ping", []string{"PING"}, "PONG"},
		{"whoami", []string{"ACL", "WHOAMI"}, "app"},
		{"dummy password", []string{"-a", "dummy", "ACL", "WHOAMI"}, "app"},
		{"dummy user and password", []string{"--user", "default", "--pass", "dummy", "ACL", "WHOAMI"}, "app"},
		{"resp3", []string{"-3", "ACL", "WHOAMI"}, "app"},
		{"resp3 dummy password", []string{"-3", "-a", "dummy", "ACL", "WHOAMI"}, "app"},
		{"set and get", []string{"EVAL", "redis.call('SET', KEYS[1], ARGV[1]) return redis.call('GET', KEYS[1])", "1", "k", "v1"}, "v1"},
		{"auth command", []string{"AUTH", "someone", "else"}, "OK"},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			if got := redisCLI(t, p.addr, tt.args...); got != tt.want {
				t.Errorf("redis-cli %v: got %q, want %q", tt.args, got, tt.want)
			}
			if err := p.handshakeError(t); err != nil {
				t.Errorf("handshake: %v", err)
			}
		})
	}
}

func newGoRedis(t *testing.T, addr string, protocol int) *redis.Client {
	t.Helper()
	c := redis.NewClient(&redis.Options{Addr: addr, Protocol: protocol, Password: "dummy",
		DisableIdentity: true, MaxRetries: -1, DialTimeout: 5 * time.Second, ReadTimeout: 10 * time.Second})
	t.Cleanup(func() { c.Close() })
	return c
}

func TestGoRedisThroughProxy(t *testing.T) {
	_, p := startRedisProxy(t, appCreds())
	for _, protocol := range []int{2, 3} {
		t.Run("resp"+strconv.Itoa(protocol), func(t *testing.T) {
			ctx := t.Context()
			c := newGoRedis(t, p.addr, protocol)
			user, err := c.Do(ctx, "ACL", "WHOAMI").Text()
			if err != nil || user != "app" {
				t.Fatalf("ACL WHOAMI: got %q, %v; want app", user, err)
			}
			key := "k" + strconv.Itoa(protocol)
			if err := c.Set(ctx, key, "v", 0).Err(); err != nil {
				t.Fatalf("SET: %v", err)
			}
			if got, err := c.Get(ctx, key).Result(); err != nil || got != "v" {
				t.Errorf("GET: got %q, %v; want v", got, err)
			}
			hello, err := c.Do(ctx, "HELLO", protocol, "AUTH", "default", "dummy").Result()
			if err != nil {
				t.Fatalf("HELLO AUTH: %v", err)
			}
			if s := fmt.Sprint(hello); !strings.Contains(s, "proto "+strconv.Itoa(protocol)) &&
				!strings.Contains(s, "proto:"+strconv.Itoa(protocol)) {
				t.Errorf("HELLO reply %v does not show protocol %d", hello, protocol)
			}
			if user, _ := c.Do(ctx, "ACL", "WHOAMI").Text(); user != "app" {
				t.Errorf("ACL WHOAMI after HELLO AUTH: got %q, want app", user)
			}
		})
	}
}

// rawClient is a plain connection to the proxy with a RESP reply reader.
type rawClient struct {
	net.Conn
	r *bufio.Reader
}

func dialRaw(t *testing.T, addr string) *rawClient {
	t.Helper()
	c, err := net.Dial("tcp", addr)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { c.Close() })
	c.SetDeadline(time.Now().Add(30 * time.Second))
	return &rawClient{Conn: c, r: bufio.NewReader(c)}
}

func (c *rawClient) send(t *testing.T, args ...string) {
	t.Helper()
	if _, err := c.Write(appendCommand(nil, args...)); err != nil {
		t.Fatalf("send %s: %v", args[0], err)
	}
}

// reply reads one reply and returns it in a compact text form: bulk strings as their
// value, aggregates in brackets after their type byte.
func (c *rawClient) reply(t *testing.T) string {
	t.Helper()
	s, err := readReply(c.r)
	if err != nil {
		t.Fatalf("read reply: %v", err)
	}
	return s
}

func readReply(r *bufio.Reader) (string, error) {
	line, err := r.ReadString('\n')
	if err != nil {
		return "", err
	}
	line = strings.TrimSuffix(line, "\r\n")
	if line == "" {
		return "", errors.New("empty reply line")
	}
	switch t, rest := line[0], line[1:]; t {
	case '$', '=', '!':
		n, err := strconv.Atoi(rest)
		if err != nil || n < 0 {
			return "(nil)", err
		}
		buf := make([]byte, n+2)
		if _, err := io.ReadFull(r, buf); err != nil {
			return "", err
		}
		return string(buf[:n]), nil
	case '*', '>', '~', '%', '|':
		n, err := strconv.Atoi(rest)
		if err != nil {
			return "", err
		}
		if t == '%' || t == '|' {
			n *= 2
		}
		parts := make([]string, 0, n)
		for range n {
			s, err := readReply(r)
			if err != nil {
				return "", err
			}
			parts = append(parts, s)
		}
		return string(t) + "[" + strings.Join(parts, " ") + "]", nil
	}
	return line, nil
}

func TestPipelineWithAuthKeepsOrder(t *testing.T) {
	_, p := startRedisProxy(t, appCreds())
	c := dialRaw(t, p.addr)
	const n = 10000
	var batch []byte
	for i := range n {
		if i == n/2 {
			batch = appendCommand(batch, "AUTH", "default", "dummy")
			continue
		}
		batch = appendCommand(batch, "ECHO", strconv.Itoa(i))
	}
	go c.Write(batch)
	for i := range n {
		want := strconv.Itoa(i)
		if i == n/2 {
			want = "+OK"
		}
		if got := c.reply(t); got != want {
			t.Fatalf("reply %d: got %q, want %q", i, got, want)
		}
	}
	c.send(t, "ACL", "WHOAMI")
	if got := c.reply(t); got != "app" {
		t.Errorf("ACL WHOAMI after the pipeline: got %q, want app", got)
	}
}

func TestMultiExecWithAuth(t *testing.T) {
	_, p := startRedisProxy(t, appCreds())
	c := dialRaw(t, p.addr)
	steps := []struct {
		args []string
		want string
	}{
		{[]string{"MULTI"}, "+OK"},
		{[]string{"SET", "tx", "1"}, "+QUEUED"},
		{[]string{"AUTH", "dummy"}, "+QUEUED"},
		{[]string{"INCR", "tx"}, "+QUEUED"},
		{[]string{"EXEC"}, "*[+OK +OK :2]"},
	}
	for _, s := range steps {
		c.send(t, s.args...)
		if got := c.reply(t); got != s.want {
			t.Errorf("%v: got %q, want %q", s.args, got, s.want)
		}
	}
}

func TestPubSubThroughProxy(t *testing.T) {
	_, p := startRedisProxy(t, appCreds())
	for _, protocol := range []int{2, 3} {
		t.Run("resp"+strconv.Itoa(protocol), func(t *testing.T) {
			ctx := t.Context()
			sub := newGoRedis(t, p.addr, protocol).Subscribe(ctx, "news")
			defer sub.Close()
			if _, err := sub.Receive(ctx); err != nil {
				t.Fatalf("subscribe: %v", err)
			}
			if err := newGoRedis(t, p.addr, protocol).Publish(ctx, "news", "hello").Err(); err != nil {
				t.Fatalf("publish: %v", err)
			}
			msg, err := sub.ReceiveMessage(ctx)
			if err != nil {
				t.Fatalf("receive: %v", err)
			}
			if msg.Channel != "news" || msg.Payload != "hello" {
				t.Errorf("got message %q on %q, want hello on news", msg.Payload, msg.Channel)
			}
		})
	}
}

func TestBlockingPopThroughProxy(t *testing.T) {
	_, p := startRedisProxy(t, appCreds())
	ctx := t.Context()
	waiter := newGoRedis(t, p.addr, 3)
	result := make(chan []string, 1)
	go func() {
		v, err := waiter.BLPop(ctx, 10*time.Second, "queue").Result()
		if err != nil {
			v = []string{"error: " + err.Error()}
		}
		result <- v
	}()
	time.Sleep(200 * time.Millisecond)
	if err := newGoRedis(t, p.addr, 2).RPush(ctx, "queue", "job").Err(); err != nil {
		t.Fatalf("RPUSH: %v", err)
	}
	select {
	case got := <-result:
		if want := []string{"queue", "job"}; strings.Join(got, ",") != strings.Join(want, ",") {
			t.Errorf("BLPOP: got %q, want %q", got, want)
		}
	case <-time.After(15 * time.Second):
		t.Fatal("BLPOP did not return")
	}
}

func TestClientTrackingPushOverRESP3(t *testing.T) {
	_, p := startRedisProxy(t, appCreds())
	c := dialRaw(t, p.addr)
	c.send(t, "HELLO", "3", "AUTH", "default", "dummy")
	if got := c.reply(t); !strings.HasPrefix(got, "%[server redis") {
		t.Fatalf("HELLO 3: got %q, want a map", got)
	}
	for _, args := range [][]string{{"CLIENT", "TRACKING", "on"}, {"GET", "tracked"}} {
		c.send(t, args...)
		c.reply(t)
	}
	if err := newGoRedis(t, p.addr, 2).Set(t.Context(), "tracked", "new", 0).Err(); err != nil {
		t.Fatalf("SET: %v", err)
	}
	if got, want := c.reply(t), ">[invalidate *[tracked]]"; got != want {
		t.Errorf("tracking push: got %q, want %q", got, want)
	}
}

func TestLargeValueRoundTrip(t *testing.T) {
	_, p := startRedisProxy(t, appCreds())
	ctx := t.Context()
	value := make([]byte, 64<<20)
	rand.Read(value)
	c := newGoRedis(t, p.addr, 3)
	if err := c.Set(ctx, "big", value, 0).Err(); err != nil {
		t.Fatalf("SET 64 MiB: %v", err)
	}
	got, err := c.Get(ctx, "big").Bytes()
	if err != nil {
		t.Fatalf("GET 64 MiB: %v", err)
	}
	if sha256.Sum256(got) != sha256.Sum256(value) {
		t.Errorf("64 MiB value: checksum differs after the round trip (got %d bytes)", len(got))
	}
}

func TestResetIsRejectedAndSessionStays(t *testing.T) {
	_, p := startRedisProxy(t, appCreds())
	c := dialRaw(t, p.addr)
	c.send(t, "SET", "before", "1")
	c.reply(t)
	c.send(t, "RESET")
	got := c.reply(t)
	want := `-ERR unknown command 'RESET (not supported by dbproxy route "cache": it would log the session out; reconnect instead)', with args beginning with: `
	if got != want {
		t.Errorf("RESET: got %q, want %q", got, want)
	}
	// INCR needs the ACL user's rights: the default user would get NOAUTH.
	c.send(t, "INCR", "before")
	if got := c.reply(t); got != ":2" {
		t.Errorf("INCR after RESET: got %q, want :2", got)
	}
	c.send(t, "ACL", "WHOAMI")
	if got := c.reply(t); got != "app" {
		t.Errorf("ACL WHOAMI after RESET: got %q, want app", got)
	}
}

func TestWrongStoredPassword(t *testing.T) {
	creds := credsource.Credentials{Username: dbtest.RedisUser, Password: "canary-wrong-pw"}
	_, p := startRedisProxy(t, creds)

	out := redisCLI(t, p.addr, "PING")
	if !strings.Contains(out, `WRONGPASS dbproxy route "cache"`) {
		t.Errorf("redis-cli output %q does not carry the WRONGPASS error for the route", out)
	}
	err := p.handshakeError(t)
	if !errors.Is(err, ErrAuthFailed) {
		t.Errorf("handshake error %v does not wrap ErrAuthFailed", err)
	}

	gerr := newGoRedis(t, p.addr, 3).Ping(t.Context()).Err()
	if gerr == nil || !strings.Contains(gerr.Error(), "WRONGPASS") {
		t.Errorf("go-redis PING: got %v, want a WRONGPASS error", gerr)
	}
	p.handshakeError(t)

	for name, text := range map[string]string{"redis-cli output": out, "handshake error": fmt.Sprint(err),
		"go-redis error": fmt.Sprint(gerr), "log": p.logs.String()} {
		if strings.Contains(text, creds.Password) {
			t.Errorf("%s contains the stored password", name)
		}
	}
}

func TestRedialAfterRejection(t *testing.T) {
	r := dbtest.StartRedis(t, dbtest.RedisOptions{})
	wrong := credsource.Credentials{Username: dbtest.RedisUser, Password: "old"}
	tests := []struct {
		name     string
		fresh    credsource.Credentials
		redialFn func(fresh credsource.Credentials) error
		wantErr  error
	}{
		{"new credentials", appCreds(), nil, nil},
		{"unchanged", wrong, func(credsource.Credentials) error {
			return fmt.Errorf("refetch: %w", ErrCredentialsUnchanged)
		}, ErrAuthFailed},
		{"still wrong", credsource.Credentials{Username: dbtest.RedisUser, Password: "newer"}, nil, ErrAuthFailed},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			calls := 0
			redial := func(ctx context.Context) (net.Conn, credsource.Credentials, error) {
				calls++
				if tt.redialFn != nil {
					return nil, credsource.Credentials{}, tt.redialFn(tt.fresh)
				}
				c, err := (&net.Dialer{}).DialContext(ctx, "tcp", r.Addr())
				return c, tt.fresh, err
			}
			p := startProxy(t, proxyConfig{upstream: r.Addr(), tls: r.ClientTLS(t), creds: wrong, redial: redial})
			out := redisCLI(t, p.addr, "ACL", "WHOAMI")
			err := p.handshakeError(t)
			if calls != 1 {
				t.Errorf("Redial called %d times, want 1", calls)
			}
			if !errors.Is(err, tt.wantErr) || (tt.wantErr == nil) != (err == nil) {
				t.Errorf("handshake error %v, want %v", err, tt.wantErr)
			}
			want := "app"
			if tt.wantErr != nil {
				want = `WRONGPASS dbproxy route "cache"`
			}
			if !strings.Contains(out, want) {
				t.Errorf("redis-cli output %q, want it to contain %q", out, want)
			}
		})
	}
}

func TestTLSClientCertificate(t *testing.T) {
	r := dbtest.StartRedis(t, dbtest.RedisOptions{TLSAuthClients: true})

	withCert := startProxy(t, proxyConfig{upstream: r.Addr(), tls: r.ClientTLS(t), creds: appCreds()})
	if got := redisCLI(t, withCert.addr, "ACL", "WHOAMI"); got != "app" {
		t.Errorf("with a client certificate: got %q, want app", got)
	}

	// The server rejects a client without a certificate during the TLS handshake or at
	// the first read. Either way the client gets an error that names the route.
	without := startProxy(t, proxyConfig{upstream: r.Addr(), tls: r.Certs.ClientTLS(r.Host), creds: appCreds()})
	out := redisCLI(t, without.addr, "PING")
	if !strings.Contains(out, `ERR dbproxy route "cache"`) {
		t.Errorf("without a client certificate: got %q, want an error naming the route", out)
	}
	if err := without.handshakeError(t); err == nil {
		t.Error("handshake without a client certificate succeeded")
	}
}

func TestReject(t *testing.T) {
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	defer ln.Close()
	done := make(chan error, 1)
	go func() {
		c, err := ln.Accept()
		if err != nil {
			done <- err
			return
		}
		defer c.Close()
		done <- Reject(context.Background(), c, testRoute, errors.New("credentials: secret not found\r\nmore"))
	}()
	c := dialRaw(t, ln.Addr().String())
	c.send(t, "SET", "k", strings.Repeat("v", 100000))
	want := `-ERR dbproxy route "cache": credentials: secret not found  more`
	if got := c.reply(t); got != want {
		t.Errorf("Reject reply: got %q, want %q", got, want)
	}
	if _, err := c.r.ReadByte(); err == nil {
		t.Error("connection still open after the reply")
	}
	if err := <-done; err != nil {
		t.Errorf("Reject: %v", err)
	}
}

func TestInlineAndBadInputThroughProxy(t *testing.T) {
	_, p := startRedisProxy(t, appCreds())
	c := dialRaw(t, p.addr)

	// Inline commands, as typed into telnet, get the same rewrite.
	io.WriteString(c, "AUTH someone else\r\nACL WHOAMI\r\n")
	for _, want := range []string{"+OK", "app"} {
		if got := c.reply(t); got != want {
			t.Errorf("inline command: got %q, want %q", got, want)
		}
	}

	// A frame Redis rejects ends the session with errors, not a silent close.
	io.WriteString(c, "*1\r\n+PING\r\n")
	got := c.reply(t)
	if !strings.HasPrefix(got, "-ERR unknown command 'dbproxy'") || !strings.Contains(got, "protocol error: expected '$'") {
		t.Errorf("bad frame: got %q, want the dbproxy protocol error", got)
	}
	if got := c.reply(t); !strings.HasPrefix(got, "-ERR Protocol error") {
		t.Errorf("bad frame: second reply %q, want the server's protocol error", got)
	}
	if _, err := c.r.ReadByte(); err == nil {
		t.Error("connection still open after the protocol error")
	}
}

func TestDefaultUserCredentials(t *testing.T) {
	// Without a user name the agent sends AUTH password, which Redis checks against
	// requirepass, and HELLO's AUTH clause names the user "default".
	_, p := startRedisProxy(t, credsource.Credentials{Password: dbtest.RedisDefaultPassword})
	if got := redisCLI(t, p.addr, "-a", "dummy", "ACL", "WHOAMI"); got != "default" {
		t.Errorf("redis-cli -a dummy: got %q, want default", got)
	}
	user, err := newGoRedis(t, p.addr, 3).Do(t.Context(), "ACL", "WHOAMI").Text()
	if err != nil || user != "default" {
		t.Errorf("go-redis over RESP3: got %q, %v; want default", user, err)
	}
}

// TestHelloSyntaxErrorNamesOption checks that the server's syntax error for a HELLO with an
// incomplete AUTH or SETNAME option names it as Redis does, and that an unknown option,
// which may be a credential, is replaced by a placeholder.
func TestHelloSyntaxErrorNamesOption(t *testing.T) {
	_, p := startRedisProxy(t, appCreds())
	c := dialRaw(t, p.addr)
	cases := []struct {
		name string
		args []string
		want string
	}{
		{"auth without password", []string{"HELLO", "3", "AUTH", "someone"}, "-ERR Syntax error in HELLO option 'AUTH'"},
		{"setname without name", []string{"HELLO", "3", "setname"}, "-ERR Syntax error in HELLO option 'setname'"},
		{"unknown option", []string{"HELLO", "3", "someone", "Secret-1"}, "-ERR Syntax error in HELLO option '" + helloOptionHidden + "'"},
	}
	for _, tc := range cases {
		c.send(t, tc.args...)
		if got := c.reply(t); got != tc.want {
			t.Errorf("%s: got %q, want %q", tc.name, got, tc.want)
		}
	}

	// Inline, as typed into telnet.
	io.WriteString(c, "HELLO 3 auth someone\r\n")
	if got, want := c.reply(t), "-ERR Syntax error in HELLO option 'auth'"; got != want {
		t.Errorf("inline: got %q, want %q", got, want)
	}
}
