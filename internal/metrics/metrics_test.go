package metrics

import (
	"errors"
	"net/http/httptest"
	"strings"
	"testing"
	"time"

	"github.com/prometheus/client_golang/prometheus/testutil"

	"github.com/knoxcall/dbproxy/credsource"
	"github.com/knoxcall/dbproxy/knoxproxy"
)

func TestObserverCounts(t *testing.T) {
	obs := NewObserver()
	obs.SessionOpened("orders")
	obs.LoginFinished("orders", "postgres", "ok", 5*time.Millisecond)
	obs.LoginFinished("orders", "postgres", "upstream_auth_failed", 5*time.Millisecond)
	obs.SessionClosed("orders", "ok", time.Second, 10, 20)
	obs.SessionClosed("orders", "upstream_auth_failed", time.Second, 0, 0)
	obs.PeerRejected("orders", "uid_not_allowed")
	obs.CredentialsFetched("orders", nil)
	obs.CredentialsFetched("orders", errors.New("boom"))

	for _, tc := range []struct {
		name string
		got  float64
		want float64
	}{
		{"opened", testutil.ToFloat64(obs.sessionsOpened.WithLabelValues("orders")), 1},
		{"closed ok", testutil.ToFloat64(obs.sessionsClosed.WithLabelValues("orders", "ok")), 1},
		{"closed auth", testutil.ToFloat64(obs.sessionsClosed.WithLabelValues("orders", "upstream_auth_failed")), 1},
		{"auth failures", testutil.ToFloat64(obs.authFailures.WithLabelValues("orders")), 1},
		{"peer rejections", testutil.ToFloat64(obs.peerRejections.WithLabelValues("orders", "uid_not_allowed")), 1},
		{"fetch ok", testutil.ToFloat64(obs.credentialFetches.WithLabelValues("orders", "ok")), 1},
		{"fetch error", testutil.ToFloat64(obs.credentialFetches.WithLabelValues("orders", "error")), 1},
	} {
		if tc.got != tc.want {
			t.Errorf("%s = %v, want %v", tc.name, tc.got, tc.want)
		}
	}
	if n := testutil.CollectAndCount(obs.loginDuration); n != 2 {
		t.Errorf("login duration series = %d, want 2 (one per outcome)", n)
	}
}

func TestRegistryServesScrapeTimeFigures(t *testing.T) {
	stats := []knoxproxy.RouteStats{{
		Name: "orders", Protocol: "postgres", OpenSessions: 3, MaxConnections: 5,
		BytesToUpstream: 100, BytesToClient: 2000, CredentialsFetched: true, CredentialsOK: false,
	}}
	reg, err := New(NewObserver(), Sources{
		Routes: func() []knoxproxy.RouteStats { return stats },
		Cache: func() credsource.CacheStats {
			return credsource.CacheStats{Hits: 7, Misses: 2, Fetches: 2, FetchErrors: 1}
		},
	})
	if err != nil {
		t.Fatal(err)
	}
	rec := httptest.NewRecorder()
	reg.Handler().ServeHTTP(rec, httptest.NewRequest("GET", "/metrics", nil))
	body := rec.Body.String()
	for _, want := range []string{
		`dbproxy_sessions_open{protocol="postgres",route="orders"} 3`,
		`dbproxy_route_max_connections{route="orders"} 5`,
		`dbproxy_bytes_total{direction="to_upstream",route="orders"} 100`,
		`dbproxy_bytes_total{direction="to_client",route="orders"} 2000`,
		`dbproxy_route_credentials_ok{route="orders"} 0`,
		`dbproxy_credential_cache_hits_total 7`,
		`dbproxy_credential_source_errors_total 1`,
		`go_goroutines`,
	} {
		if !strings.Contains(body, want) {
			t.Errorf("scrape lacks %q", want)
		}
	}
	if problems, err := testutil.GatherAndLint(reg.Gatherer()); err != nil || len(problems) > 0 {
		t.Errorf("lint: %v %v", err, problems)
	}
}
