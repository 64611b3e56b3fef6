package mongoauth

import (
	"context"
	"errors"
	"fmt"
	"net"

	"github.com/knoxcall/dbproxy/credsource"
	"github.com/knoxcall/dbproxy/internal/handshake"
)

// Reject informs a client that the agent could not set up its session. It reads the client's
// first message (at most maxMessageSizeBytes, 48000000 bytes) and replies to it with a command
// error naming the route and cause: code 18 (AuthenticationFailed) when cause wraps
// ErrAuthFailed or credsource.ErrNotFound, code 6 (HostUnreachable) otherwise. The reply is
// an OP_REPLY for an OP_QUERY and an OP_MSG otherwise. cause must contain no secret. Reject
// does not close client.
func Reject(ctx context.Context, client net.Conn, route string, cause error) error {
	stop := handshake.WatchContext(ctx, client)
	defer stop()

	msg, err := readMessage(client)
	if err != nil {
		return handshake.ClientReadError(ctx, fmt.Errorf("read client message: %w", err))
	}
	code, codeName := int32(codeHostUnreachable), "HostUnreachable"
	if errors.Is(cause, ErrAuthFailed) || errors.Is(cause, credsource.ErrNotFound) {
		code, codeName = codeAuthenticationFailed, "AuthenticationFailed"
	}
	message := fmt.Sprintf("route %q: the agent could not set up the session: %s", route, handshake.ClientErrorText(context.Background(), cause))
	if err := sendHeaderError(client, msg, code, codeName, message); err != nil {
		return handshake.ContextError(ctx, fmt.Errorf("write error reply to client: %w", err))
	}
	return nil
}
