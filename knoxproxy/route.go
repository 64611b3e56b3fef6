package knoxproxy

import (
	"context"
	"crypto/tls"
	"crypto/x509"
	"errors"
	"fmt"
	"net"
	"net/netip"
	"os"
	"path/filepath"
	"slices"
	"strconv"
	"strings"
	"time"
)

// Default timeouts, used when a Route or Config leaves the field zero.
const (
	// DefaultDialTimeout bounds the TCP connect to the upstream.
	DefaultDialTimeout = 10 * time.Second
	// DefaultLoginTimeout bounds everything from accept to the start of the splice: the
	// client's opening messages, the credential fetch, the dial, TLS and authentication.
	DefaultLoginTimeout = 30 * time.Second
	// DefaultShutdownTimeout is how long Serve lets live sessions finish after its context
	// ends before it closes them.
	DefaultShutdownTimeout = 30 * time.Second
)

// DefaultMaxLogins is Config.MaxLogins when it is zero. It lets a connection pool open a
// thousand connections at once, while connections that never finish their login hold at
// most about 4,096 descriptors (the client's and, once dialed, the upstream's).
const DefaultMaxLogins = 2048

// Route is one local listener and the upstream database it leads to.
type Route struct {
	// Name identifies the route in logs, errors and metrics. Required and unique.
	Name string
	// Protocol is "postgres", "mysql", "mongodb" or "redis".
	Protocol string
	// ListenAddress is the loopback address to bind: an IP in 127.0.0.0/8, ::1, or a host
	// name that resolves only to loopback addresses. Empty means 127.0.0.1. Any other
	// address is an error: the agent never listens beyond the machine.
	ListenAddress string
	// LocalPort is the TCP port to bind. Zero picks the first free port of the protocol's
	// default range (postgres 5432-5440, mysql 3306-3316, mongodb 27017-27027, redis
	// 6379-6389).
	LocalPort int
	// UnixSocket, if not empty, is the path of a Unix socket to listen on as well.
	UnixSocket string
	// UnixSocketMode is the permission of the Unix socket. Zero means 0600.
	UnixSocketMode os.FileMode
	// UpstreamHost and UpstreamPort locate the real database. Both required.
	UpstreamHost string
	UpstreamPort int
	// SecretID names the credentials in the credential source. Required.
	SecretID string
	// AllowedUIDs, if not empty, is the list of Linux user ids that may connect. A peer
	// whose UID is not in it, or cannot be determined, is disconnected before any byte is
	// read. Empty means any local user may connect.
	AllowedUIDs []uint32
	// TLS configures the connection to the upstream. TLS is always used.
	TLS TLS
	// DialTimeout bounds the upstream TCP connect. Zero means DefaultDialTimeout.
	DialTimeout time.Duration
	// LoginTimeout bounds the login phase of a session. Zero means DefaultLoginTimeout.
	LoginTimeout time.Duration
	// MaxConnections caps the route's open sessions. A connection beyond it gets the
	// protocol's "too many connections" error and is closed. Zero means no limit.
	MaxConnections int
}

// TLS configures the upstream TLS connection of a route.
type TLS struct {
	// CAFile is a PEM file of the CA certificates that may sign the upstream's certificate.
	// Empty means the system roots.
	CAFile string
	// ServerName is the name verified against the upstream's certificate. Empty means
	// UpstreamHost (an IP address there is checked against the certificate's IP SANs).
	ServerName string
	// ClientCertSecretID, if not empty, names a secret whose Certificate and PrivateKey the
	// agent presents to the upstream (mutual TLS). It is fetched from the same source as
	// the route's credentials. Empty means the route's own secret supplies the client
	// certificate when it has one, and no certificate is presented otherwise.
	ClientCertSecretID string
	// InsecureSkipVerify turns off certificate and host name verification. For development
	// only: anyone on the path to the database can then read the credentials. Serve logs a
	// warning for each route that sets it.
	InsecureSkipVerify bool
}

// ErrNotLoopback is returned (wrapped) for a route whose listen address is not loopback.
var ErrNotLoopback = errors.New("listen address is not loopback (use 127.0.0.1 or ::1)")

// portRanges are the ports tried, in order, when a route has no LocalPort.
var portRanges = map[string][2]int{
	"postgres": {5432, 5440},
	"mysql":    {3306, 3316},
	"mongodb":  {27017, 27027},
	"redis":    {6379, 6389},
}

func (r *Route) dialTimeout() time.Duration {
	if r.DialTimeout > 0 {
		return r.DialTimeout
	}
	return DefaultDialTimeout
}

func (r *Route) loginTimeout() time.Duration {
	if r.LoginTimeout > 0 {
		return r.LoginTimeout
	}
	return DefaultLoginTimeout
}

func (r *Route) upstreamAddr() string {
	return net.JoinHostPort(r.UpstreamHost, strconv.Itoa(r.UpstreamPort))
}

