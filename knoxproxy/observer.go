package knoxproxy

import "time"

// Observer receives session events, for metrics. The server calls it from session
// goroutines, so implementations must be safe for concurrent use and return quickly.
type Observer interface {
	// SessionOpened is called when a session passed the peer check and the connection
	// limits.
	SessionOpened(route string)
	// SessionClosed is called once per accepted connection, with the outcome label that the
	// close log line shows and the bytes relayed each way.
	SessionClosed(route, outcome string, duration time.Duration, toUpstream, toClient int64)
	// LoginFinished is called when a login phase ends, with its duration from accept and
	// the session outcome so far ("ok" when the splice starts).
	LoginFinished(route, protocol, outcome string, duration time.Duration)
	// PeerRejected is called for a connection closed by the peer check, by a connection
	// limit or by its first bytes, with the reason label (uid_not_allowed, peer_unknown,
	// too_many_connections, too_many_logins, http_request, tls_client_hello, not_redis).
	PeerRejected(route, reason string)
	// CredentialsFetched is called after each credential fetch; err is nil on success.
	CredentialsFetched(route string, err error)
}

type nopObserver struct{}

func (nopObserver) SessionOpened(string)                                      {}
func (nopObserver) SessionClosed(string, string, time.Duration, int64, int64) {}
func (nopObserver) LoginFinished(string, string, string, time.Duration)       {}
func (nopObserver) PeerRejected(string, string)                               {}
func (nopObserver) CredentialsFetched(string, error)                          {}

// RouteStats are the live figures of one route.
type RouteStats struct {
	Name     string
	Protocol string
	// Listen is the bound TCP address.
	Listen string
	// OpenSessions counts accepted connections not yet closed.
	OpenSessions int64
	// MaxConnections is the route's limit; zero means none.
	MaxConnections int
	// BytesToUpstream and BytesToClient count bytes relayed since the route started,
	// including sessions still open.
	BytesToUpstream, BytesToClient int64
	// CredentialsOK is false when the route's last credential fetch failed, and also
	// before its first fetch.
	CredentialsOK bool
	// CredentialsFetched is false before the route's first credential fetch.
	CredentialsFetched bool
}

// Stats returns the figures of every running route.
func (s *Server) Stats() []RouteStats {
	s.mu.Lock()
	defer s.mu.Unlock()
	out := make([]RouteStats, 0, len(s.routes))
	for _, rs := range s.routes {
		fetch := rs.credentialsFetch.Load()
		out = append(out, RouteStats{
			Name:               rs.route.Name,
			Protocol:           rs.route.Protocol,
			Listen:             rs.tcp.Addr().String(),
			OpenSessions:       rs.active.Load(),
			MaxConnections:     rs.route.MaxConnections,
			BytesToUpstream:    rs.bytesToUpstream.Load(),
			BytesToClient:      rs.bytesToClient.Load(),
			CredentialsOK:      fetch == fetchOK,
			CredentialsFetched: fetch != fetchUnknown,
		})
	}
	return out
}

// Draining reports whether the server has stopped accepting because its context ended.
func (s *Server) Draining() bool {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.draining
}
