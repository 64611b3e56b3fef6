package knoxproxy

import (
	"cmp"
	"context"
	"crypto/rand"
	"crypto/tls"
	"crypto/x509"
	"encoding/hex"
	"errors"
	"fmt"
	"log/slog"
	"net"
	"sync"
	"time"

	"github.com/knoxcall/dbproxy/credsource"
	"github.com/knoxcall/dbproxy/internal/handshake"
	"github.com/knoxcall/dbproxy/internal/splice"
	"github.com/knoxcall/dbproxy/peercred"
)

// Session outcomes, logged on the close line and used as metric labels.
const (
	outcomeOK               = "ok"
	outcomePeerRejected     = "peer_rejected"
	outcomeBadFirstBytes    = "first_bytes_rejected"
	outcomeClientGone       = "client_closed"
	outcomeTLSDeclined      = "client_tls_declined"
	outcomeClientReset      = "client_reset"
	outcomeCredentials      = "credentials_error"
	outcomeUnreachable      = "upstream_unreachable"
	outcomeUpstreamTLS      = "upstream_tls_error"
	outcomeAuthFailed       = "upstream_auth_failed"
	outcomeUpstreamRejected = "upstream_rejected"
	outcomeClientProtocol   = "client_protocol_error"
	outcomeUpstreamProtocol = "upstream_protocol_error"
	outcomeLoginTimeout     = "login_timeout"
	outcomeCancelRequest    = "cancel_forwarded"
	outcomeShutdown         = "closed_at_shutdown"
	outcomeReload           = "closed_at_reload"
	outcomeSpliceError      = "io_error"
	outcomeHandshakeFailed  = "handshake_error"
	outcomeTooMany          = "too_many_connections"
)

const (
	// sniffBufferSize is enough for the longest HTTP method checked, plus one byte.
	sniffBufferSize = 16
	// unknownUID is what the session logs (as -1) when the peer could not be identified.
	unknownUID         = ^uint32(0)
	refusalLogInterval = time.Second
	// overLimitTimeout bounds how long a connection over a limit may take to send
	// the opening message that its protocol's error reply must follow. A client on
	// loopback sends it at once.
	overLimitTimeout = 2 * time.Second
	// reasonTooManyLogins is the refusal reason when Config.MaxLogins is reached.
	reasonTooManyLogins = "too_many_logins"
)

// session is one accepted client connection.
type session struct {
	srv   *Server
	rs    *routeServer
	conn  net.Conn
	id    string
	start time.Time
	log   *slog.Logger

	// tlsAttrs describe the upstream TLS connection for the close line.
	tlsAttrs []any

	mu           sync.Mutex
	upstream     net.Conn
	aborted      bool
	abortOutcome string
}

func (s *Server) newSession(rs *routeServer, conn net.Conn) *session {
	sess := &session{srv: s, rs: rs, conn: conn, id: newSessionID(), start: time.Now()}
	sess.log = s.log.With("route", rs.route.Name, "session", sess.id)
	rs.active.Add(1)
	s.mu.Lock()
	s.sessions[sess] = struct{}{}
	s.wg.Add(1)
	s.mu.Unlock()
	return sess
}

func (sess *session) done() {
	sess.rs.active.Add(-1)
	sess.srv.mu.Lock()
	delete(sess.srv.sessions, sess)
	sess.srv.mu.Unlock()
	sess.srv.wg.Done()
}

// abort closes both connections; run then ends with outcome, closed_at_shutdown or
// closed_at_reload.
func (sess *session) abort(outcome string) {
	sess.mu.Lock()
	defer sess.mu.Unlock()
	sess.aborted = true
	sess.abortOutcome = outcome
	sess.conn.Close()
	if sess.upstream != nil {
		rawConn(sess.upstream).Close()
	}
}

// errCertFetch marks a failed fetch of the client certificate's secret, whose message the
// client must not see.
var errCertFetch = errors.New("fetch client certificate")

