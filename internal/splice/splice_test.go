package splice

import (
	"bytes"
	"crypto/sha256"
	"io"
	"math/rand/v2"
	"net"
	"testing"
	"time"

	"github.com/knoxcall/dbproxy/internal/dbtest"
)

// TestRunCopiesBothWaysWithHalfClose sends a large payload from the client side, closes its
// writing half, and checks that the reply written afterwards still arrives.
func TestRunCopiesBothWaysWithHalfClose(t *testing.T) {
	client, proxyClient := dbtest.TCPPair(t)
	proxyServer, server := dbtest.TCPPair(t)

	type result struct {
		aToB, bToA int64
		err        error
	}
	done := make(chan result, 1)
	go func() {
		a, b, err := Run(proxyClient, proxyServer)
		done <- result{a, b, err}
	}()

	payload := make([]byte, 8<<20)
	rng := rand.New(rand.NewPCG(1, 2))
	for i := range payload {
		payload[i] = byte(rng.Uint32())
	}
	go func() {
		client.Write(payload)
		client.(*net.TCPConn).CloseWrite()
	}()

	got, err := io.ReadAll(server)
	if err != nil {
		t.Fatalf("server read: %v", err)
	}
	if sha256.Sum256(got) != sha256.Sum256(payload) {
		t.Fatalf("server got %d bytes with another checksum, want %d bytes", len(got), len(payload))
	}

	reply := []byte("reply after the client's half-close")
	server.Write(reply)
	server.(*net.TCPConn).CloseWrite()
	back, err := io.ReadAll(client)
	if err != nil {
		t.Fatalf("client read: %v", err)
	}
	if !bytes.Equal(back, reply) {
		t.Fatalf("client got %q, want %q", back, reply)
	}

	select {
	case r := <-done:
		if r.err != nil {
			t.Errorf("Run error: %v", r.err)
		}
		if r.aToB != int64(len(payload)) {
			t.Errorf("aToB = %d, want %d", r.aToB, len(payload))
		}
		if r.bToA != int64(len(reply)) {
			t.Errorf("bToA = %d, want %d", r.bToA, len(reply))
		}
	case <-time.After(5 * time.Second):
		t.Fatal("Run did not return after both directions ended")
	}
}

// TestRunClosesBothOnError checks that a reset on one side ends the whole splice.
// TestRunClosesBothOnError checks that a reset on one side closes the other, and that the
// error names the side that was reset.
func TestRunClosesBothOnError(t *testing.T) {
	client, proxyClient := dbtest.TCPPair(t)
	proxyServer, server := dbtest.TCPPair(t)
	done := make(chan error, 1)
	go func() {
		_, _, err := Run(proxyClient, proxyServer)
		done <- err
	}()

	client.(*net.TCPConn).SetLinger(0)
	client.Write([]byte("x"))
	buf := make([]byte, 1)
	if _, err := io.ReadFull(server, buf); err != nil {
		t.Fatal(err)
	}
	client.Close() // with linger 0 this sends a reset

	select {
	case err := <-done:
		if !PeerGone(err, proxyClient) {
			t.Errorf("PeerGone(%v, client side) = false, want true", err)
		}
		if PeerGone(err, proxyServer) {
			t.Errorf("PeerGone(%v, server side) = true, want false", err)
		}
	case <-time.After(5 * time.Second):
		t.Fatal("Run did not return after a reset")
	}
	server.SetReadDeadline(time.Now().Add(5 * time.Second))
	if _, err := server.Read(buf); err == nil {
		t.Fatal("server side still open after the client reset")
	}
}

func BenchmarkRun(b *testing.B) {
	ln, _ := net.Listen("tcp", "127.0.0.1:0")
	defer ln.Close()
	pair := func() (net.Conn, net.Conn) {
		ch := make(chan net.Conn, 1)
		go func() { c, _ := ln.Accept(); ch <- c }()
		d, _ := net.Dial("tcp", ln.Addr().String())
		return d, <-ch
	}
	client, proxyClient := pair()
	proxyServer, server := pair()
	go Run(proxyClient, proxyServer)
	go io.Copy(io.Discard, server)
	chunk := make([]byte, 64<<10)
	b.SetBytes(int64(len(chunk)))
	b.ReportAllocs()
	b.ResetTimer()
	for b.Loop() {
		client.Write(chunk)
	}
	client.Close()
	server.Close()
}

// TestResetAfterCleanEndIsNotAnError covers a server that closes abruptly right after the
// client ended its stream, as a database does on the client's quit message.
func TestResetAfterCleanEndIsNotAnError(t *testing.T) {
	client, proxyClient := dbtest.TCPPair(t)
	proxyServer, server := dbtest.TCPPair(t)
	done := make(chan error, 1)
	go func() {
		_, _, err := Run(proxyClient, proxyServer)
		done <- err
	}()

	client.Write([]byte("quit"))
	client.(*net.TCPConn).CloseWrite()
	if got, _ := io.ReadAll(server); string(got) != "quit" {
		t.Fatalf("server got %q", got)
	}
	server.(*net.TCPConn).SetLinger(0)
	server.Close() // a reset

	select {
	case err := <-done:
		if err != nil {
			t.Errorf("Run = %v, want nil: the reset followed a clean end", err)
		}
	case <-time.After(5 * time.Second):
		t.Fatal("Run did not return")
	}
}
