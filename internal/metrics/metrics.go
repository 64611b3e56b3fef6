// Package metrics exposes the agent's figures in the Prometheus format: a knoxproxy.Observer
// that counts session events, and a collector that reads the live route figures and the
// credential cache counters when Prometheus scrapes.
//
// Metric names start with dbproxy_. Labels are the route name, the protocol, the session
// outcome and the rejection reason, all of which come from the configuration or from a
// fixed set of labels in knoxproxy, so their number stays bounded.
package metrics

import (
	"net/http"
	"time"

	"github.com/prometheus/client_golang/prometheus"
	"github.com/prometheus/client_golang/prometheus/collectors"
	"github.com/prometheus/client_golang/prometheus/promhttp"

	"github.com/knoxcall/dbproxy/credsource"
	"github.com/knoxcall/dbproxy/knoxproxy"
)

// outcomeAuthFailed is knoxproxy's outcome label for an upstream that rejected the
// stored credentials.
const outcomeAuthFailed = "upstream_auth_failed"

// loginBuckets are the bounds, in seconds, of the login duration histogram: from 1 ms, below
// a TLS login on loopback, up to knoxproxy.DefaultLoginTimeout (30 s).
var loginBuckets = []float64{0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30}

// Observer counts session events. It implements knoxproxy.Observer and is safe for
// concurrent use. Create it with NewObserver.
type Observer struct {
	sessionsOpened    *prometheus.CounterVec
	sessionsClosed    *prometheus.CounterVec
	sessionDuration   *prometheus.HistogramVec
	loginDuration     *prometheus.HistogramVec
	authFailures      *prometheus.CounterVec
	peerRejections    *prometheus.CounterVec
	credentialFetches *prometheus.CounterVec
}

var _ knoxproxy.Observer = (*Observer)(nil)

// NewObserver returns an Observer whose metrics are not yet registered: pass it to New.
func NewObserver() *Observer {
	return &Observer{
		sessionsOpened: prometheus.NewCounterVec(prometheus.CounterOpts{
			Name: "dbproxy_sessions_opened_total",
			Help: "Accepted connections that passed the peer check.",
		}, []string{"route"}),
		sessionsClosed: prometheus.NewCounterVec(prometheus.CounterOpts{
			Name: "dbproxy_sessions_total",
			Help: "Accepted connections that have closed, by outcome (ok, upstream_auth_failed, peer_rejected, ...).",
		}, []string{"route", "outcome"}),
		sessionDuration: prometheus.NewHistogramVec(prometheus.HistogramOpts{
			Name:    "dbproxy_session_duration_seconds",
			Help:    "Time from accept to close of a session.",
			Buckets: prometheus.ExponentialBuckets(0.01, 4, 10),
		}, []string{"route"}),
		loginDuration: prometheus.NewHistogramVec(prometheus.HistogramOpts{
			Name:    "dbproxy_login_duration_seconds",
			Help:    "Time from accept to the end of the login phase (credential fetch, dial, TLS and authentication), by outcome.",
			Buckets: loginBuckets,
		}, []string{"route", "protocol", "outcome"}),
		authFailures: prometheus.NewCounterVec(prometheus.CounterOpts{
			Name: "dbproxy_upstream_auth_failures_total",
			Help: "Logins that the upstream rejected with the stored credentials.",
		}, []string{"route"}),
		peerRejections: prometheus.NewCounterVec(prometheus.CounterOpts{
			Name: "dbproxy_peer_rejections_total",
			Help: "Connections closed before the login, by reason (uid_not_allowed, peer_unknown, http_request, tls_client_hello, too_many_connections).",
		}, []string{"route", "reason"}),
		credentialFetches: prometheus.NewCounterVec(prometheus.CounterOpts{
			Name: "dbproxy_credential_fetches_total",
			Help: "Credential fetches by sessions (from the cache or the source), by result (ok or error).",
		}, []string{"route", "result"}),
	}
}

// SessionOpened implements knoxproxy.Observer.
func (o *Observer) SessionOpened(route string) {
	o.sessionsOpened.WithLabelValues(route).Inc()
}

// SessionClosed implements knoxproxy.Observer. The bytes are counted from Server.Stats
// instead, which includes sessions still open.
func (o *Observer) SessionClosed(route, outcome string, duration time.Duration, toUpstream, toClient int64) {
	o.sessionsClosed.WithLabelValues(route, outcome).Inc()
	o.sessionDuration.WithLabelValues(route).Observe(duration.Seconds())
}

// LoginFinished implements knoxproxy.Observer.
func (o *Observer) LoginFinished(route, protocol, outcome string, duration time.Duration) {
	o.loginDuration.WithLabelValues(route, protocol, outcome).Observe(duration.Seconds())
	if outcome == outcomeAuthFailed {
		o.authFailures.WithLabelValues(route).Inc()
	}
}

// PeerRejected implements knoxproxy.Observer.
func (o *Observer) PeerRejected(route, reason string) {
	o.peerRejections.WithLabelValues(route, reason).Inc()
}

// CredentialsFetched implements knoxproxy.Observer.
func (o *Observer) CredentialsFetched(route string, err error) {
	result := "ok"
	if err != nil {
		result = "error"
	}
	o.credentialFetches.WithLabelValues(route, result).Inc()
}

