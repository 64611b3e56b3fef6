// Package redisauth runs the login phase of a Redis session for the agent, and rewrites
// the client's login commands for the rest of the session.
//
// # Login
//
// Handshake opens TLS to the upstream from the first byte, then sends AUTH user password,
// or AUTH password when the stored credentials have no user name. The reply decides the
// session: +OK hands both connections to the splice, and an error reply fails it. A
// failure is never a silent close: Redis clients speak first, so the agent reads the
// client's first command and replies to it with one error naming the route, such as
//
//	-WRONGPASS dbproxy route "cache": upstream rejected the stored credentials: invalid username-password pair or user is disabled.
//	-ERR dbproxy route "cache": upstream tls handshake: tls: failed to verify certificate: ...
//
// Reject sends the same kind of reply for failures before the Handshake.
//
// # Commands after the login
//
// The client connection returned in Conns parses the client's commands at command
// boundaries, both RESP arrays of bulk strings and inline command lines, and returns
// every byte unchanged except for these commands:
//
//   - AUTH [username] password becomes AUTH with the stored credentials, so clients that
//     still send a password (redis-cli -a, go-redis with Password set) stay logged in as
//     the stored user. The reply is the server's +OK.
//   - HELLO protover AUTH username password [SETNAME name] gets the stored user name
//     ("default" when the credentials have none) and password in its AUTH clause. HELLO
//     itself, protocol 2 or 3, and SETNAME pass through. In a HELLO with an invalid option,
//     an incomplete AUTH or SETNAME reaches the server as sent. Any other invalid option
//     becomes "(hidden by dbproxy: it may be a credential)" and the arguments after it
//     become empty strings, so the server's syntax error names the option but never
//     contains a password that the client misplaced.
//   - RESET would log the session out, because Redis then authenticates the connection
//     as the default user. The agent replaces it with a command that the server rejects,
//     so the client gets, in order with its other replies,
//     -ERR unknown command 'RESET (not supported by dbproxy route "cache": ...)', with args beginning with:
//     and the session stays logged in with its state unchanged. Inside MULTI this error
//     makes the server abort the transaction at EXEC.
//
// The rewrite happens in place, so pipelined commands keep their order and each gets
// exactly one reply. Other commands are not buffered: bulk payloads stream through, and
// the common path allocates nothing. A session that waits for its next command holds no
// input buffer.
//
// # Limits
//
// The parser splits the stream the way Redis 7.0 does (networking.c): inline lines up to
// 64 KiB, bulk strings up to 512 MB (the default proto-max-bulk-len, even when the server
// allows more), arrays up to 2^31-1 elements. Input that Redis would reject with a
// protocol error ends the session: the agent forwards a command that the server rejects
// with the reason, then a frame that makes the server send a protocol error and close.
// An inline line whose command name is AUTH, HELLO or RESET, or is quoted, is buffered
// whole to be parsed, the one case where the input buffer grows past 16 KiB (to 64 KiB).
//
// Replies pass through unchanged. Redis Cluster and Sentinel are not supported: the
// agent logs a warning once per process when the server sends a MOVED or ASK redirect,
// and a client that follows a redirect connects to the node directly, not through the
// agent.
package redisauth