// clientFetchError returns the error sent to the client when the credential fetch failed.
// The source's own message stays in the agent's log, because an exec helper's stderr or an
// HTTP error body can contain anything, a token included.
func clientFetchError(secretID string, err error) error {
	var reason error
	switch {
	case errors.Is(err, credsource.ErrNotFound):
		reason = fmt.Errorf("%w (add the secret to the credential source, or fix the route's secret id)", credsource.ErrNotFound)
	case errors.Is(err, context.DeadlineExceeded):
		reason = fmt.Errorf("the credential source timed out: %w", context.DeadlineExceeded)
	default:
		reason = errors.New("the credential source failed; the agent's log has the cause")
	}
	return fmt.Errorf("fetch credentials %q: %w", secretID, reason)
}

// rawConn returns the connection under c's read buffer and TLS layer. abort closes that one
// because it runs with the server's lock held. tls.Conn.Close would first write a
// close_notify alert, which can block for up to 5 s on a peer that stopped reading.
func rawConn(c net.Conn) net.Conn {
	for {
		switch v := c.(type) {
		case *handshake.BufferedConn:
			c = v.Conn
		case interface{ NetConn() net.Conn }:
			c = v.NetConn()
		default:
			return c
		}
	}
}

func (sess *session) setUpstream(c net.Conn) bool {
	sess.mu.Lock()
	defer sess.mu.Unlock()
	if sess.aborted {
		return false
	}
	sess.upstream = c
	return true
}

func (sess *session) run(ctx context.Context) {
	defer sess.done()
	defer sess.conn.Close()
	r := sess.rs.route

	// Identify the peer before reading a byte, and drop it if the route does not allow it.
	peer, peerErr := sess.srv.cfg.PeerChecker.PeerCred(sess.conn)
	if peerErr != nil {
		peer = peercred.Cred{UID: unknownUID}
	}
	if len(r.AllowedUIDs) > 0 && (peerErr != nil || !r.allows(peer.UID)) {
		reason := "uid_not_allowed"
		if peerErr != nil {
			reason = "peer_unknown"
		}
		if logIt, suppressed := sess.rs.refusals.allow(reason); logIt {
			if peerErr == nil {
				peer.PID = rejectedPeerPID(sess.srv.cfg.PeerChecker, sess.conn, peer)
			}
			attrs := append([]any{"reason", reason}, peerAttrs(peer)...)
			attrs = append(attrs, "remote", sess.conn.RemoteAddr().String())
			if peerErr != nil {
				attrs = append(attrs, "err", peerErr)
			}
			if suppressed > 0 {
				attrs = append(attrs, "suppressed_since_last", suppressed)
			}
			sess.log.Warn("peer rejected before reading", attrs...)
		}
		sess.srv.cfg.Observer.PeerRejected(r.Name, reason)
		sess.log = sess.log.With(peerAttrs(peer)...)
		sess.closeLine(outcomePeerRejected, 0, 0, nil)
		return
	}
	sess.log = sess.log.With(peerAttrs(peer)...)

	// Beyond the route's limit, or the agent's limit on logins in progress, tell the client
	// in its protocol and close. The client gets a short time to send its opening message,
	// so that connections that send nothing cannot hold descriptors over the limit for the
	// whole login timeout.
	logins := sess.srv.logins.Add(1)
	loginDone := sync.OnceFunc(func() { sess.srv.logins.Add(-1) })
	defer loginDone()
	overRoute := r.MaxConnections > 0 && sess.rs.active.Load() > int64(r.MaxConnections)
	if overRoute || logins > int64(sess.srv.cfg.MaxLogins) {
		reason, limit := outcomeTooMany, []any{"max_connections", r.MaxConnections}
		if !overRoute {
			reason, limit = reasonTooManyLogins, []any{"max_logins", sess.srv.cfg.MaxLogins}
		}
		sess.rs.refusals.log(sess.log, reason, "connection limit reached", append([]any{"reason", reason}, limit...)...)
		sess.srv.cfg.Observer.PeerRejected(r.Name, reason)
		rejectCtx, cancel := context.WithTimeout(ctx, min(r.loginTimeout(), overLimitTimeout))
		defer cancel()
		client := handshake.NewBufferedConn(sess.conn, sniffBufferSize)
		stop := handshake.WatchContext(rejectCtx, sess.conn)
		sess.reject(rejectCtx, client, handshake.ErrTooManyConnections)
		stop()
		sess.closeLine(outcomeTooMany, 0, 0, nil)
		return
	}

	sess.log.Info("session open", "remote", sess.conn.RemoteAddr().String(), "upstream", r.upstreamAddr())
	sess.srv.cfg.Observer.SessionOpened(r.Name)

	loginCtx, cancel := context.WithTimeout(ctx, r.loginTimeout())
	defer cancel()

	conns, outcome, err := sess.login(loginCtx)
	loginDone()
	// A login cut short by a shutdown or reload is not a timeout or a client fault. Only an
	// error caused by the cancellation or by abort's close counts: a login that failed on
	// its own just before the shutdown keeps its outcome.
	if err != nil && (errors.Is(err, context.Canceled) || errors.Is(err, net.ErrClosed)) {
		if o, ok := sess.abortedOutcome(); ok {
			outcome = o
		} else if ctx.Err() != nil {
			outcome = outcomeShutdown
		}
	}
	sess.srv.cfg.Observer.LoginFinished(r.Name, r.Protocol, outcome, time.Since(sess.start))
	if err != nil {
		sess.closeLine(outcome, 0, 0, err)
		if conns.Upstream != nil {
			conns.Upstream.Close()
		}
		return
	}
	defer conns.Upstream.Close()
	defer conns.Client.Close()

	// The login phase is over: pump bytes until either side is done.
	toUpstream, toClient, err := splice.RunCounted(conns.Client, conns.Upstream,
		&sess.rs.bytesToUpstream, &sess.rs.bytesToClient)
	switch {
	case err == nil:
		outcome = outcomeOK
	case splice.PeerGone(err, conns.Client):
		// The client ended the session abruptly. That is the client's choice, not a
		// failure of the agent or the database.
		outcome = outcomeClientReset
	default:
		outcome = outcomeSpliceError
	}
	if o, ok := sess.abortedOutcome(); ok {
		outcome, err = o, nil
	}
	sess.closeLine(outcome, toUpstream, toClient, err)
}

