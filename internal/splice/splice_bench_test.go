package splice

import (
	"crypto/ecdsa"
	"crypto/elliptic"
	"crypto/rand"
	"crypto/tls"
	"crypto/x509"
	"crypto/x509/pkix"
	"fmt"
	"io"
	"math/big"
	"net"
	"syscall"
	"testing"
	"time"
)

// benchTCPPair returns both ends of a loopback TCP connection.
func benchTCPPair(b *testing.B) (net.Conn, net.Conn) {
	b.Helper()
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		b.Fatal(err)
	}
	defer ln.Close()
	accepted := make(chan net.Conn, 1)
	go func() {
		c, _ := ln.Accept()
		accepted <- c
	}()
	dialed, err := net.Dial("tcp", ln.Addr().String())
	if err != nil {
		b.Fatal(err)
	}
	return dialed, <-accepted
}

// selfSignedTLS returns a server and a client TLS configuration for a throwaway
// certificate, so the upstream leg can carry TLS as it does in the agent.
func selfSignedTLS(b *testing.B) (server, client *tls.Config) {
	b.Helper()
	key, err := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	if err != nil {
		b.Fatal(err)
	}
	tmpl := &x509.Certificate{
		SerialNumber: big.NewInt(1), Subject: pkix.Name{CommonName: "bench"},
		DNSNames: []string{"bench"}, NotBefore: time.Now().Add(-time.Hour), NotAfter: time.Now().Add(time.Hour),
	}
	der, err := x509.CreateCertificate(rand.Reader, tmpl, tmpl, &key.PublicKey, key)
	if err != nil {
		b.Fatal(err)
	}
	cert, _ := x509.ParseCertificate(der)
	pool := x509.NewCertPool()
	pool.AddCert(cert)
	server = &tls.Config{Certificates: []tls.Certificate{{Certificate: [][]byte{der}, PrivateKey: key}}}
	client = &tls.Config{RootCAs: pool, ServerName: "bench"}
	return server, client
}

// BenchmarkRoundTrip sends a request through Run and waits for the echoed reply, as a
// client does with one query at a time. With -benchmem it shows whether the splice
// allocates per message. ns/op is the latency of one round trip through two extra hops, and
// cpu-µs/op is the CPU time of the whole process (client, splice and echo server) per round
// trip.
func BenchmarkRoundTrip(b *testing.B) {
	for _, size := range []int{64, 1024, 16 << 10} {
		for _, withTLS := range []bool{false, true} {
			name := map[bool]string{false: "plain", true: "tls"}[withTLS]
			b.Run(name+"/"+byteSize(size), func(b *testing.B) {
				benchRoundTrip(b, size, withTLS)
			})
		}
	}
}

func benchRoundTrip(b *testing.B, size int, withTLS bool) {
	client, proxyClient := benchTCPPair(b)
	proxyUpstream, server := benchTCPPair(b)
	if withTLS {
		serverTLS, clientTLS := selfSignedTLS(b)
		tlsServer := tls.Server(server, serverTLS)
		tlsClient := tls.Client(proxyUpstream, clientTLS)
		done := make(chan error, 1)
		go func() { done <- tlsServer.Handshake() }()
		if err := tlsClient.Handshake(); err != nil {
			b.Fatal(err)
		}
		if err := <-done; err != nil {
			b.Fatal(err)
		}
		server, proxyUpstream = tlsServer, tlsClient
	}
	spliced := make(chan struct{})
	go func() {
		Run(proxyClient, proxyUpstream)
		close(spliced)
	}()
	// The server echoes every byte back.
	go io.Copy(server, server)

	request := make([]byte, size)
	reply := make([]byte, size)
	b.SetBytes(int64(2 * size))
	b.ReportAllocs()
	cpuBefore := processCPU(b)
	for b.Loop() {
		if _, err := client.Write(request); err != nil {
			b.Fatal(err)
		}
		if _, err := io.ReadFull(client, reply); err != nil {
			b.Fatal(err)
		}
	}
	b.StopTimer()
	b.ReportMetric(float64((processCPU(b)-cpuBefore).Microseconds())/float64(b.N), "cpu-µs/op")
	client.Close()
	server.Close()
	<-spliced
}

// processCPU returns the user and system CPU time the process has used so far.
func processCPU(b *testing.B) time.Duration {
	b.Helper()
	var ru syscall.Rusage
	if err := syscall.Getrusage(syscall.RUSAGE_SELF, &ru); err != nil {
		b.Fatal(err)
	}
	return time.Duration(ru.Utime.Nano() + ru.Stime.Nano())
}

func byteSize(n int) string {
	if n >= 1<<10 {
		return fmt.Sprintf("%dKiB", n>>10)
	}
	return fmt.Sprintf("%dB", n)
}
