package vault

import (
	"context"
	"encoding/json"
	"errors"
	"net/http"
	"net/http/httptest"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/knoxcall/dbproxy/credsource"
)

const (
	testToken = "hvs.test-token"
	canary    = "canary-vault-pw-41d2"
)

// fakeVault follows the KV v2 read API for the secrets in data, under the mount "kv".
func fakeVault(t *testing.T, data map[string]map[string]any) *httptest.Server {
	t.Helper()
	srv := httptest.NewTLSServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		if r.Header.Get("X-Vault-Token") != testToken {
			w.WriteHeader(http.StatusForbidden)
			w.Write([]byte(`{"errors":["permission denied"]}`))
			return
		}
		path, ok := strings.CutPrefix(r.URL.Path, "/v1/kv/data/")
		secret, found := data[path]
		if r.Method != http.MethodGet || !ok || !found {
			w.WriteHeader(http.StatusNotFound)
			w.Write([]byte(`{"errors":[]}`))
			return
		}
		json.NewEncoder(w).Encode(map[string]any{
			"data": map[string]any{"data": secret, "metadata": map[string]any{"version": 3}},
		})
	}))
	t.Cleanup(srv.Close)
	return srv
}

func newSource(t *testing.T, srv *httptest.Server, token string) *Source {
	t.Helper()
	file := filepath.Join(t.TempDir(), "token")
	os.WriteFile(file, []byte(token+"\n"), 0o600)
	return &Source{Address: srv.URL, Mount: "kv", TokenFile: file, Client: srv.Client()}
}

func TestFetchReadsKVv2(t *testing.T) {
	srv := fakeVault(t, map[string]map[string]any{"db/orders": {"username": "app", "password": canary}})
	cache := credsource.NewCache(newSource(t, srv, testToken), time.Minute)
	got, err := cache.Fetch(context.Background(), "db/orders")
	if err != nil {
		t.Fatal(err)
	}
	if want := (credsource.Credentials{Username: "app", Password: canary}); !got.Equal(want) {
		t.Errorf("got %v, want %v", got, want)
	}
}

func TestFetchErrors(t *testing.T) {
	srv := fakeVault(t, map[string]map[string]any{
		"bad/type":  {"password": 5},
		"bad/key":   {"pasword": canary},
		"bad/empty": {},
	})
	for _, tc := range []struct {
		name, id, token string
		is              error
		want            string
	}{
		{"not found", "db/missing", testToken, credsource.ErrNotFound, "secret not found"},
		{"wrong token", "db/orders", "wrong", ErrPermissionDenied, "rejected the token"},
		{"not a string", "bad/type", testToken, nil, `key "password" must be a string`},
		{"unknown key", "bad/key", testToken, nil, `unknown key "pasword"`},
		{"empty", "bad/empty", testToken, nil, "none of username"},
		{"dot dot", "../sys", testToken, nil, "invalid secret path"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			_, err := newSource(t, srv, tc.token).Fetch(context.Background(), tc.id)
			if err == nil || !strings.Contains(err.Error(), tc.want) {
				t.Fatalf("Fetch = %v, want an error containing %q", err, tc.want)
			}
			if tc.is != nil && !errors.Is(err, tc.is) {
				t.Errorf("error %q does not wrap %v", err, tc.is)
			}
			if strings.Contains(err.Error(), canary) || strings.Contains(err.Error(), testToken) {
				t.Errorf("error contains a secret: %q", err)
			}
		})
	}
}