// abortedOutcome returns the outcome that abort set, if abort was called.
func (sess *session) abortedOutcome() (string, bool) {
	sess.mu.Lock()
	defer sess.mu.Unlock()
	return sess.abortOutcome, sess.aborted
}

// login runs everything between accept and the splice: the first-bytes check, the
// credential fetch, the upstream dial and the protocol handshake. On failure it has sent the
// client the reason, where the protocol allows it.
func (sess *session) login(ctx context.Context) (handshake.Conns, string, error) {
	r, proto := sess.rs.route, sess.rs.proto
	client := handshake.NewBufferedConn(sess.conn, sniffBufferSize)
	stop := handshake.WatchContext(ctx, sess.conn)

	// Reject browsers and direct-TLS clients by their first bytes, before any credential
	// is fetched, so that a web page cannot reach the database through the agent.
	if proto.clientSpeaksFirst {
		reason, err := sniff(client.R, proto.redisInline)
		if err != nil {
			stop()
			return handshake.Conns{}, sess.readOutcome(ctx), fmt.Errorf("read first bytes: %w", handshake.ContextError(ctx, err))
		}
		if reason != "" {
			stop()
			sess.rs.refusals.log(sess.log, reason, "client rejected by its first bytes", "reason", reason)
			sess.srv.cfg.Observer.PeerRejected(r.Name, reason)
			return handshake.Conns{}, outcomeBadFirstBytes, fmt.Errorf("client sent %s", reason)
		}
	}
	if !stop() {
		return handshake.Conns{}, outcomeLoginTimeout, ctx.Err()
	}
	handshake.ClearDeadlines(sess.conn)

	// Fetch the route's credentials.
	creds, err := sess.srv.cfg.Credentials.Fetch(ctx, r.SecretID)
	sess.recordFetch(err)
	if err != nil {
		err = fmt.Errorf("fetch credentials %q: %w", r.SecretID, err)
		sess.log.Error("credential fetch failed", "secret_id", r.SecretID, "err", err)
		sess.reject(ctx, client, clientFetchError(r.SecretID, err))
		return handshake.Conns{}, outcomeCredentials, err
	}

	// Fetch the client certificate for mutual TLS, if the route names one.
	tlsConfig, err := sess.tlsConfig(ctx, creds)
	if err != nil {
		id := cmp.Or(r.TLS.ClientCertSecretID, r.SecretID)
		sess.log.Error("client certificate unavailable", "secret_id", id, "err", err)
		clientErr := err
		if errors.Is(err, errCertFetch) {
			clientErr = clientFetchError(id, err)
		}
		sess.reject(ctx, client, clientErr)
		return handshake.Conns{}, outcomeCredentials, err
	}

	// Dial the upstream.
	upstream, err := sess.dial(ctx)
	if err != nil {
		return handshake.Conns{}, outcomeUnreachable, sess.reject(ctx, client, err)
	}

	// Run the protocol's handshake; it opens TLS and authenticates.
	opts := handshake.Options{
		Route:     r.Name,
		TLSConfig: tlsConfig,
		// The protocol packages add the route to their lines themselves.
		Logger: sess.srv.log.With("session", sess.id),
		Redial: sess.redialer(creds),
	}
	conns, err := proto.handshake(ctx, client, upstream, creds, opts)
	if err != nil {
		// Only the TLS handshake depends on the groups offered. A client that left early or a
		// server error after TLS does not depend on them.
		if errors.Is(err, handshake.ErrUpstreamTLSHandshake) && sess.rs.keyShares.failed(tlsConfig) {
			sess.log.Info("login failed with the pinned TLS key exchange groups; the next login offers every group",
				"groups", fmt.Sprint(tlsConfig.CurvePreferences))
		}
		if conns.Upstream == nil {
			conns.Upstream = upstream
		}
		return conns, handshakeOutcome(ctx, err), fmt.Errorf("handshake: %w", err)
	}
	sess.setUpstream(conns.Upstream)
	if state, ok := upstreamTLS(conns.Upstream); ok {
		sess.rs.keyShares.observe(tlsConfig, state)
		sess.tlsAttrs = []any{"tls_group", state.CurveID.String(), "tls_hello_retry", state.HelloRetryRequest}
	}
	return conns, outcomeOK, nil
}

