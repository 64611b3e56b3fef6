// Package pgauth runs the login phase of a PostgreSQL connection on behalf of a client that
// has no password.
//
// Handshake sits between an accepted client connection and a dialed upstream connection. On
// the client side it replies 'N' to SSLRequest and GSSENCRequest, because the agent's
// listener is loopback only, and reads the StartupMessage (protocol 3.0 to 3.2, at most
// 10000 bytes as in PostgreSQL). It keeps every parameter the client sent, database,
// application_name, options, replication and _pq_.* included, except user, which becomes the
// stored user name; a missing database defaults to that user name, as libpq does.
//
// On the upstream side it sends an SSLRequest, requires 'S' with no byte after it, runs TLS
// with the route's configuration and logs in with the stored credentials:
//
//   - SCRAM-SHA-256-PLUS with tls-server-end-point channel binding when the server offers it,
//     SCRAM-SHA-256 otherwise. One SCRAM client per credential is cached in the process, so
//     the PBKDF2 derivation of the salted password runs once per credential, not per
//     connection.
//   - MD5 and cleartext password, which the agent sends only because the leg is TLS.
//   - GSSAPI, SSPI and any other method are rejected with an error naming the method.
//
// The client is never asked for a password. It receives the server's AuthenticationOk,
// ParameterStatus, BackendKeyData, NegotiateProtocolVersion, NoticeResponse and
// ReadyForQuery messages unchanged, and so holds the server's own cancel key. An
// ErrorResponse of the server (wrong password 28P01, unknown database 3D000, too many
// connections 53300) also reaches the client unchanged. When the server rejects the
// credentials and Options.Redial is set, the login is retried once on a new connection with
// re-fetched credentials; the client sees only the final outcome.
//
// A CancelRequest is forwarded unchanged to the upstream over a fresh TLS connection, so
// keys of any length pass through, and Handshake returns an error wrapping ErrCancelRequest.
//
// Reject sends a client a FATAL ErrorResponse when the session cannot start at all: 08001
// when the upstream is unreachable, 08006 when TLS to it fails, 28000 when the credentials
// are not available. Its message names the route and the failure, never a secret.
//
// Bytes read ahead belong to the session: what the client sent after its StartupMessage
// and what the server sent after ReadyForQuery come first from the returned Conns.
//
// Limits:
//   - The client leg is plaintext: a client with sslmode=require (or verify-ca,
//     verify-full, or gssencmode=require) fails with libpq's "server does not support SSL"
//     error. sslmode=prefer and disable work.
//   - Handshake does not add credsource.Credentials.Certificate to the TLS configuration: a
//     route that needs a client certificate upstream sets it in Options.TLSConfig.
//   - A StartupMessage of a protocol 3.x version other than 3.0 and 3.2 is passed upstream,
//     where the server answers with NegotiateProtocolVersion or an error.
package pgauth
