package credsource

import (
	"context"
	"errors"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/google/go-cmp/cmp"
)

// writeHelper writes an executable shell script into a temp dir and returns its path.
func writeHelper(t *testing.T, body string) string {
	t.Helper()
	path := filepath.Join(t.TempDir(), "helper.sh")
	if err := os.WriteFile(path, []byte("#!/bin/sh\n"+body), 0o700); err != nil {
		t.Fatal(err)
	}
	return path
}

func TestExecFetchesSecret(t *testing.T) {
	certPEM, keyPEM := testKeyPair(t)
	dir := t.TempDir()
	// The helper prints the file named by its last argument, after checking its fixed one.
	secretJSON := `{"username": "app", "password": "` + canary + `", "certificate": ` + jsonString(certPEM) +
		`, "private_key": ` + jsonString(keyPEM) + `, "auth_source": "admin"}`
	if err := os.WriteFile(filepath.Join(dir, "sec_orders"), []byte(secretJSON), 0o600); err != nil {
		t.Fatal(err)
	}
	helper := writeHelper(t, `[ "$1" = "--store" ] || { echo "bad first argument: $1" >&2; exit 1; }
exec cat "$2/$3"
`)
	src := &Exec{Command: []string{helper, "--store", dir}}
	got, err := src.Fetch(context.Background(), "sec_orders")
	if err != nil {
		t.Fatal(err)
	}
	want := Credentials{Username: "app", Password: canary, Certificate: certPEM, PrivateKey: keyPEM, AuthSource: "admin"}
	if !got.Equal(want) {
		t.Errorf("got %v, want %v", got, want)
	}
}

func TestExecErrors(t *testing.T) {
	for _, tc := range []struct {
		name    string
		script  string
		timeout time.Duration
		want    []string // substrings of the error
		is      error
	}{
		{
			name:   "exit status and stderr",
			script: "echo 'vault sealed' >&2\necho '{\"password\": \"" + canary + "\"}'\nexit 7\n",
			want:   []string{"exit status 7", `stderr: "vault sealed"`},
		},
		{
			name:   "not found status",
			script: "echo 'no such secret' >&2\nexit 3\n",
			want:   []string{"no such secret"},
			is:     ErrNotFound,
		},
		{
			name:    "timeout",
			script:  "echo waiting >&2\nexec sleep 30\n",
			timeout: 200 * time.Millisecond,
			want:    []string{"deadline exceeded after 200ms", `stderr: "waiting"`},
			is:      context.DeadlineExceeded,
		},
		{
			name:   "killed by signal",
			script: "kill -9 $$\n",
			want:   []string{"signal: killed"},
		},
		{
			name:   "invalid json",
			script: "echo '{\"password\": \"" + canary + "\"'\n",
			want:   []string{"invalid output", "line 2: unexpected end of JSON"},
		},
		{
			name:   "unknown key",
			script: "echo '{\"username\": \"app\", \"pasword\": \"" + canary + "\"}'\n",
			want:   []string{`unknown key "pasword"`},
		},
		{
			name:   "two objects",
			script: "echo '{\"username\": \"app\"} {\"password\": \"" + canary + "\"}'\n",
			want:   []string{"unexpected data after the secret object"},
		},
		{
			name:   "empty output",
			script: "exit 0\n",
			want:   []string{"empty output"},
		},
		{
			name:   "output too large",
			script: "head -c 2000000 /dev/zero\n",
			want:   []string{"output exceeds 1048576 bytes"},
		},
		{
			name:   "long stderr truncated",
			script: "head -c 5000 /dev/zero | tr '\\0' x >&2\nexit 1\n",
			want:   []string{"[truncated]"},
		},
	} {
		t.Run(tc.name, func(t *testing.T) {
			src := &Exec{Command: []string{writeHelper(t, tc.script)}, Timeout: tc.timeout}
			start := time.Now()
			_, err := src.Fetch(context.Background(), "sec_orders")
			if err == nil {
				t.Fatal("Fetch succeeded, want an error")
			}
			for _, want := range tc.want {
				if !strings.Contains(err.Error(), want) {
					t.Errorf("error %q lacks %q", err, want)
				}
			}
			if tc.is != nil && !errors.Is(err, tc.is) {
				t.Errorf("error %q does not wrap %v", err, tc.is)
			}
			if strings.Contains(err.Error(), canary) {
				t.Errorf("error contains the password from stdout: %q", err)
			}
			if len(err.Error()) > 2*maxStderrInError {
				t.Errorf("error is %d bytes long, want at most %d", len(err.Error()), 2*maxStderrInError)
			}
			if d := time.Since(start); d > 5*time.Second {
				t.Errorf("Fetch took %v", d)
			}
		})
	}
}