// reject sends the client the protocol's error for a failure before the handshake and
// returns cause.
func (sess *session) reject(ctx context.Context, client net.Conn, cause error) error {
	if err := sess.rs.proto.reject(ctx, client, sess.rs.route.Name, cause); err != nil {
		sess.log.Debug("could not send the error to the client", "err", err)
	}
	return cause
}

func (sess *session) dial(ctx context.Context) (net.Conn, error) {
	r := sess.rs.route
	dialCtx, cancel := context.WithTimeout(ctx, r.dialTimeout())
	defer cancel()
	c, err := sess.srv.cfg.Dial(dialCtx, "tcp", r.upstreamAddr())
	if err != nil {
		err = fmt.Errorf("dial upstream %s: %w", r.upstreamAddr(), handshake.ContextError(dialCtx, err))
		sess.log.Error("upstream unreachable", "upstream", r.upstreamAddr(), "err", err)
		return nil, err
	}
	if !sess.setUpstream(c) {
		// abort ran during the dial. Wrapping net.ErrClosed lets run log abort's outcome.
		c.Close()
		return nil, fmt.Errorf("dial upstream: session aborted: %w", net.ErrClosed)
	}
	return c, nil
}

// redialer returns the Options.Redial of a session: after the upstream rejected creds, it
// drops them from the cache, fetches again, and dials a new upstream connection only if the
// credentials changed.
func (sess *session) redialer(creds credsource.Credentials) func(context.Context) (net.Conn, credsource.Credentials, error) {
	return func(ctx context.Context) (net.Conn, credsource.Credentials, error) {
		fresh, err := refetch(ctx, sess.srv.cfg.Credentials, sess.rs.route.SecretID, creds)
		sess.recordFetch(err)
		if err != nil {
			return nil, credsource.Credentials{}, err
		}
		if fresh.Equal(creds) {
			return nil, fresh, handshake.ErrCredentialsUnchanged
		}
		sess.log.Info("upstream rejected the credentials; retrying with re-fetched ones",
			"secret_id", sess.rs.route.SecretID)
		c, err := sess.dial(ctx)
		if err != nil {
			return nil, fresh, err
		}
		return c, fresh, nil
	}
}

