// Package dbproxy is the root of a library and an agent that let an application reach its
// database with no password in its configuration.
//
// The agent runs beside the application. For each configured route it listens on a
// loopback port (and optionally a Unix socket). For every connection it checks the
// connecting process's Linux UID against the route's allowlist, fetches the route's
// credentials from a credential source, opens verified TLS to the real database, performs
// the database's login handshake itself, and then relays bytes both ways. The application
// only changes its connection string: host 127.0.0.1, the route's port, no password.
//
// The packages:
//
//   - knoxproxy: Route, Serve and the session lifecycle (listeners, peer check, first-bytes
//     check, credential fetch, dial, handshake, splice, shutdown drain).
//   - pgauth, myauth, mongoauth, redisauth: one protocol's login phase each, exported as
//     Handshake(ctx, clientConn, upstreamConn, creds, opts).
//   - peercred: who is on the other end of a local socket (SO_PEERCRED for Unix sockets,
//     sock_diag netlink for TCP loopback).
//   - credsource: the Source interface, the static, secrets file, environment, exec and
//     HTTP sources, and a cache with a TTL and single-flight fetches.
//
// The command cmd/agent runs routes from a YAML or JSON file.
//
// # Embedding
//
// A Go service can run the proxy in-process:
//
//	source := credsource.NewCache(credsource.NewStatic(map[string]credsource.Credentials{
//		"sec_orders": {Username: "app", Password: passwordFromVault},
//	}), 5*time.Minute)
//	err := knoxproxy.Serve(ctx, knoxproxy.Config{
//		Routes: []knoxproxy.Route{{
//			Name:         "orders",
//			Protocol:     "postgres",
//			LocalPort:    6432,
//			UpstreamHost: "db.internal",
//			UpstreamPort: 5432,
//			SecretID:     "sec_orders",
//			AllowedUIDs:  []uint32{uint32(os.Getuid())},
//			TLS:          knoxproxy.TLS{CAFile: "/etc/ssl/db-ca.pem"},
//		}},
//		Credentials: source,
//		Logger:      slog.Default(),
//	})
//
// Serve returns nil when ctx ends and every open session then ends within
// Config.ShutdownTimeout. It closes the sessions still open after that and returns an
// error wrapping knoxproxy.ErrShutdownTimeout.
package dbproxy
