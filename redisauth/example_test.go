package redisauth_test

import (
	"context"
	"crypto/tls"
	"io"
	"log"
	"net"
	"time"

	"github.com/knoxcall/dbproxy/credsource"
	"github.com/knoxcall/dbproxy/redisauth"
)

// ExampleHandshake serves one client: it dials Redis, logs in with stored credentials
// and copies bytes both ways. The agent uses a splice with half-close in place of the two
// io.Copy calls.
func ExampleHandshake() {
	ln, err := net.Listen("tcp", "127.0.0.1:6380")
	if err != nil {
		log.Fatal(err)
	}
	client, err := ln.Accept()
	if err != nil {
		log.Fatal(err)
	}
	defer client.Close()

	upstream, err := net.Dial("tcp", "127.0.0.1:6379")
	if err != nil {
		redisauth.Reject(context.Background(), client, "cache", err)
		return
	}
	defer upstream.Close()

	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	creds := credsource.Credentials{Username: "app", Password: "from-the-secret-store"}
	conns, err := redisauth.Handshake(ctx, client, upstream, creds, redisauth.Options{
		Route:     "cache",
		TLSConfig: &tls.Config{ServerName: "127.0.0.1"},
	})
	if err != nil {
		log.Printf("route cache: %v", err) // the client already got an error reply
		return
	}
	defer conns.Upstream.Close()
	go io.Copy(conns.Upstream, conns.Client) // commands, with AUTH and HELLO rewritten
	io.Copy(conns.Client, conns.Upstream)    // replies
}
