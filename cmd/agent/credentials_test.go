package main

import (
	"log/slog"
	"os"
	"path/filepath"
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
