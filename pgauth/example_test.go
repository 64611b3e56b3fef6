package pgauth_test

import (
	"context"
	"crypto/tls"
	"io"
	"log"
	"net"
	"time"

	"github.com/knoxcall/dbproxy/credsource"
	"github.com/knoxcall/dbproxy/pgauth"
)

// Example serves one client connection: it dials the database, logs in with stored
// credentials and then copies bytes both ways.
func Example() {
	ln, err := net.Listen("tcp", "127.0.0.1:5432")
	if err != nil {
		log.Fatal(err)
	}
	client, err := ln.Accept()
	if err != nil {
		log.Fatal(err)
	}
	defer client.Close()

	upstream, err := net.Dial("tcp", "db.internal:5432")
	if err != nil {
		log.Fatal(err)
	}
	defer upstream.Close()

	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	creds := credsource.Credentials{Username: "app", Password: "from-the-secret-store"}
	conns, err := pgauth.Handshake(ctx, client, upstream, creds, pgauth.Options{
		Route:     "orders",
		TLSConfig: &tls.Config{ServerName: "db.internal"},
	})
	if err != nil {
		log.Print(err) // the client has already been sent the reason
		return
	}
	defer conns.Upstream.Close()
	go io.Copy(conns.Upstream, conns.Client)
	io.Copy(conns.Client, conns.Upstream)
}
