package mongoauth

import (
	"fmt"
	"net"
	"sync"

	"github.com/knoxcall/dbproxy/internal/handshake"
)

// clientGuard is the client connection handed to the splice. It reads the client's commands
// after the hello one whole message at a time until the first one that is not an
// authentication command. Each saslStart, saslContinue, authenticate or getnonce before that
// gets a command error and is not forwarded, and the session keeps serving. After that first
// other command, reads pass straight through.
//
// A driver that has credentials of its own and does not authenticate speculatively sends
// saslStart right after the hello, so this is where it learns to drop them.
//
// NOTE: an authentication command sent later in the session reaches the server, which then
// authenticates the connection with the client's own credentials.
type clientGuard struct {
	net.Conn
	route string

	// writeMu serializes the splice's writes with the error replies written from Read.
	writeMu sync.Mutex
	// checked is set after the first command that is not an authentication command.
	checked bool
	// pending is the part of that command not yet returned by Read.
	pending []byte
}

func newClientGuard(client net.Conn, route string) *clientGuard {
	return &clientGuard{Conn: client, route: route}
}

// Read returns the client's bytes, holding back authentication commands as described on
// clientGuard. Only the splice reads, from one goroutine.
func (g *clientGuard) Read(p []byte) (int, error) {
	if len(g.pending) > 0 {
		n := copy(p, g.pending)
		g.pending = g.pending[n:]
		return n, nil
	}
	if g.checked {
		return g.Conn.Read(p)
	}
	for {
		msg, err := readMessage(g.Conn)
		if err != nil {
			// A message over the size limit is left for the server to reject, so a
			// partially read one cannot be passed on: the session ends here.
			g.checked = true
			return 0, err
		}
		cmd, err := parseCommand(msg)
		if err == nil && authCommands[cmd.name] {
			reply := replyTo(cmd, errorDocument(codeBadValue, "BadValue",
				fmt.Sprintf(credentialsMessage, g.route, cmd.name)))
			if _, err := g.Write(reply); err != nil {
				return 0, err
			}
			continue
		}
		g.checked = true
		n := copy(p, msg)
		g.pending = msg[n:]
		return n, nil
	}
}

// Write sends p to the client.
func (g *clientGuard) Write(p []byte) (int, error) {
	g.writeMu.Lock()
	defer g.writeMu.Unlock()
	return g.Conn.Write(p)
}

// CloseWrite half-closes the client connection when it supports that.
func (g *clientGuard) CloseWrite() error { return handshake.CloseWrite(g.Conn) }

// Unwrap returns the underlying client connection.
func (g *clientGuard) Unwrap() net.Conn { return g.Conn }
