package credsource

import (
	"context"
	"encoding/pem"
	"errors"
	"net/http"
	"net/http/httptest"
	"os"
	"path/filepath"
	"strings"
	"sync/atomic"
	"testing"
	"time"
)

const testToken = "token-3b1f0c77"

// secretsAPI is an in-process secrets API over TLS. It serves secrets by id and records
// the raw paths it was asked for.
type secretsAPI struct {
	srv     *httptest.Server
	caFile  string
	secrets map[string]string
	paths   chan string
	// status, when set, replaces every response with that status and body.
	status atomic.Int32
	body   atomic.Value
}

func startSecretsAPI(t *testing.T, secrets map[string]string) *secretsAPI {
	t.Helper()
	api := &secretsAPI{secrets: secrets, paths: make(chan string, 100)}
	api.srv = httptest.NewTLSServer(http.HandlerFunc(api.serve))
	t.Cleanup(api.srv.Close)
	api.caFile = filepath.Join(t.TempDir(), "ca.pem")
	block := &pem.Block{Type: "CERTIFICATE", Bytes: api.srv.Certificate().Raw}
	if err := os.WriteFile(api.caFile, pem.EncodeToMemory(block), 0o644); err != nil {
		t.Fatal(err)
	}
	return api
}

func (api *secretsAPI) serve(w http.ResponseWriter, r *http.Request) {
	select {
	case api.paths <- r.URL.EscapedPath():
	default:
	}
	if status := api.status.Load(); status != 0 {
		w.WriteHeader(int(status))
		body, _ := api.body.Load().(string)
		w.Write([]byte(body))
		return
	}
	if r.Method != http.MethodGet || r.Header.Get("Authorization") != "Bearer "+testToken {
		http.Error(w, "invalid token", http.StatusUnauthorized)
		return
	}
	id, ok := strings.CutPrefix(r.URL.Path, "/v1/secrets/")
	secret, found := api.secrets[id]
	if !ok || !found {
		http.Error(w, "secret not found", http.StatusNotFound)
		return
	}
	w.Header().Set("Content-Type", "application/json")
	w.Write([]byte(secret))
}

func tokenFile(t *testing.T, token string) string {
	t.Helper()
	path := filepath.Join(t.TempDir(), "token")
	if err := os.WriteFile(path, []byte(token+"\n"), 0o600); err != nil {
		t.Fatal(err)
	}
	return path
}

func TestHTTPFetchesSecret(t *testing.T) {
	certPEM, keyPEM := testKeyPair(t)
	api := startSecretsAPI(t, map[string]string{
		"sec_orders": `{"username": "app", "password": "` + canary + `"}`,
		"team/a b":   `{"username": "u2", "certificate": ` + jsonString(certPEM) + `, "private_key": ` + jsonString(keyPEM) + `}`,
	})
	src := &HTTP{BaseURL: api.srv.URL + "/v1/", TokenFile: tokenFile(t, testToken), CAFile: api.caFile}
	if err := src.Check(); err != nil {
		t.Fatalf("Check: %v", err)
	}
	got, err := src.Fetch(context.Background(), "sec_orders")
	if err != nil {
		t.Fatal(err)
	}
	if want := (Credentials{Username: "app", Password: canary}); !got.Equal(want) {
		t.Errorf("got %v, want %v", got, want)
	}

	// An id with a slash and a space stays one escaped path segment.
	got, err = src.Fetch(context.Background(), "team/a b")
	if err != nil {
		t.Fatal(err)
	}
	if want := (Credentials{Username: "u2", Certificate: certPEM, PrivateKey: keyPEM}); !got.Equal(want) {
		t.Errorf("got %v, want %v", got, want)
	}
	<-api.paths
	if path := <-api.paths; path != "/v1/secrets/team%2Fa%20b" {
		t.Errorf("request path = %q, want /v1/secrets/team%%2Fa%%20b", path)
	}
}

func TestHTTPTokenFromEnvironment(t *testing.T) {
	api := startSecretsAPI(t, map[string]string{"s": `{"username": "app", "password": "p"}`})
	t.Setenv("DBPROXY_TEST_TOKEN", testToken)
	src := &HTTP{BaseURL: api.srv.URL + "/v1", TokenEnv: "DBPROXY_TEST_TOKEN", CAFile: api.caFile}
	if _, err := src.Fetch(context.Background(), "s"); err != nil {
		t.Fatal(err)
	}
	// The variable is read on every request, so a changed token is used at once.
	t.Setenv("DBPROXY_TEST_TOKEN", "stale")
	if _, err := src.Fetch(context.Background(), "s"); !errors.Is(err, ErrUnauthorized) {
		t.Errorf("Fetch with a wrong token = %v, want ErrUnauthorized", err)
	}
}

