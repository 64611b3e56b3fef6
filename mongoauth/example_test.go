package mongoauth_test

import (
	"context"
	"crypto/tls"
	"log"
	"net"
	"time"

	"github.com/knoxcall/dbproxy/credsource"
	"github.com/knoxcall/dbproxy/internal/splice"
	"github.com/knoxcall/dbproxy/mongoauth"
)

// Example accepts one client on loopback, logs in to a MongoDB server with stored
// credentials and splices the two connections. The client connects with
// mongodb://127.0.0.1:27017/appdb?directConnection=true and no credentials.
func Example() {
	ln, err := net.Listen("tcp", "127.0.0.1:27017")
	if err != nil {
		log.Fatal(err)
	}
	client, err := ln.Accept()
	if err != nil {
		log.Fatal(err)
	}
	defer client.Close()
	upstream, err := net.Dial("tcp", "db.example.com:27017")
	if err != nil {
		log.Fatal(err)
	}
	defer upstream.Close()

	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	creds := credsource.Credentials{Username: "app", Password: "from the secret store", AuthSource: "appdb"}
	conns, err := mongoauth.Handshake(ctx, client, upstream, creds, mongoauth.Options{
		Route:     "orders",
		TLSConfig: &tls.Config{ServerName: "db.example.com"},
	})
	if err != nil {
		log.Fatal(err)
	}
	splice.Run(conns.Client, conns.Upstream)
}