func (o *Observer) collectors() []prometheus.Collector {
	return []prometheus.Collector{o.sessionsOpened, o.sessionsClosed, o.sessionDuration,
		o.loginDuration, o.authFailures, o.peerRejections, o.credentialFetches}
}

// Sources are the functions that the scrape-time collector reads.
type Sources struct {
	// Routes returns the live figures of the running routes, usually Server.Stats.
	Routes func() []knoxproxy.RouteStats
	// Cache returns the credential cache counters, usually Cache.Stats. Nil means the
	// cache metrics are left out.
	Cache func() credsource.CacheStats
}

// Registry is a Prometheus registry with the agent's metrics, the Go runtime metrics and
// the process metrics.
type Registry struct {
	reg *prometheus.Registry
}

// New registers the metrics of obs and of src in a new registry.
func New(obs *Observer, src Sources) (*Registry, error) {
	reg := prometheus.NewRegistry()
	cs := append(obs.collectors(),
		&statsCollector{src: src},
		collectors.NewGoCollector(),
		collectors.NewProcessCollector(collectors.ProcessCollectorOpts{}),
	)
	for _, c := range cs {
		if err := reg.Register(c); err != nil {
			return nil, err
		}
	}
	return &Registry{reg: reg}, nil
}

// Handler serves the registry in the Prometheus text or protobuf format, as the scraper
// negotiates.
func (r *Registry) Handler() http.Handler {
	return promhttp.HandlerFor(r.reg, promhttp.HandlerOpts{})
}

// Gatherer returns the underlying registry, for tests and for embedding programs that
// serve it themselves.
func (r *Registry) Gatherer() prometheus.Gatherer { return r.reg }

var (
	sessionsOpenDesc = prometheus.NewDesc("dbproxy_sessions_open",
		"Accepted connections of the route that have not closed yet.", []string{"route", "protocol"}, nil)
	maxConnectionsDesc = prometheus.NewDesc("dbproxy_route_max_connections",
		"The route's max_connections; 0 means no limit.", []string{"route"}, nil)
	bytesDesc = prometheus.NewDesc("dbproxy_bytes_total",
		"Bytes relayed since the route started, sessions still open included, by direction (to_upstream or to_client).",
		[]string{"route", "direction"}, nil)
	credentialsOKDesc = prometheus.NewDesc("dbproxy_route_credentials_ok",
		"1 when the route's last credential fetch succeeded or none happened yet, 0 when it failed.", []string{"route"}, nil)
	cacheHitsDesc = prometheus.NewDesc("dbproxy_credential_cache_hits_total",
		"Credential fetches served from the cache.", nil, nil)
	cacheMissesDesc = prometheus.NewDesc("dbproxy_credential_cache_misses_total",
		"Credential fetches that found no valid cache entry.", nil, nil)
	sourceFetchesDesc = prometheus.NewDesc("dbproxy_credential_source_fetches_total",
		"Calls to the credential source behind the cache.", nil, nil)
	sourceErrorsDesc = prometheus.NewDesc("dbproxy_credential_source_errors_total",
		"Calls to the credential source that returned an error.", nil, nil)
)

// statsCollector reads Sources at scrape time. A route's byte counters restart at zero
// when a reload restarts the route, which Prometheus treats as a counter reset.
type statsCollector struct {
	src Sources
}

func (c *statsCollector) Describe(ch chan<- *prometheus.Desc) {
	for _, d := range []*prometheus.Desc{sessionsOpenDesc, maxConnectionsDesc, bytesDesc,
		credentialsOKDesc, cacheHitsDesc, cacheMissesDesc, sourceFetchesDesc, sourceErrorsDesc} {
		ch <- d
	}
}

func (c *statsCollector) Collect(ch chan<- prometheus.Metric) {
	if c.src.Routes != nil {
		for _, rs := range c.src.Routes() {
			ch <- prometheus.MustNewConstMetric(sessionsOpenDesc, prometheus.GaugeValue, float64(rs.OpenSessions), rs.Name, rs.Protocol)
			ch <- prometheus.MustNewConstMetric(maxConnectionsDesc, prometheus.GaugeValue, float64(rs.MaxConnections), rs.Name)
			ch <- prometheus.MustNewConstMetric(bytesDesc, prometheus.CounterValue, float64(rs.BytesToUpstream), rs.Name, "to_upstream")
			ch <- prometheus.MustNewConstMetric(bytesDesc, prometheus.CounterValue, float64(rs.BytesToClient), rs.Name, "to_client")
			ok := 1.0
			if rs.CredentialsFetched && !rs.CredentialsOK {
				ok = 0
			}
			ch <- prometheus.MustNewConstMetric(credentialsOKDesc, prometheus.GaugeValue, ok, rs.Name)
		}
	}
	if c.src.Cache != nil {
		st := c.src.Cache()
		ch <- prometheus.MustNewConstMetric(cacheHitsDesc, prometheus.CounterValue, float64(st.Hits))
		ch <- prometheus.MustNewConstMetric(cacheMissesDesc, prometheus.CounterValue, float64(st.Misses))
		ch <- prometheus.MustNewConstMetric(sourceFetchesDesc, prometheus.CounterValue, float64(st.Fetches))
		ch <- prometheus.MustNewConstMetric(sourceErrorsDesc, prometheus.CounterValue, float64(st.FetchErrors))
	}
}
