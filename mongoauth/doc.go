// Package mongoauth runs the MongoDB login phase of a proxied connection: it authenticates
// to the upstream server with stored credentials, so the application connects without any.
//
// # Handshake
//
// A MongoDB server accepts client metadata only in the first hello of a connection, so the
// agent sends no hello of its own. Handshake reads the client's first message, an OP_MSG
// hello or a legacy OP_QUERY isMaster on <db>.$cmd (the Go and Node.js drivers send the
// latter unless a server API version is set), and sends it upstream over TLS as an OP_MSG.
// It adds speculativeAuthenticate, a SCRAM-SHA-256 saslStart, and saslSupportedMechs for the
// stored user in the credentials' AuthSource (default "admin"). When the server accepts the
// speculative start, saslContinue finishes the conversation. Otherwise the agent runs
// saslStart and saslContinue with SCRAM-SHA-256, or with SCRAM-SHA-1 when saslSupportedMechs
// lists only that. The client then gets the server's hello reply without
// speculativeAuthenticate and saslSupportedMechs, as an OP_REPLY to an OP_QUERY or an OP_MSG
// to an OP_MSG, with responseTo set to its request's ID.
//
// Compression passes through: the client's hello lists its compressors, the server's reply
// names the ones it accepts, and after the handshake the two sides exchange OP_COMPRESSED
// messages directly.
//
// # Connection strings
//
// Clients connect to the agent without credentials and with directConnection=true:
//
//	mongodb://127.0.0.1:27017/appdb?directConnection=true
//
// Without directConnection=true, a driver that receives a replica set member's hello reply
// connects to the hosts listed there, past the agent. Handshake logs a warning whenever the
// reply lists hosts or a setName, because the client's hello does not show whether it asked
// for a direct connection.
//
// A client that still tries to authenticate gets a command error (code 2, BadValue) stating
// that the credentials are supplied by the agent and must be removed from the connection
// string. That covers speculativeAuthenticate in its hello, and saslStart, saslContinue,
// authenticate or getnonce sent before its first other command. An authentication command
// in the hello position ends the session. One that follows the hello gets the error, is not
// forwarded, and the session goes on.
//
// # Failures
//
// When the server rejects the stored credentials (code 18), Handshake calls Options.Redial
// once, if set, and retries on the new connection with the credentials it returns. If that
// fails too, the client's hello gets an error with code 18 (AuthenticationFailed) naming the
// route, and Handshake returns an error wrapping ErrAuthFailed. Other upstream failures give
// code 6 (HostUnreachable). Reject replies to a client's first message in the same way when no
// upstream session could be set up.
//
// # Limits
//
//   - One wire message is at most 48000000 bytes (maxMessageSizeBytes of MongoDB servers)
//     and one BSON document at most 16 MiB (maxBsonObjectSize). Larger messages during the
//     handshake end it with an error.
//   - Only SCRAM-SHA-256 and SCRAM-SHA-1 are supported, with at least 4096 iterations.
//     X.509, LDAP (PLAIN), Kerberos and AWS authentication are not.
//   - The first message must be a hello. A client that opens with another command gets an
//     error.
//   - The agent keeps one SCRAM client per credential, up to 1024, so the salted password is
//     derived once per credential rather than once per session.
//   - The topology is not rewritten: replica set members are reachable through the agent
//     only with directConnection=true.
package mongoauth
