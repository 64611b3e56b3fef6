package bench

import (
	"context"
	"fmt"
	"io"
	"strconv"
	"testing"
	"time"

	"github.com/knoxcall/dbproxy/credsource"
	"github.com/knoxcall/dbproxy/internal/dbtest"
	"github.com/knoxcall/dbproxy/knoxproxy"
	"github.com/knoxcall/dbproxy/peercred"
)

// BenchmarkSessionOpen times a Redis session through knoxproxy, from connect to the reply
// to the first PING, while the client process already holds a number of open sessions.
// The agent's default peer check finds the peer's PID by reading the client's file
// descriptors, so its cost grows with the descriptors the client holds. Without PID lookup
// the peer check is one sock_diag query.
func BenchmarkSessionOpen(b *testing.B) {
	r := dbtest.StartRedis(b, dbtest.RedisOptions{})
	for _, resolvePID := range []bool{true, false} {
		addr := startRedisRoute(b, r, &peercred.Kernel{ResolvePID: resolvePID})
		for _, heldSessions := range []int{0, 1000, 4000} {
			b.Run(fmt.Sprintf("pid=%v/held=%d", resolvePID, heldSessions), func(b *testing.B) {
				closers, err := openParallel(heldSessions, func() (io.Closer, error) { return openRedisSession(addr) })
				defer closeAll(closers)
				if err != nil {
					b.Fatalf("opened %d of %d sessions: %v", len(closers), heldSessions, err)
				}
				b.ResetTimer()
				for b.Loop() {
					c, err := openRedisSession(addr)
					if err != nil {
						b.Fatal(err)
					}
					c.Close()
				}
			})
		}
	}
}

// startRedisRoute serves a redis route to r in-process with the given peer checker and
// returns its address.
func startRedisRoute(b *testing.B, r *dbtest.Redis, checker peercred.Checker) string {
	b.Helper()
	port := dbtest.FreePort(b)
	srv, err := knoxproxy.New(knoxproxy.Config{
		Routes: []knoxproxy.Route{{Name: "cache", Protocol: "redis", LocalPort: port, UpstreamHost: r.Host,
			UpstreamPort: r.Port, SecretID: "sec", TLS: knoxproxy.TLS{CAFile: r.Certs.CAFile}}},
		Credentials: credsource.NewCache(credsource.NewStatic(map[string]credsource.Credentials{
			"sec": {Username: dbtest.RedisUser, Password: dbtest.RedisPassword},
		}), time.Minute),
		PeerChecker:     checker,
		ShutdownTimeout: time.Second,
	})
	if err != nil {
		b.Fatal(err)
	}
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan error, 1)
	go func() { done <- srv.Serve(ctx) }()
	b.Cleanup(func() {
		cancel()
		<-done
	})
	<-srv.Ready()
	return "127.0.0.1:" + strconv.Itoa(port)
}
