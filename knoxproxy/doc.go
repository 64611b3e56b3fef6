// Package knoxproxy runs dbproxy's routes: loopback listeners that log in to a database on
// the client's behalf with stored credentials and then relay the session.
//
// A Route names a protocol ("postgres", "mysql", "mongodb" or "redis"), a loopback listen
// address and port, an upstream host and port, the id of its secret in a
// credsource.Source, and its TLS settings. Serve, or New followed by Server.Serve, binds
// every route and runs until its context ends. A listen address that is not loopback, or
// two routes on one port, is an error before anything is bound (see ValidateRoutes).
//
// For each accepted connection a session:
//
//  1. looks up the peer's UID with the Config's PeerChecker and, when the route has
//     AllowedUIDs, closes a peer that is not in the list, or that cannot be identified,
//     before reading a byte;
//  2. rejects a client whose first bytes are an HTTP request or a TLS ClientHello;
//  3. fetches the route's credentials, dials the upstream and opens TLS, verified against
//     TLS.CAFile or the system roots;
//  4. runs the protocol's Handshake (pgauth, myauth, mongoauth or redisauth), which logs in
//     with the stored credentials and sends the client the server's login result;
//  5. copies bytes both ways until both directions end.
//
// Failures after the peer check reach the client in its protocol's error format, naming
// the route. When the upstream rejects the credentials, the session fetches them again past
// the cache and retries once if they changed, so a rotated password needs no restart.
//
// Each session logs one line when it opens and one when it closes, with an outcome label.
// Server.Stats reports counters per route, and an Observer receives the same events for
// metrics. Server.Update replaces the routes of a running server: unchanged routes keep
// their listeners and sessions, and a set that fails validation changes nothing.
//
// When the context given to Serve ends, the listeners close, live sessions may run for
// Config.ShutdownTimeout, and the ones still open are then closed; Serve then returns
// ErrShutdownTimeout.
package knoxproxy
