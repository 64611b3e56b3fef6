package knoxproxy

import (
	"context"
	"net"

	"github.com/knoxcall/dbproxy/credsource"
	"github.com/knoxcall/dbproxy/internal/handshake"
	"github.com/knoxcall/dbproxy/mongoauth"
	"github.com/knoxcall/dbproxy/myauth"
	"github.com/knoxcall/dbproxy/pgauth"
	"github.com/knoxcall/dbproxy/redisauth"
)

// protocol is the part of a protocol package that the core calls.
type protocol struct {
	// handshake runs the login phase (pgauth.Handshake and its siblings).
	handshake func(ctx context.Context, client, upstream net.Conn, creds credsource.Credentials, opts handshake.Options) (handshake.Conns, error)
	// reject sends the client, in the protocol's error format, the reason that the session
	// could not be set up.
	reject func(ctx context.Context, client net.Conn, route string, cause error) error
	// clientSpeaksFirst is true when the client sends the first bytes, so the core can
	// inspect them before fetching credentials. MySQL's server speaks first.
	clientSpeaksFirst bool
	// redisInline is true when inline commands are valid first bytes (Redis), so an HTTP
	// request line is distinguished from an inline command by its shape.
	redisInline bool
}

// protocols maps Route.Protocol to its implementation.
var protocols = map[string]protocol{
	"postgres": {handshake: pgauth.Handshake, reject: pgauth.Reject, clientSpeaksFirst: true},
	"mysql":    {handshake: myauth.Handshake, reject: myauth.Reject},
	"mongodb":  {handshake: mongoauth.Handshake, reject: mongoauth.Reject, clientSpeaksFirst: true},
	"redis":    {handshake: redisauth.Handshake, reject: redisauth.Reject, clientSpeaksFirst: true, redisInline: true},
}
