package pgauth

import (
	"bytes"
	"encoding/base64"
	"fmt"
	"net"
	"strings"
	"testing"
	"time"

	"github.com/jackc/pgx/v5/pgproto3"
)

// TestFakeHugeSCRAMIterationCount checks that a server-first-message with an iteration count
// far beyond any real server's ends the login at the login timeout. PBKDF2 does not watch
// the context, so without a bound the session computes for as long as the server asked
// and the client waits as long.
func TestFakeHugeSCRAMIterationCount(t *testing.T) {
	const iterations = 20_000_000 // 5.9 s of PBKDF2-SHA-256 measured on a shared 2-core machine
	f := startFake(t, func(f *fakeServer, conn net.Conn) {
		tc, r, err := f.acceptTLS(conn)
		if err != nil {
			return
		}
		if _, err := readStartupPacket(r); err != nil {
			return
		}
		tc.Write(encode(t, &pgproto3.AuthenticationSASL{AuthMechanisms: []string{"SCRAM-SHA-256"}}))
		msg, err := readFrontendMessage(r)
		if err != nil {
			return
		}
		// The client-first-message ends the SASLInitialResponse: "n,,n=,r=<nonce>".
		i := bytes.Index(msg, []byte("r="))
		if i < 0 {
			return
		}
		nonce := string(msg[i+2:])
		salt := base64.StdEncoding.EncodeToString([]byte("0123456789abcdef"))
		serverFirst := fmt.Sprintf("r=%sserver,s=%s,i=%d", nonce, salt, iterations)
		tc.Write(encode(t, &pgproto3.AuthenticationSASLContinue{Data: []byte(serverFirst)}))
		readFrontendMessage(r)
	})
	const timeout = 300 * time.Millisecond
	p := startProxy(t, proxyConfig{Upstream: f.Addr, Creds: fakeCreds, TLS: f.Certs.ClientTLS("127.0.0.1"), Timeout: timeout})

	c := dialClient(t, p.Addr())
	start := time.Now()
	c.Write(startupBytes(pgproto3.ProtocolVersion30, "user", "x", "database", "appdb"))
	er := errorOf(t, readUntilReady(t, c))
	if elapsed := time.Since(start); elapsed > timeout+time.Second {
		t.Errorf("error arrived after %v, want about the login timeout of %v", elapsed, timeout)
	}
	if !strings.Contains(er.Message, `dbproxy route "testroute"`) {
		t.Errorf("message %q does not name the route", er.Message)
	}
}