// Validate checks the route's fields, without touching the network or the file system, and
// names the route and the field in its error.
func (r *Route) Validate() error {
	fail := func(field, format string, args ...any) error {
		return fmt.Errorf("route %q: %s: %s", r.Name, field, fmt.Sprintf(format, args...))
	}
	if r.Name == "" {
		return errors.New("route without a name: name is required")
	}
	if _, ok := protocols[r.Protocol]; !ok {
		return fail("protocol", "unknown protocol %q (want postgres, mysql, mongodb or redis)", r.Protocol)
	}
	if r.LocalPort < 0 || r.LocalPort > 65535 {
		return fail("local_port", "%d is not a TCP port", r.LocalPort)
	}
	if r.UpstreamHost == "" {
		return fail("upstream_host", "missing")
	}
	if strings.Contains(r.UpstreamHost, ":") && net.ParseIP(r.UpstreamHost) == nil {
		return fail("upstream_host", "%q is not a host name or IP address; give the port in upstream_port", r.UpstreamHost)
	}
	if r.UpstreamPort <= 0 || r.UpstreamPort > 65535 {
		return fail("upstream_port", "%d is not a TCP port", r.UpstreamPort)
	}
	if r.SecretID == "" {
		return fail("committed_secret_id", "missing")
	}
	if r.MaxConnections < 0 {
		return fail("max_connections", "%d is negative", r.MaxConnections)
	}
	if r.DialTimeout < 0 || r.LoginTimeout < 0 {
		return fail("timeouts", "must not be negative")
	}
	if r.UnixSocketMode&^0o777 != 0 {
		return fail("unix_socket_mode", "%#o has bits beyond permissions", r.UnixSocketMode)
	}
	if addr, err := netip.ParseAddr(r.ListenAddress); err == nil && !addr.Unmap().IsLoopback() {
		return fmt.Errorf("route %q: listen_address: %s: %w", r.Name, r.ListenAddress, ErrNotLoopback)
	}
	return nil
}

// CheckFiles checks what the route reads from the file system when it starts: the CA file
// must hold PEM certificates and the Unix socket's directory must exist. Serve makes the
// same checks; CheckFiles lets a caller report them before anything is bound.
func (r *Route) CheckFiles() error {
	if _, err := r.upstreamTLSConfig(); err != nil {
		return err
	}
	if r.UnixSocket != "" {
		dir := filepath.Dir(r.UnixSocket)
		if st, err := os.Stat(dir); err != nil || !st.IsDir() {
			return fmt.Errorf("route %q: unix_socket: directory %s does not exist; create it first", r.Name, dir)
		}
	}
	return nil
}

// resolveListenIP returns the loopback IP to bind for the route. A host name must resolve
// to loopback addresses only.
func (r *Route) resolveListenIP(ctx context.Context) (netip.Addr, error) {
	host := r.ListenAddress
	if host == "" {
		host = "127.0.0.1"
	}
	if addr, err := netip.ParseAddr(host); err == nil {
		if !addr.Unmap().IsLoopback() {
			return netip.Addr{}, fmt.Errorf("route %q: listen_address %s: %w", r.Name, host, ErrNotLoopback)
		}
		return addr, nil
	}
	addrs, err := net.DefaultResolver.LookupNetIP(ctx, "ip", host)
	if err != nil {
		return netip.Addr{}, fmt.Errorf("route %q: listen_address %s: %w", r.Name, host, err)
	}
	if len(addrs) == 0 {
		return netip.Addr{}, fmt.Errorf("route %q: listen_address %s: no addresses", r.Name, host)
	}
	for _, a := range addrs {
		if !a.Unmap().IsLoopback() {
			return netip.Addr{}, fmt.Errorf("route %q: listen_address %s resolves to %s: %w", r.Name, host, a, ErrNotLoopback)
		}
	}
	return addrs[0], nil
}

// upstreamTLSConfig builds the route's TLS configuration for the upstream leg.
func (r *Route) upstreamTLSConfig() (*tls.Config, error) {
	cfg := &tls.Config{
		ServerName:         r.TLS.ServerName,
		InsecureSkipVerify: r.TLS.InsecureSkipVerify,
		MinVersion:         tls.VersionTLS12,
		// Resumed sessions skip the certificate exchange where the server allows it.
		ClientSessionCache: tls.NewLRUClientSessionCache(64),
	}
	if cfg.ServerName == "" {
		cfg.ServerName = r.UpstreamHost
	}
	if r.TLS.CAFile != "" {
		pem, err := os.ReadFile(r.TLS.CAFile)
		if err != nil {
			return nil, fmt.Errorf("route %q: tls.ca_file: %w", r.Name, err)
		}
		pool := x509.NewCertPool()
		if !pool.AppendCertsFromPEM(pem) {
			return nil, fmt.Errorf("route %q: tls.ca_file %s: no PEM certificates found", r.Name, r.TLS.CAFile)
		}
		cfg.RootCAs = pool
	}
	return cfg, nil
}

func (r *Route) allows(uid uint32) bool {
	return slices.Contains(r.AllowedUIDs, uid)
}