func TestHTTPStatusErrors(t *testing.T) {
	api := startSecretsAPI(t, map[string]string{"s": `{"username": "app", "password": "p"}`})
	for _, tc := range []struct {
		name   string
		status int
		body   string
		id     string
		token  string
		is     error
		want   string
	}{
		{name: "not found", id: "missing", token: testToken, is: ErrNotFound, want: `secret "missing"`},
		{name: "wrong token", id: "s", token: "wrong", is: ErrUnauthorized, want: "401 Unauthorized"},
		{name: "forbidden", status: 403, id: "s", token: testToken, is: ErrUnauthorized, want: "403 Forbidden"},
		{name: "server error", status: 500, body: "database locked", id: "s", token: testToken, want: `500 Internal Server Error: "database locked"`},
		{name: "server error echoing token", status: 500, body: "bad header: Bearer " + testToken, id: "s", token: testToken, want: `500 Internal Server Error: "bad header: Bearer [redacted]"`},
		{name: "token cut at the quote limit", status: 500, body: strings.Repeat("x", maxErrorBodyInError-4) + testToken, id: "s", token: testToken, want: "xxxx[red"},
		{name: "redirect not followed", status: 302, id: "s", token: testToken, want: "unexpected status 302"},
		{name: "invalid body", status: 200, body: `{"username": 1}`, id: "s", token: testToken, want: `key "username" must have a string value`},
		{name: "body too large", status: 200, body: strings.Repeat(" ", maxSecretSize+10), id: "s", token: testToken, want: "exceeds 1048576 bytes"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			api.status.Store(int32(tc.status))
			api.body.Store(tc.body)
			defer api.status.Store(0)
			src := &HTTP{BaseURL: api.srv.URL + "/v1", TokenFile: tokenFile(t, tc.token), CAFile: api.caFile}
			_, err := src.Fetch(context.Background(), tc.id)
			if err == nil {
				t.Fatal("Fetch succeeded, want an error")
			}
			if tc.is != nil && !errors.Is(err, tc.is) {
				t.Errorf("error %q does not wrap %v", err, tc.is)
			}
			if !strings.Contains(err.Error(), tc.want) {
				t.Errorf("error %q lacks %q", err, tc.want)
			}
			if strings.Contains(err.Error(), tc.token) && tc.token != "" {
				t.Errorf("error contains the token: %q", err)
			}
			if errors.Is(err, ErrNotFound) && errors.Is(err, ErrUnauthorized) {
				t.Errorf("error %q wraps both ErrNotFound and ErrUnauthorized", err)
			}
		})
	}
}

func TestHTTPVerifiesTLS(t *testing.T) {
	api := startSecretsAPI(t, map[string]string{"s": `{"username": "app", "password": "p"}`})
	// Without the CA file the test server's certificate is not trusted.
	src := &HTTP{BaseURL: api.srv.URL, TokenFile: tokenFile(t, testToken)}
	_, err := src.Fetch(context.Background(), "s")
	if err == nil || !strings.Contains(err.Error(), "certificate") {
		t.Errorf("Fetch = %v, want a certificate error", err)
	}
}

func TestHTTPTimeout(t *testing.T) {
	// The handler waits for the test to end, not for the request context:
	// if it returned when the client hung up, the server could race an empty
	// 200 response against the client's deadline.
	release := make(chan struct{})
	srv := httptest.NewTLSServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		<-release
	}))
	defer srv.Close()
	defer close(release)
	src := &HTTP{BaseURL: srv.URL, TokenFile: tokenFile(t, testToken), Timeout: 200 * time.Millisecond, Client: srv.Client()}
	start := time.Now()
	_, err := src.Fetch(context.Background(), "s")
	if !errors.Is(err, context.DeadlineExceeded) {
		t.Errorf("Fetch = %v, want a deadline error", err)
	}
	if d := time.Since(start); d > 3*time.Second {
		t.Errorf("Fetch returned after %v, want soon after the 200ms timeout", d)
	}
}

func TestHTTPConfigErrors(t *testing.T) {
	token := tokenFile(t, testToken)
	t.Setenv("DBPROXY_TEST_SPLIT_TOKEN", "Bearer "+testToken)
	for _, tc := range []struct {
		name string
		src  *HTTP
		want string
	}{
		{"plain http", &HTTP{BaseURL: "http://127.0.0.1:1", TokenFile: token}, "must be an https URL"},
		{"no host", &HTTP{BaseURL: "https:///x", TokenFile: token}, "must be an https URL"},
		{"query", &HTTP{BaseURL: "https://127.0.0.1:1/?a=b", TokenFile: token}, "must not contain"},
		{"no token", &HTTP{BaseURL: "https://127.0.0.1:1"}, "token_file or token_env is required"},
		{"both tokens", &HTTP{BaseURL: "https://127.0.0.1:1", TokenFile: token, TokenEnv: "X"}, "not both"},
		{"missing token file", &HTTP{BaseURL: "https://127.0.0.1:1", TokenFile: "/nonexistent/token"}, "token_file"},
		{"unset token env", &HTTP{BaseURL: "https://127.0.0.1:1", TokenEnv: "DBPROXY_TEST_UNSET_TOKEN"}, "DBPROXY_TEST_UNSET_TOKEN is not set"},
		{"token with a line break", &HTTP{BaseURL: "https://127.0.0.1:1", TokenFile: tokenFile(t, "first\nsecond")}, "white space or a control character at byte 5"},
		{"token with a prefix", &HTTP{BaseURL: "https://127.0.0.1:1", TokenFile: tokenFile(t, "Bearer "+testToken)}, "white space"},
		{"token env with a prefix", &HTTP{BaseURL: "https://127.0.0.1:1", TokenEnv: "DBPROXY_TEST_SPLIT_TOKEN"}, "DBPROXY_TEST_SPLIT_TOKEN: the token contains white space"},
		{"token file too large", &HTTP{BaseURL: "https://127.0.0.1:1", TokenFile: tokenFile(t, strings.Repeat("x", maxTokenSize+1))}, "larger than 65536 bytes"},
		{"missing ca file", &HTTP{BaseURL: "https://127.0.0.1:1", TokenFile: token, CAFile: "/nonexistent/ca.pem"}, "ca_file"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			err := tc.src.Check()
			if err == nil || !strings.Contains(err.Error(), tc.want) {
				t.Errorf("Check = %v, want an error containing %q", err, tc.want)
			}
			if err != nil && strings.Contains(err.Error(), testToken) {
				t.Errorf("Check error contains the token: %q", err)
			}
		})
	}
}
