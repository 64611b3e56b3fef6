package myauth

import (
	"context"
	"crypto/tls"
	"errors"
	"fmt"
	"net"

	"github.com/go-mysql-org/go-mysql/mysql"

	"github.com/knoxcall/dbproxy/credsource"
	"github.com/knoxcall/dbproxy/internal/handshake"
)

// maxAuthRounds is the maximum number of packets the upstream may send before OK or ERR.
// The longest supported exchange takes three: AuthSwitchRequest to caching_sha2_password,
// AuthMoreData requesting full authentication, then OK.
const maxAuthRounds = 8

// Packet markers of the authentication exchange.
const (
	authMoreData      = 0x01 // Protocol::AuthMoreData
	authSwitchRequest = 0xfe // Protocol::AuthSwitchRequest
)

// ErrUnsupportedPlugin is wrapped when the upstream requests an authentication plugin that
// the agent does not implement.
var ErrUnsupportedPlugin = errors.New("unsupported authentication plugin")

// upstreamCapabilities are the flags sent upstream besides the ones the client negotiated:
// the agent always uses TLS and the 4.1 protocol with plugin authentication.
const upstreamCapabilities = mysql.CLIENT_SSL | mysql.CLIENT_PLUGIN_AUTH |
	mysql.CLIENT_PROTOCOL_41 | mysql.CLIENT_SECURE_CONNECTION

// login is the upstream side of one login attempt.
type login struct {
	conn     *tls.Conn
	ok       []byte       // OK payload on success
	rejected *ServerError // set when the server sent ERR
	errRaw   []byte       // the ERR payload, forwarded to the client as is
}

// loginUpstream sends the SSLRequest, starts TLS and authenticates as creds with the
// capabilities of resp. It returns a login with ok or rejected set, or an error for
// everything else. On error the caller closes conn.
func loginUpstream(ctx context.Context, conn net.Conn, g *greeting, resp *response,
	creds credsource.Credentials, cfg *tls.Config) (*login, error) {
	// SSLRequest (sequence id 1, after the greeting's 0).
	if err := writePacket(conn, 1, resp.marshal("", nil, "", true)); err != nil {
		return nil, fmt.Errorf("upstream ssl request: %w", err)
	}
	tc, err := handshake.StartTLS(ctx, conn, cfg)
	if err != nil {
		return nil, err
	}
	l := &login{conn: tc}

	// HandshakeResponse41 with the auth response for the greeting's plugin.
	plugin := g.authPlugin
	auth, err := authResponse(plugin, g.scramble, creds.Password)
	if err != nil {
		return nil, err
	}
	if err := writePacket(tc, 2, resp.marshal(creds.Username, auth, plugin, false)); err != nil {
		return nil, fmt.Errorf("upstream handshake response: %w", err)
	}

	// The exchange until OK or ERR.
	next := byte(3)
	for range maxAuthRounds {
		seq, p, err := readPacket(tc, maxServerPacketLen)
		if err != nil {
			return nil, fmt.Errorf("upstream auth: %w", upstreamReadError(err))
		}
		if seq != next || len(p) == 0 {
			return nil, fmt.Errorf("upstream auth: %w: sequence id %d, want %d (length %d)",
				handshake.ErrUpstreamProtocol, seq, next, len(p))
		}
		next = seq + 1
		var reply []byte
		switch p[0] {
		case mysql.OK_HEADER:
			l.ok = p
			return l, nil
		case mysql.ERR_HEADER:
			l.rejected, l.errRaw = parseErrPacket(p), p
			return l, nil
		case authSwitchRequest:
			plugin, reply, err = switchPlugin(p, creds.Password)
		case authMoreData:
			reply, err = moreData(plugin, p, creds.Password)
		default:
			err = fmt.Errorf("%w: unexpected packet 0x%02x", handshake.ErrUpstreamProtocol, p[0])
		}
		if err != nil {
			return nil, fmt.Errorf("upstream auth: %w", err)
		}
		if reply == nil {
			continue
		}
		if err := writePacket(tc, next, reply); err != nil {
			return nil, fmt.Errorf("upstream auth: %w", err)
		}
		next++
	}
	return nil, fmt.Errorf("upstream auth: %w: no result after %d packets", handshake.ErrUpstreamProtocol, maxAuthRounds)
}

