package myauth

import (
	"bytes"
	"crypto/tls"
	"log/slog"
	"net"
	"strings"
	"testing"
	"time"

	"github.com/go-mysql-org/go-mysql/mysql"

	"github.com/knoxcall/dbproxy/credsource"
)

// TestPasswordNeverLeaks runs logins that succeed, fail at the server and fail in the agent,
// with Debug logging, and checks that the stored password appears in no log line, no
// Handshake error and nothing the client receives.
func TestPasswordNeverLeaks(t *testing.T) {
	const canary = "CANARY-pw-5e1f0c"
	scripts := map[string]func(f *fakeUpstream, c net.Conn) error{
		"clear password then OK": func(f *fakeUpstream, c net.Conn) error {
			tc, _, err := f.acceptLogin(c, mysql.AUTH_NATIVE_PASSWORD)
			if err != nil {
				return err
			}
			writePacket(tc, 3, []byte("\xfemysql_clear_password\x00nonce\x00"))
			readPacket(tc, 100)
			return writePacket(tc, 5, okPacket)
		},
		"access denied": func(f *fakeUpstream, c net.Conn) error {
			tc, _, err := f.acceptLogin(c, mysql.AUTH_CACHING_SHA2_PASSWORD)
			if err != nil {
				return err
			}
			writePacket(tc, 3, []byte{authMoreData, mysql.CACHE_SHA2_FULL_AUTH})
			readPacket(tc, 100)
			return writePacket(tc, 5, errPacket(1045, "28000", "Access denied for user 'app'", true))
		},
		"unknown plugin": func(f *fakeUpstream, c net.Conn) error {
			tc, _, err := f.acceptLogin(c, mysql.AUTH_NATIVE_PASSWORD)
			if err != nil {
				return err
			}
			return writePacket(tc, 3, []byte("\xfedialog\x00nonce\x00"))
		},
	}
	for name, script := range scripts {
		t.Run(name, func(t *testing.T) {
			var logs bytes.Buffer
			logger := slog.New(slog.NewJSONHandler(&logs, &slog.HandlerOptions{Level: slog.LevelDebug}))
			f := startFake(t, script)
			p := startProxy(t, proxyConfig{upstream: f.addr, timeout: 2 * time.Second, logger: logger,
				tls:   &tls.Config{RootCAs: f.tls.RootCAs, ServerName: "127.0.0.1"},
				creds: credsource.Credentials{Username: "app", Password: canary}})
			c, _, greet := fakeClient(t, p.Addr)
			_, packets := sendResponse(t, c, mysql.AUTH_NATIVE_PASSWORD, nil)
			c.Close()
			waitFor(t, func() bool { return len(p.Errors())+p.Logins() > 0 })
			var seen strings.Builder
			seen.Write(greet)
			for _, pkt := range packets {
				seen.Write(pkt)
			}
			for _, err := range p.Errors() {
				seen.WriteString(err.Error())
			}
			if strings.Contains(seen.String(), canary) {
				t.Errorf("password in client packets or errors: %q", seen.String())
			}
			if logs.Len() == 0 {
				t.Error("no log lines at Debug level; the check would prove nothing")
			}
			if strings.Contains(logs.String(), canary) {
				t.Errorf("password in logs: %s", logs.String())
			}
		})
	}
}
