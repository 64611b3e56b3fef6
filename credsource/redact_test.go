package credsource

import (
	"bytes"
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"log/slog"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"
)

func canaryCredentials(t *testing.T) Credentials {
	t.Helper()
	cert, key := testKeyPair(t)
	return Credentials{Username: "app", Password: canary, Certificate: cert, PrivateKey: key, AuthSource: "admin"}
}

// assertRedacted fails if out contains the password or any private key material.
func assertRedacted(t *testing.T, what, out string) {
	t.Helper()
	if strings.Contains(out, canary) {
		t.Errorf("%s contains the password: %s", what, out)
	}
	if strings.Contains(out, "PRIVATE KEY") {
		t.Errorf("%s contains the private key: %s", what, out)
	}
}

func TestCredentialsFmtRedacted(t *testing.T) {
	creds := canaryCredentials(t)
	type wrapper struct {
		Route string
		Creds Credentials
	}
	for _, verb := range []string{"%v", "%+v", "%#v", "%s", "%q", "%x", "%d"} {
		for name, value := range map[string]any{
			"value":   creds,
			"pointer": &creds,
			"nested":  wrapper{Route: "orders", Creds: creds},
			"slice":   []Credentials{creds},
		} {
			out := fmt.Sprintf(verb, value)
			assertRedacted(t, verb+" of "+name, out)
			if !strings.Contains(out, "app") {
				t.Errorf("%s of %s does not show the user name: %s", verb, name, out)
			}
		}
	}
	if got := creds.String(); !strings.Contains(got, "[redacted]") {
		t.Errorf("String() = %q, want it to mark the password as redacted", got)
	}
}

func TestCredentialsSlogRedacted(t *testing.T) {
	creds := canaryCredentials(t)
	handlers := map[string]func(*bytes.Buffer) slog.Handler{
		"text": func(b *bytes.Buffer) slog.Handler {
			return slog.NewTextHandler(b, &slog.HandlerOptions{Level: slog.LevelDebug})
		},
		"json": func(b *bytes.Buffer) slog.Handler {
			return slog.NewJSONHandler(b, &slog.HandlerOptions{Level: slog.LevelDebug})
		},
	}
	for name, newHandler := range handlers {
		t.Run(name, func(t *testing.T) {
			var buf bytes.Buffer
			logger := slog.New(newHandler(&buf))
			logger.Debug("fetched", "creds", creds)
			logger.Info("fetched", slog.Any("creds", &creds))
			logger.Info("nested", slog.Any("session", struct{ Creds Credentials }{creds}))
			logger.With("creds", creds).Warn("with")
			logger.Info("group", slog.Group("g", slog.Any("creds", creds)))
			out := buf.String()
			assertRedacted(t, name+" log", out)
			if got := strings.Count(out, "app"); got < 5 {
				t.Errorf("user name appears %d times in the log, want at least 5:\n%s", got, out)
			}
		})
	}
}

func TestCredentialsJSONRedacted(t *testing.T) {
	out, err := json.Marshal(map[string]Credentials{"a": canaryCredentials(t)})
	if err != nil {
		t.Fatal(err)
	}
	assertRedacted(t, "encoding/json output", string(out))
	if !strings.Contains(string(out), `"has_password":true`) {
		t.Errorf("JSON form %s lacks has_password", out)
	}
}

// TestSourceErrorsRedacted collects the errors of every source for a secret that
// contains the canary and checks that none contains it.
func TestSourceErrorsRedacted(t *testing.T) {
	ctx := t.Context()
	dir := t.TempDir()
	var errs []error
	collect := func(_ Credentials, err error) {
		if err == nil {
			t.Fatalf("expected an error")
		}
		errs = append(errs, err)
	}

	collect(NewStatic(map[string]Credentials{"a": {Password: canary}}).Fetch(ctx, "b"))
	collect(NewFile(writeFile(t, dir, "bad.yaml", "secrets:\n  a: {password: "+canary+", x: "+canary+"}\n")).Fetch(ctx, "a"))
	collect(NewFile(writeFile(t, dir, "bad.json", `{"secrets": {"a": {"password": `+canary+`}}}`)).Fetch(ctx, "a"))
	collect(NewFile(writeFile(t, dir, "ok.yaml", "secrets:\n  a: {password: "+canary+"}\n")).Fetch(ctx, "b"))
	collect(Env{LookupEnv: func(string) (string, bool) { return canary, true }, Prefix: "X_"}.Fetch(ctx, "a"))
	failing := sourceFunc(func(context.Context, string) (Credentials, error) { return Credentials{}, errors.New("down") })
	collect(NewCache(failing, 0).Fetch(ctx, "a"))

	for _, err := range errs {
		for _, verb := range []string{"%v", "%+v", "%#v", "%s"} {
			assertRedacted(t, "error", fmt.Sprintf(verb, err))
		}
	}
}

func TestSourcesDoNotPrintSecrets(t *testing.T) {
	const canary = "Canary-source-pw-31a"
	static := NewStatic(map[string]Credentials{"x": {Username: "u", Password: canary}})
	cache := NewCache(static, time.Minute)
	if _, err := cache.Fetch(context.Background(), "x"); err != nil {
		t.Fatal(err)
	}
	path := filepath.Join(t.TempDir(), "s.yaml")
	if err := os.WriteFile(path, []byte("secrets:\n  x: {username: u, password: "+canary+"}\n"), 0o600); err != nil {
		t.Fatal(err)
	}
	file := NewFile(path)
	if _, err := file.Fetch(context.Background(), "x"); err != nil {
		t.Fatal(err)
	}
	for _, v := range []any{static, cache, file} {
		for _, format := range []string{"%v", "%+v", "%#v", "%s"} {
			if out := fmt.Sprintf(format, v); strings.Contains(out, canary) {
				t.Errorf("Sprintf(%q, %T) shows the password: %s", format, v, out)
			}
		}
	}
}