func TestExecPassesIDAsLastArgument(t *testing.T) {
	helper := writeHelper(t, `printf '{"username": "%s", "password": "%s"}' "$#" "$2"`+"\n")
	for _, id := range []string{"sec_orders", "with space", "-x", "a/b"} {
		src := &Exec{Command: []string{helper, "fixed"}}
		got, err := src.Fetch(context.Background(), id)
		if err != nil {
			t.Fatalf("id %q: %v", id, err)
		}
		if diff := cmp.Diff([]string{"2", id}, []string{got.Username, got.Password}); diff != "" {
			t.Errorf("id %q: argument count and last argument (-want +got):\n%s", id, diff)
		}
	}
}

func TestExecRejectsInvalidInput(t *testing.T) {
	helper := writeHelper(t, "echo '{\"username\": \"u\"}'\n")
	for _, tc := range []struct {
		name string
		src  *Exec
		id   string
		want string
	}{
		{"no command", &Exec{}, "s", "no command configured"},
		{"missing binary", &Exec{Command: []string{"/nonexistent/helper"}}, "s", "run helper /nonexistent/helper"},
		{"empty id", &Exec{Command: []string{helper}}, "", "empty secret id"},
		{"control character", &Exec{Command: []string{helper}}, "a\nb", "control character"},
		{"dot dot", &Exec{Command: []string{helper}}, "..", "invalid secret id"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			_, err := tc.src.Fetch(context.Background(), tc.id)
			if err == nil || !strings.Contains(err.Error(), tc.want) {
				t.Errorf("Fetch = %v, want an error containing %q", err, tc.want)
			}
		})
	}
}

func TestExecHonoursContext(t *testing.T) {
	src := &Exec{Command: []string{writeHelper(t, "exec sleep 30\n")}}
	ctx, cancel := context.WithTimeout(context.Background(), 100*time.Millisecond)
	defer cancel()
	start := time.Now()
	_, err := src.Fetch(ctx, "s")
	if !errors.Is(err, context.DeadlineExceeded) {
		t.Errorf("Fetch = %v, want a deadline error", err)
	}
	if d := time.Since(start); d > 3*time.Second {
		t.Errorf("Fetch returned after %v, want soon after the 100ms deadline", d)
	}
}

func TestExecBehindCache(t *testing.T) {
	dir := t.TempDir()
	counter := filepath.Join(dir, "runs")
	helper := writeHelper(t, `echo run >> "`+counter+`"
echo '{"username": "app", "password": "p"}'
`)
	cache := NewCache(&Exec{Command: []string{helper}}, time.Hour)
	for range 3 {
		if _, err := cache.Fetch(context.Background(), "s"); err != nil {
			t.Fatal(err)
		}
	}
	data, err := os.ReadFile(counter)
	if err != nil {
		t.Fatal(err)
	}
	if n := strings.Count(string(data), "run"); n != 1 {
		t.Errorf("helper ran %d times, want 1", n)
	}
}

// jsonString quotes b as a JSON string.
func jsonString(b []byte) string {
	s := strings.ReplaceAll(string(b), "\n", `\n`)
	return `"` + s + `"`
}
