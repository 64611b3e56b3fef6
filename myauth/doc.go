// Package myauth runs the login phase of the MySQL client/server protocol for the agent. The
// application logs in to the agent without a password, and the agent logs in to the real
// server over TLS with the route's stored credentials. It is tested against MariaDB 10.11
// and a caching_sha2_password server built on go-mysql; MySQL 8 itself was not available.
//
// # Login
//
// The server speaks first, so Handshake reads the upstream's Handshake v10 first. It greets
// the client with the same server version, connection id, character set, status flags,
// capabilities and default plugin name, but a scramble of its own. CLIENT_SSL is removed
// because the loopback leg is plaintext. Drivers branch on the version string and the
// plugin, so the greeting is the server's. The client's HandshakeResponse41 supplies the
// database, character set, max packet size, connection attributes and capabilities. Its user
// name and auth response are ignored, and the client never gets a request for a password or
// an RSA key. Some clients use another plugin than the greeting's, such as mariadb with
// --default-auth or a client without caching_sha2_password at a MySQL 8 greeting. Such a
// client does not pass the greeting's scramble to its plugin, so the plugin sends an empty
// response and waits for data of its own. As a server would, the agent then sends an AuthSwitchRequest to that plugin
// (mysql_native_password, caching_sha2_password, client_ed25519), or to
// mysql_native_password from sha256_password, and ignores the reply too. A sha256_password
// client that requests the server's RSA key, as at a sha256_password greeting, is switched
// to mysql_native_password the same way.
//
// Upstream, the agent sends an SSLRequest, starts TLS with Options.TLSConfig (a server without
// TLS is an error) and sends a HandshakeResponse41 as the stored user with the capabilities
// both the client and the server have, plus CLIENT_SSL and CLIENT_PLUGIN_AUTH. Flags that
// shape the command stream (CLIENT_DEPRECATE_EOF, CLIENT_COMPRESS,
// CLIENT_ZSTD_COMPRESSION_ALGORITHM and its level, CLIENT_SESSION_TRACK,
// CLIENT_QUERY_ATTRIBUTES, MariaDB's extended capabilities, ...) are therefore the same on
// both legs, and the splice can copy bytes unchanged.
//
// Supported plugins, in the greeting or after an AuthSwitchRequest: caching_sha2_password
// (fast path, and full authentication by sending the password inside TLS),
// mysql_native_password, sha256_password and mysql_clear_password (inside TLS), and MariaDB's
// client_ed25519. Any other plugin fails with an error wrapping ErrUnsupportedPlugin that
// names it.
//
// The server's OK or ERR reaches the client with the sequence id the client expects. A 1045
// (access denied) is retried once through Options.Redial when it is set.
//
// # Errors sent to the client
//
// Handshake reports every failure to a connected client as an ERR packet before it returns.
// That is the server's own ERR, or one written by the agent with code 1043 and SQLSTATE
// 08S01 (upstream unreachable, TLS failure, protocol error, login timeout) that names the
// route. Reject writes the same packet, or 1045 with SQLSTATE 28000 when the credentials are
// not found, as the first packet of the connection. Callers use Reject only when they do not
// call Handshake.
//
// # After login
//
// COM_RESET_CONNECTION passes through. COM_CHANGE_USER would make the server re-authenticate
// with the client's credentials, which it does not have. On an uncompressed session the agent
// replies to it with ERR 1235 (SQLSTATE 42000) naming COM_RESET_CONNECTION, using a parser
// that reads only packet headers. On a compressed session (CLIENT_COMPRESS or zstd) the
// parser is off, so the command reaches the server, which authenticates the user named in
// it: that fails with 1045 unless the client knows that user's password.
//
// # Health probes and max_connect_errors
//
// A client that connects and leaves before logging in would leave an upstream connection
// that ended during the login phase, which the server counts against max_connect_errors
// until it blocks the agent's host (error 1129). Handshake ends such connections by logging
// in as the stored user and sending COM_QUIT, which takes up to 5 seconds after the client
// left before Handshake returns.
//
// # Limits
//
//   - Clients must speak protocol 4.1; a HandshakeResponse320 gets ERR 1251.
//   - The client leg never offers TLS: an SSLRequest from the client gets an ERR.
//   - A TLS failure upstream, or a rejection of the stored credentials, still ends an upstream
//     connection during the login phase and counts against max_connect_errors.
//   - The login packets are framed here rather than with go-mysql's packet.Conn, which reads
//     ahead into its own buffer and has no length limit. go-mysql supplies the constants and
//     the scramble functions.
package myauth