// switchPlugin returns the reply to an AuthSwitchRequest (0xfe, plugin name, NUL, plugin
// data): the auth response of the new plugin, computed from the request's own scramble.
func switchPlugin(p []byte, password string) (plugin string, reply []byte, err error) {
	r := reader{b: p[1:]}
	if r.empty() {
		// The one-byte form requests mysql_old_password, removed in MySQL 5.7.
		return "", nil, unsupportedPlugin(mysql.AUTH_MYSQL_OLD_PASSWORD)
	}
	plugin = r.nulString()
	if r.err != nil {
		return "", nil, fmt.Errorf("%w: auth switch request: %v", handshake.ErrUpstreamProtocol, r.err)
	}
	// The data is the scramble, followed by a NUL for the 20-byte scrambles only. It is not
	// trimmed here: an ed25519 nonce is 32 random bytes and may end in a zero byte itself.
	// authResponse takes each plugin's own length.
	reply, err = authResponse(plugin, r.rest(), password)
	if reply == nil && err == nil {
		reply = []byte{} // an empty auth response is still sent as a packet
	}
	return plugin, reply, err
}

// moreData returns the reply to AuthMoreData, or nil when none is due. Only
// caching_sha2_password sends it to a TLS client. Status 0x03 means the fast path succeeded
// and OK follows. Status 0x04 requests the password, which is safe to send inside TLS.
func moreData(plugin string, p []byte, password string) ([]byte, error) {
	if plugin != mysql.AUTH_CACHING_SHA2_PASSWORD || len(p) != 2 {
		return nil, fmt.Errorf("%w: unexpected AuthMoreData for %s", handshake.ErrUpstreamProtocol, plugin)
	}
	switch p[1] {
	case mysql.CACHE_SHA2_FAST_AUTH:
		return nil, nil
	case mysql.CACHE_SHA2_FULL_AUTH:
		return append([]byte(password), 0), nil
	}
	return nil, fmt.Errorf("%w: unexpected caching_sha2_password status 0x%02x", handshake.ErrUpstreamProtocol, p[1])
}

// authResponse computes the auth response of plugin for scramble. The cleartext responses of
// sha256_password and mysql_clear_password are sent only inside TLS, which is the only way
// the agent talks to an upstream.
func authResponse(plugin string, scramble []byte, password string) ([]byte, error) {
	switch plugin {
	case mysql.AUTH_NATIVE_PASSWORD:
		return mysql.CalcNativePassword(first(scramble, scrambleLen), []byte(password)), nil
	case mysql.AUTH_CACHING_SHA2_PASSWORD:
		return mysql.CalcCachingSha2Password(first(scramble, scrambleLen), []byte(password)), nil
	case mysql.AUTH_SHA256_PASSWORD, mysql.AUTH_CLEAR_PASSWORD:
		return append([]byte(password), 0), nil
	case mysql.AUTH_MARIADB_ED25519:
		return mysql.CalcEd25519Password(first(scramble, ed25519NonceLen), password)
	}
	return nil, unsupportedPlugin(plugin)
}

func unsupportedPlugin(plugin string) error {
	return fmt.Errorf("%w: %w %q", handshake.ErrUpstreamProtocol, ErrUnsupportedPlugin, plugin)
}

// ed25519NonceLen is the length of the random nonce that MariaDB's ed25519 plugin sends in
// its AuthSwitchRequest and the client signs. Any byte of it may be zero.
const ed25519NonceLen = 32

func first(b []byte, n int) []byte {
	if len(b) > n {
		return b[:n]
	}
	return b
}