func (sess *session) recordFetch(err error) {
	state := fetchOK
	if err != nil {
		state = fetchFailed
	}
	sess.rs.credentialsFetch.Store(state)
	sess.srv.cfg.Observer.CredentialsFetched(sess.rs.route.Name, err)
}

// refresher is a source that fetches again past its cache, such as credsource.Cache.
type refresher interface {
	Refresh(ctx context.Context, id string, rejected credsource.Credentials) (credsource.Credentials, error)
}

// invalidator is a source that can drop a cached entry, such as credsource.File.
type invalidator interface {
	Invalidate(id string)
}

// refetch type-switches on these sources, so a changed method signature would silently
// turn off the refresh without these assertions.
var (
	_ refresher   = (*credsource.Cache)(nil)
	_ invalidator = (*credsource.Cache)(nil)
	_ invalidator = (*credsource.File)(nil)
)

// refetch fetches id again after the upstream rejected the credentials in rejected, past
// any cache in src: a credsource.Cache refreshes the entry (sharing one fetch among sessions
// that saw the same rejection), another source with Invalidate drops its entry first.
func refetch(ctx context.Context, src credsource.Source, id string, rejected credsource.Credentials) (credsource.Credentials, error) {
	var (
		fresh credsource.Credentials
		err   error
	)
	switch s := src.(type) {
	case refresher:
		fresh, err = s.Refresh(ctx, id, rejected)
	case invalidator:
		s.Invalidate(id)
		fresh, err = src.Fetch(ctx, id)
	default:
		fresh, err = src.Fetch(ctx, id)
	}
	if err != nil {
		return credsource.Credentials{}, fmt.Errorf("re-fetch credentials %q: %w", id, err)
	}
	return fresh, nil
}

// tlsConfig returns the route's upstream TLS configuration, with the key exchange group the
// route has pinned, if any, and the client certificate of the route's ClientCertSecretID,
// or else of creds when that secret has one.
func (sess *session) tlsConfig(ctx context.Context, creds credsource.Credentials) (*tls.Config, error) {
	r := sess.rs.route
	certCreds := creds
	if id := r.TLS.ClientCertSecretID; id != "" {
		var err error
		certCreds, err = sess.srv.cfg.Credentials.Fetch(ctx, id)
		sess.recordFetch(err)
		if err != nil {
			return nil, fmt.Errorf("%w %q: %w", errCertFetch, id, err)
		}
		if len(certCreds.Certificate) == 0 || len(certCreds.PrivateKey) == 0 {
			return nil, fmt.Errorf("client certificate %q: the secret has no certificate and private_key", id)
		}
	}
	base := sess.rs.keyShares.config()
	if len(certCreds.Certificate) == 0 || len(certCreds.PrivateKey) == 0 {
		return base, nil
	}
	cert, err := tls.X509KeyPair(certCreds.Certificate, certCreds.PrivateKey)
	if err != nil {
		// The error text of X509KeyPair does not include key material.
		return nil, fmt.Errorf("client certificate of secret %q: %w", cmp.Or(r.TLS.ClientCertSecretID, r.SecretID), err)
	}
	cfg := base.Clone()
	cfg.Certificates = []tls.Certificate{cert}
	return cfg, nil
}

func (sess *session) readOutcome(ctx context.Context) string {
	if ctx.Err() != nil {
		return outcomeLoginTimeout
	}
	return outcomeClientGone
}

