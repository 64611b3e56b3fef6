package credsource

import (
	"errors"
	"strings"
	"testing"
)

func TestEnvVariablePrefix(t *testing.T) {
	tests := []struct {
		prefix, id, want string
	}{
		{"", "sec_orders", "DBPROXY_SECRET_SEC_ORDERS_"},
		{"", "sec-orders.v2", "DBPROXY_SECRET_SEC_ORDERS_V2_"},
		{"", "Ab9", "DBPROXY_SECRET_AB9_"},
		{"", "é", "DBPROXY_SECRET____"}, // two UTF-8 bytes, two underscores
		{"APP_", "x", "APP_X_"},
	}
	for _, tt := range tests {
		if got := (Env{Prefix: tt.prefix}).VariablePrefix(tt.id); got != tt.want {
			t.Errorf("Env{Prefix: %q}.VariablePrefix(%q) = %q, want %q", tt.prefix, tt.id, got, tt.want)
		}
	}
}

func TestEnvFetch(t *testing.T) {
	cert, key := testKeyPair(t)
	vars := map[string]string{
		"DBPROXY_SECRET_SEC_ORDERS_USERNAME":    "app",
		"DBPROXY_SECRET_SEC_ORDERS_PASSWORD":    canary,
		"DBPROXY_SECRET_SEC_ORDERS_AUTH_SOURCE": "admin",
		"DBPROXY_SECRET_SEC_CACHE_PASSWORD":     "",
		"DBPROXY_SECRET_SEC_TLS_USERNAME":       "app",
		"DBPROXY_SECRET_SEC_TLS_CERTIFICATE":    string(cert),
		"DBPROXY_SECRET_SEC_TLS_PRIVATE_KEY":    string(key),
		"DBPROXY_SECRET_SEC_HALF_CERTIFICATE":   string(cert),
	}
	env := Env{LookupEnv: func(name string) (string, bool) {
		v, ok := vars[name]
		return v, ok
	}}
	tests := []struct {
		name    string
		id      string
		want    Credentials
		wantErr error
		errText string
	}{
		{name: "all fields", id: "sec_orders", want: Credentials{Username: "app", Password: canary, AuthSource: "admin"}},
		{name: "dash maps to underscore", id: "sec-orders", want: Credentials{Username: "app", Password: canary, AuthSource: "admin"}},
		{name: "certificate", id: "sec_tls", want: Credentials{Username: "app", Certificate: cert, PrivateKey: key}},
		{name: "set but empty", id: "sec_cache", errText: "none of"},
		{name: "certificate without key", id: "sec_half", errText: "private_key"},
		{name: "unset", id: "sec_missing", wantErr: ErrNotFound, errText: "DBPROXY_SECRET_SEC_MISSING_"},
		{name: "empty id", id: "", errText: "empty secret id"},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			got, err := env.Fetch(t.Context(), tt.id)
			if tt.errText == "" {
				if err != nil {
					t.Fatalf("Fetch(%q): %v", tt.id, err)
				}
				if !got.Equal(tt.want) {
					t.Errorf("Fetch(%q) = %v, want %v", tt.id, got, tt.want)
				}
				return
			}
			if err == nil {
				t.Fatalf("Fetch(%q) succeeded, want an error", tt.id)
			}
			if tt.wantErr != nil && !errors.Is(err, tt.wantErr) {
				t.Errorf("error = %v, want it to wrap %v", err, tt.wantErr)
			}
			if !strings.Contains(err.Error(), tt.errText) {
				t.Errorf("error %q does not contain %q", err, tt.errText)
			}
			if strings.Contains(err.Error(), canary) || strings.Contains(err.Error(), "BEGIN") {
				t.Errorf("error echoes a secret value: %q", err)
			}
		})
	}
}

func TestEnvProcessEnvironment(t *testing.T) {
	t.Setenv("TESTPREFIX_A_USERNAME", "app")
	t.Setenv("TESTPREFIX_A_PASSWORD", canary)
	got, err := Env{Prefix: "TESTPREFIX_"}.Fetch(t.Context(), "a")
	if err != nil {
		t.Fatalf("Fetch: %v", err)
	}
	if want := (Credentials{Username: "app", Password: canary}); !got.Equal(want) {
		t.Errorf("Fetch = %v, want %v", got, want)
	}
}
