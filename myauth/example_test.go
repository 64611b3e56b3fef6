package myauth_test

import (
	"context"
	"crypto/tls"
	"log"
	"net"
	"time"

	"github.com/knoxcall/dbproxy/credsource"
	"github.com/knoxcall/dbproxy/internal/splice"
	"github.com/knoxcall/dbproxy/myauth"
)

// ExampleHandshake serves one MySQL route: each client on the loopback listener is logged in
// to the upstream as the stored user, then the two connections are spliced.
func ExampleHandshake() {
	ln, err := net.Listen("tcp", "127.0.0.1:3307")
	if err != nil {
		log.Fatal(err)
	}
	creds := credsource.Credentials{Username: "app", Password: "from-the-secret-store"}
	opts := myauth.Options{Route: "orders", TLSConfig: &tls.Config{ServerName: "db.internal"}}
	for {
		client, err := ln.Accept()
		if err != nil {
			log.Fatal(err)
		}
		go func() {
			defer client.Close()
			ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
			defer cancel()
			upstream, err := (&net.Dialer{}).DialContext(ctx, "tcp", "db.internal:3306")
			if err != nil {
				// MySQL servers speak first, so the ERR takes the greeting's place.
				myauth.Reject(ctx, client, opts.Route, err)
				return
			}
			defer upstream.Close()
			conns, err := myauth.Handshake(ctx, client, upstream, creds, opts)
			if err != nil {
				log.Printf("route %s: %v", opts.Route, err) // the client already has an ERR
				return
			}
			defer conns.Upstream.Close()
			splice.Run(conns.Client, conns.Upstream)
		}()
	}
}