// handshakeOutcome labels a handshake failure.
func handshakeOutcome(ctx context.Context, err error) string {
	var certErr *tls.CertificateVerificationError
	var unknownAuthority x509.UnknownAuthorityError
	var hostErr x509.HostnameError
	switch {
	case errors.Is(err, handshake.ErrCancelRequest):
		return outcomeCancelRequest
	case errors.Is(err, handshake.ErrAuthFailed):
		return outcomeAuthFailed
	case errors.Is(err, handshake.ErrUpstreamRejected):
		return outcomeUpstreamRejected
	case errors.As(err, &certErr), errors.As(err, &unknownAuthority), errors.As(err, &hostErr):
		return outcomeUpstreamTLS
	case errors.Is(err, context.DeadlineExceeded) || ctx.Err() != nil:
		return outcomeLoginTimeout
	case errors.Is(err, handshake.ErrEncryptionDeclined):
		return outcomeTLSDeclined
	case errors.Is(err, handshake.ErrClientClosed):
		return outcomeClientGone
	case errors.Is(err, handshake.ErrClientProtocol):
		return outcomeClientProtocol
	case errors.Is(err, handshake.ErrUpstreamProtocol):
		return outcomeUpstreamProtocol
	}
	return outcomeHandshakeFailed
}

func (sess *session) closeLine(outcome string, toUpstream, toClient int64, err error) {
	duration := time.Since(sess.start)
	sess.srv.cfg.Observer.SessionClosed(sess.rs.route.Name, outcome, duration, toUpstream, toClient)
	attrs := []any{
		"outcome", outcome,
		"duration", duration.Round(time.Microsecond),
		"bytes_to_upstream", toUpstream,
		"bytes_to_client", toClient,
	}
	attrs = append(attrs, sess.tlsAttrs...)
	if err != nil {
		attrs = append(attrs, "err", err)
	}
	switch outcome {
	case outcomePeerRejected, outcomeBadFirstBytes, outcomeTooMany:
		// A rate-limited warning has already reported the refusal. A line per connection
		// would let a client flood the log.
		sess.log.Debug("session closed", attrs...)
	case outcomeOK, outcomeClientReset, outcomeTLSDeclined, outcomeCancelRequest, outcomeShutdown, outcomeReload:
		sess.log.Info("session closed", attrs...)
	case outcomeClientGone, outcomeClientProtocol, outcomeLoginTimeout, outcomeUpstreamRejected:
		sess.log.Warn("session closed", attrs...)
	default:
		sess.log.Error("session closed", attrs...)
	}
}

// peerAttrs are the log attributes of a peer. An unknown PID (zero) is left out rather
// than shown as a PID.
func peerAttrs(peer peercred.Cred) []any {
	if peer.PID == 0 {
		return []any{"peer_uid", uidAttr(peer.UID)}
	}
	return []any{"peer_uid", uidAttr(peer.UID), "peer_pid", peer.PID}
}

// uidAttr shows an unknown UID as -1 rather than 4294967295.
func uidAttr(uid uint32) int64 {
	if uid == unknownUID {
		return -1
	}
	return int64(uid)
}

func newSessionID() string {
	var b [6]byte
	rand.Read(b[:])
	return hex.EncodeToString(b[:])
}

// refusalLimiter keeps a client that reconnects in a loop from flooding the log: it writes
// at most one refusal line per reason per second and counts the lines it suppressed.
type refusalLimiter struct {
	mu         sync.Mutex
	last       map[string]time.Time
	suppressed map[string]int
}

func (l *refusalLimiter) log(log *slog.Logger, reason, msg string, attrs ...any) {
	ok, suppressed := l.allow(reason)
	if !ok {
		return
	}
	if suppressed > 0 {
		attrs = append(attrs, "suppressed_since_last", suppressed)
	}
	log.Warn(msg, attrs...)
}

// allow reports whether a refusal line for reason may be written now, and how many were
// suppressed since the last one.
func (l *refusalLimiter) allow(reason string) (bool, int) {
	l.mu.Lock()
	defer l.mu.Unlock()
	if l.last == nil {
		l.last = make(map[string]time.Time)
		l.suppressed = make(map[string]int)
	}
	now := time.Now()
	if now.Sub(l.last[reason]) < refusalLogInterval {
		l.suppressed[reason]++
		return false, 0
	}
	l.last[reason] = now
	n := l.suppressed[reason]
	l.suppressed[reason] = 0
	return true, n
}
