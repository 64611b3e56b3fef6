package knoxproxy

import (
	"bufio"
	"crypto/tls"
	"io"
	"net"
	"strconv"
	"strings"
	"syscall"
	"testing"
	"time"

	"github.com/google/go-cmp/cmp"

	"github.com/knoxcall/dbproxy/internal/dbtest"
)

func TestKeySharesPin(t *testing.T) {
	base := &tls.Config{ServerName: "db"}
	now := time.Unix(1000, 0)
	k := newKeyShares(base)
	k.now = func() time.Time { return now }

	if got := k.config(); got != base {
		t.Fatalf("config before any handshake = %p, want the route's own %p", got, base)
	}

	// A hybrid group is not pinned.
	k.observe(base, tls.ConnectionState{CurveID: tls.X25519MLKEM768})
	if got := k.config(); got != base {
		t.Errorf("config after a hybrid handshake is pinned to %v", got.CurvePreferences)
	}

	// A classical group is pinned, on a copy of the route's configuration.
	k.observe(base, tls.ConnectionState{CurveID: tls.CurveP256})
	pinned := k.config()
	if diff := cmp.Diff([]tls.CurveID{tls.CurveP256, tls.CurveP384, tls.CurveP521}, pinned.CurvePreferences); diff != "" {
		t.Fatalf("pinned CurvePreferences (-want +got):\n%s", diff)
	}
	if pinned.ServerName != "db" {
		t.Errorf("pinned ServerName = %q, want db", pinned.ServerName)
	}
	if len(base.CurvePreferences) != 0 {
		t.Errorf("the route's own configuration changed: %v", base.CurvePreferences)
	}

	// A handshake made with the pin does not extend or change it.
	k.observe(pinned, tls.ConnectionState{CurveID: tls.X25519})
	if got := k.config(); got != pinned {
		t.Errorf("a pinned handshake changed the pin to %v", got.CurvePreferences)
	}

	// The pin ends after pinDuration.
	now = now.Add(pinDuration)
	if got := k.config(); got != base {
		t.Errorf("config after pinDuration = %v, want the route's own", got.CurvePreferences)
	}
}

func TestKeySharesFailureDropsPin(t *testing.T) {
	base := &tls.Config{}
	k := newKeyShares(base)
	k.observe(base, tls.ConnectionState{CurveID: tls.X25519})

	// A failed login with the route's own configuration keeps the pin.
	if k.failed(base) {
		t.Error("failed with the full offer reported a pin dropped")
	}
	pinned := k.config()
	if pinned == base {
		t.Fatal("a failure with the full offer dropped the pin")
	}

	if !k.failed(pinned) {
		t.Error("failed with the pin reported no pin dropped")
	}
	if got := k.config(); got != base {
		t.Errorf("config after a failure with the pin = %v, want the route's own", got.CurvePreferences)
	}
}

// TestKeyShareFollowsServerGroups runs logins against a server whose key exchange groups
// change, and checks each session's close line.
func TestKeyShareFollowsServerGroups(t *testing.T) {
	h := startHarness(t, harnessOptions{})
	steps := []struct {
		name   string
		groups []tls.CurveID
		// want is the reply to LOGIN and the TLS attributes of the close line.
		want, attrs string
	}{
		{"first login offers every group", []tls.CurveID{tls.CurveP256}, "WELCOME\n", "tls_group=CurveP256 tls_hello_retry=true"},
		{"pinned to the server's group", []tls.CurveID{tls.CurveP256}, "WELCOME\n", "tls_group=CurveP256 tls_hello_retry=false"},
		{"server moves to a lower group", []tls.CurveID{tls.CurveP384}, "WELCOME\n", "tls_group=CurveP384 tls_hello_retry=true"},
		{"server drops every pinned group", []tls.CurveID{tls.X25519}, "ERROR route orders: upstream tls\n", "outcome=handshake_error"},
		{"pin dropped after the failure", []tls.CurveID{tls.X25519}, "WELCOME\n", "tls_group=X25519 tls_hello_retry=false"},
	}
	for i, step := range steps {
		h.upstream.groups.Store(step.groups)
		c := h.dial(t)
		io.WriteString(c, "LOGIN\n")
		got, _ := bufio.NewReader(c).ReadString('\n')
		c.Close()
		if got != step.want {
			t.Errorf("%s: reply %q, want %q", step.name, got, step.want)
		}
		var lines []string
		waitUntil(t, 5*time.Second, func() bool {
			lines = CloseLines(h.logs.String())
			return len(lines) > i
		}, func() string { return step.name + ": no close line in\n" + h.logs.String() })
		if line := lines[i]; !strings.Contains(line, step.attrs) {
			t.Errorf("%s: close line lacks %q:\n%s", step.name, step.attrs, line)
		}
	}
	if want := "login failed with the pinned TLS key exchange groups"; !strings.Contains(h.logs.String(), want) {
		t.Errorf("log lacks %q:\n%s", want, h.logs)
	}
}

// CloseLines returns the "session closed" lines of a text log. It is exported for the
// integration tests in knoxproxy_test.
func CloseLines(logs string) []string {
	var lines []string
	for line := range strings.Lines(logs) {
		if strings.Contains(line, `msg="session closed"`) {
			lines = append(lines, line)
		}
	}
	return lines
}

// BenchmarkPostgresTLSKeyShare opens TLS to a real PostgreSQL 15 (SSLRequest, then the
// handshake) with the route's own configuration, which offers Go's default key shares, and
// with the configuration pinned to the group PostgreSQL chose. cpu-µs/op is the CPU time of
// this process, the agent's side of the handshake, per connection.
func BenchmarkPostgresTLSKeyShare(b *testing.B) {
	pg := dbtest.StartPostgres(b, dbtest.PostgresOptions{})
	route := Route{Name: "bench", UpstreamHost: pg.Host, UpstreamPort: pg.Port, TLS: TLS{CAFile: pg.Certs.CAFile}}
	base, err := route.upstreamTLSConfig()
	if err != nil {
		b.Fatal(err)
	}
	addr := net.JoinHostPort(pg.Host, strconv.Itoa(pg.Port))
	handshake := func(cfg *tls.Config) tls.ConnectionState {
		c, err := net.Dial("tcp", addr)
		if err != nil {
			b.Fatal(err)
		}
		defer c.Close()
		// SSLRequest: length 8, code 80877103.
		if _, err := c.Write([]byte{0, 0, 0, 8, 4, 210, 22, 47}); err != nil {
			b.Fatal(err)
		}
		reply := make([]byte, 1)
		if _, err := io.ReadFull(c, reply); err != nil || reply[0] != 'S' {
			b.Fatalf("SSLRequest reply %q, %v", reply, err)
		}
		tc := tls.Client(c, cfg)
		if err := tc.Handshake(); err != nil {
			b.Fatal(err)
		}
		return tc.ConnectionState()
	}
	k := newKeyShares(base)
	k.observe(base, handshake(base))
	for _, tc := range []struct {
		name string
		cfg  *tls.Config
	}{{"full-offer", base}, {"pinned", k.config()}} {
		b.Run(tc.name, func(b *testing.B) {
			var ru syscall.Rusage
			cpu := func() time.Duration {
				syscall.Getrusage(syscall.RUSAGE_SELF, &ru)
				return time.Duration(ru.Utime.Nano() + ru.Stime.Nano())
			}
			before := cpu()
			for b.Loop() {
				handshake(tc.cfg)
			}
			b.ReportMetric(float64((cpu()-before).Microseconds())/float64(b.N), "cpu-µs/op")
		})
	}
}
