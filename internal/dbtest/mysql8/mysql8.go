// Package mysql8 runs an in-process server that speaks the MySQL 8 login protocol with
// caching_sha2_password as its default plugin, built on go-mysql's server package. Tests use
// it because MySQL 8 is not packaged for Debian and MariaDB has no caching_sha2_password
// server plugin.
//
// It lives in its own package because go-mysql's server package pulls in the TiDB SQL parser,
// which the other real-server launchers do not need.
//
// The server takes its TLS certificate from dbtest.NewCerts (ECDSA P-256). go-mysql needs an
// RSA key only to decrypt passwords sent without TLS. With this certificate a client must
// therefore use TLS for full authentication, which is what the agent does anyway.
package mysql8

import (
	"crypto/tls"
	"errors"
	"net"
	"reflect"
	"strings"
	"sync"
	"sync/atomic"
	"testing"

	"github.com/go-mysql-org/go-mysql/mysql"
	"github.com/go-mysql-org/go-mysql/server"

	"github.com/knoxcall/dbproxy/internal/dbtest"
)

// Version is the server version string sent in the greeting.
const Version = "8.0.36-dbproxy-test"

// erSecureTransportRequired is MySQL 8's ER_SECURE_TRANSPORT_REQUIRED, which go-mysql does
// not define.
const erSecureTransportRequired = 3159

// Server is a running in-process server on 127.0.0.1 that accepts only TLS logins.
type Server struct {
	Addr  string
	Certs *dbtest.Certs

	srv  *server.Server
	auth *authHandler
	ln   net.Listener
	wg   sync.WaitGroup
}

// Login describes the last successful login.
type Login struct {
	User string
	// FullAuth is true when caching_sha2_password had a cache miss and the client sent the
	// password itself, false for the fast path (scramble checked against the cache).
	FullAuth bool
	TLS      bool
	// Capabilities are the flags the client sent in its HandshakeResponse41.
	Capabilities uint32
	Attributes   map[string]string
}

// Start starts the server with TLS from certs and the user app (password "secret") on
// caching_sha2_password. The server stops in t.Cleanup.
func Start(t testing.TB, certs *dbtest.Certs) *Server {
	t.Helper()
	return StartWithDefaultPlugin(t, certs, mysql.AUTH_CACHING_SHA2_PASSWORD)
}

// StartWithDefaultPlugin is Start with plugin (mysql.AUTH_*) named in the greeting, as a
// server with that default_authentication_plugin sends it.
func StartWithDefaultPlugin(t testing.TB, certs *dbtest.Certs, plugin string) *Server {
	t.Helper()
	cert, err := tls.LoadX509KeyPair(certs.ServerCert, certs.ServerKey)
	if err != nil {
		t.Fatal(err)
	}
	tlsConf := &tls.Config{Certificates: []tls.Certificate{cert}}
	s := &Server{
		Certs: certs,
		srv:   server.NewServer(Version, mysql.DEFAULT_COLLATION_ID, plugin, nil, tlsConf),
		auth:  &authHandler{InMemoryAuthenticationHandler: server.NewInMemoryAuthenticationHandler(plugin)},
	}
	s.AddUser(t, "app", "secret", mysql.AUTH_CACHING_SHA2_PASSWORD)
	s.ln, err = net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	s.Addr = s.ln.Addr().String()
	s.wg.Add(1)
	go s.serve()
	t.Cleanup(func() {
		s.ln.Close()
		s.wg.Wait()
	})
	return s
}

// AddUser adds a user with the given authentication plugin (mysql.AUTH_*).
func (s *Server) AddUser(t testing.TB, user, password, plugin string) {
	t.Helper()
	if err := s.auth.AddUser(user, password, plugin); err != nil {
		t.Fatalf("add user %s: %v", user, err)
	}
}

// InvalidateCache empties the caching_sha2_password cache for user, so that the next login
// needs full authentication. go-mysql keys the cache by user and the server's own address.
func (s *Server) InvalidateCache(user string) { s.srv.InvalidateCache(user, s.Addr) }

// LastLogin returns the last successful login, or nil before the first.
func (s *Server) LastLogin() *Login { return s.auth.last.Load() }

// Logins returns how many logins have succeeded.
func (s *Server) Logins() int64 { return s.auth.count.Load() }

func (s *Server) serve() {
	defer s.wg.Done()
	var conns sync.WaitGroup
	defer conns.Wait()
	for {
		c, err := s.ln.Accept()
		if err != nil {
			return
		}
		conns.Add(1)
		go func() {
			defer conns.Done()
			defer c.Close()
			h := &queryHandler{}
			conn, err := s.srv.NewCustomizedConn(c, s.auth, h)
			if err != nil {
				return
			}
			h.user = conn.GetUser()
			for !conn.Closed() {
				if err := conn.HandleCommand(); err != nil {
					return
				}
			}
		}()
	}
}

// authHandler adds a TLS requirement and login records to go-mysql's in-memory users.
type authHandler struct {
	*server.InMemoryAuthenticationHandler
	last  atomic.Pointer[Login]
	count atomic.Int64
}

func (a *authHandler) OnAuthSuccess(c *server.Conn) error {
	_, isTLS := c.Conn.Conn.(*tls.Conn)
	if !isTLS {
		return mysql.NewError(erSecureTransportRequired, "Connections using insecure transport are prohibited")
	}
	// go-mysql does not export whether caching_sha2_password took the full path, so read its
	// unexported flag (read-only) through reflection.
	full := reflect.ValueOf(c).Elem().FieldByName("cachingSha2FullAuth").Bool()
	a.last.Store(&Login{User: c.GetUser(), FullAuth: full, TLS: isTLS,
		Capabilities: c.Capability(), Attributes: c.Attributes()})
	a.count.Add(1)
	return nil
}

// queryHandler returns for every query with one row: the user name for queries that mention
// current_user, and 1 otherwise.
type queryHandler struct {
	server.EmptyHandler
	user string
}

func (h *queryHandler) UseDB(string) error { return nil }

func (h *queryHandler) HandleQuery(query string) (*mysql.Result, error) {
	var value any = int64(1)
	if strings.Contains(strings.ToLower(query), "current_user") {
		value = h.user
	}
	rs, err := mysql.BuildSimpleResultset([]string{"v"}, [][]any{{value}}, false)
	if err != nil {
		return nil, err
	}
	return mysql.NewResult(rs), nil
}

func (h *queryHandler) HandleOtherCommand(cmd byte, data []byte) error {
	if cmd == mysql.COM_RESET_CONNECTION {
		return nil
	}
	return errors.New("command not supported by the test server")
}
