package main

import (
	"errors"
	"fmt"
	"log/slog"
	"os"
	"path/filepath"
	"strings"
	"testing"

	"github.com/knoxcall/dbproxy/credsource"
	"github.com/knoxcall/dbproxy/internal/dbtest"
)

// TestSecretsFileLogsToAgentLog checks that the file source is given the agent's logger,
// for its lines about a secrets file that turned invalid.
func TestSecretsFileLogsToAgentLog(t *testing.T) {
	path := filepath.Join(t.TempDir(), "secrets.yaml")
	if err := os.WriteFile(path, []byte("secrets:\n  s: {username: u, password: p}\n"), 0o600); err != nil {
		t.Fatal(err)
	}
	src, _, err := newSource(credentialsConfig{Source: "file", Path: path})
	if err != nil {
		t.Fatal(err)
	}
	log := slog.New(slog.NewTextHandler(&dbtest.LogBuffer{}, nil))
	newSwitchableSource(&agentConfig{source: src}, log)

	f, ok := src.(*credsource.File)
	if !ok {
		t.Fatalf("source is a %T, want *credsource.File", src)
	}
	if f.Logger != log {
		t.Errorf("the secrets file source logs to %v, want the agent's logger", f.Logger)
	}
}

func TestConfigMaxLogins(t *testing.T) {
	dir := t.TempDir()
	if err := os.WriteFile(filepath.Join(dir, "secrets.yaml"), []byte("secrets:\n  s: {username: u, password: p}\n"), 0o600); err != nil {
		t.Fatal(err)
	}
	path := filepath.Join(dir, "agent.yaml")
	config := "credentials: {source: file, path: secrets.yaml}\nmax_logins: 7\nroutes:\n" +
		"  - {name: orders, protocol: postgres, upstream_host: db, upstream_port: 5432, committed_secret_id: s}\n"
	if err := os.WriteFile(path, []byte(config), 0o600); err != nil {
		t.Fatal(err)
	}
	cfg, err := loadConfig(path)
	if err != nil {
		t.Fatal(err)
	}
	if cfg.maxLogins != 7 {
		t.Errorf("maxLogins = %d, want 7", cfg.maxLogins)
	}
}

// TestConfigExecHelperBesideConfig checks that a helper given as ./name runs from the
// configuration file's directory when the agent is started with -config NAME, and is not
// looked up in PATH, where another program of that name may be.
func TestConfigExecHelperBesideConfig(t *testing.T) {
	dir := t.TempDir()
	helper := "#!/bin/sh\necho '{\"username\": \"u\", \"password\": \"p\"}'\n"
	if err := os.WriteFile(filepath.Join(dir, "helper"), []byte(helper), 0o700); err != nil {
		t.Fatal(err)
	}
	config := "credentials: {source: exec, command: [./helper]}\nroutes:\n" +
		"  - {name: orders, protocol: postgres, upstream_host: db, upstream_port: 5432, committed_secret_id: s}\n"
	if err := os.WriteFile(filepath.Join(dir, "agent.yaml"), []byte(config), 0o600); err != nil {
		t.Fatal(err)
	}
	t.Chdir(dir)

	cfg, err := loadConfig("agent.yaml")
	if err != nil {
		t.Fatal(err)
	}
	creds, err := cfg.source.Fetch(t.Context(), "s")
	if err != nil {
		t.Fatalf("Fetch through the helper beside the config: %v", err)
	}
	if creds.Username != "u" {
		t.Errorf("user = %q, want u", creds.Username)
	}
}

func TestPublicFetchError(t *testing.T) {
	secretBearing := errors.New(`exec source: helper exited 1: stderr "token s.Hidden123"`)
	for _, tc := range []struct {
		name string
		err  error
		want string
	}{
		{"source failure", &routeFetchError{id: "sec_orders", key: "committed_secret_id", err: secretBearing},
			`the credential source failed for secret "sec_orders"; the agent's log has the cause`},
		{"not found", &routeFetchError{id: "sec_cert", key: "tls.client_cert_secret_id",
			err: fmt.Errorf("%w: stderr %q", credsource.ErrNotFound, "s.Hidden123")},
			`secret "sec_cert" not found (add it to the credential source, or fix the route's tls.client_cert_secret_id)`},
		{"other error", secretBearing, "the credential source failed; the agent's log has the cause"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			if got := publicFetchError(tc.err); got != tc.want {
				t.Errorf("publicFetchError = %q, want %q", got, tc.want)
			}
			if full := tc.err.Error(); !strings.Contains(full, "s.Hidden123") {
				t.Errorf("Error() = %q lost the source's message, which the log needs", full)
			}
		})
	}
}
