package credsource

import (
	"errors"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/google/go-cmp/cmp"
)

func TestParseSecretsValid(t *testing.T) {
	tests := []struct {
		name   string
		isJSON bool
		data   string
		want   map[string]Credentials
	}{
		{
			name: "yaml block",
			data: "secrets:\n  sec_orders:\n    username: app\n    password: \"" + canary + "\"\n    auth_source: admin\n",
			want: map[string]Credentials{"sec_orders": {Username: "app", Password: canary, AuthSource: "admin"}},
		},
		{
			name: "yaml flow",
			data: "secrets: {sec_orders: {username: app, password: \"p\"}, sec_cache: {password: r}}\n",
			want: map[string]Credentials{
				"sec_orders": {Username: "app", Password: "p"},
				"sec_cache":  {Password: "r"},
			},
		},
		{
			name: "yaml number-like password keeps its text",
			data: "secrets:\n  a:\n    username: app\n    password: 0012345\n",
			want: map[string]Credentials{"a": {Username: "app", Password: "0012345"}},
		},
		{
			name: "yaml null value is empty",
			data: "secrets:\n  a:\n    username: app\n    password: ~\n",
			want: map[string]Credentials{"a": {Username: "app"}},
		},
		{
			name: "yaml empty secrets",
			data: "secrets: {}\n",
			want: map[string]Credentials{},
		},
		{
			name: "yaml null secrets",
			data: "secrets:\n",
			want: map[string]Credentials{},
		},
		{
			name: "yaml parses json",
			data: `{"secrets": {"a": {"username": "app", "password": "p"}}}`,
			want: map[string]Credentials{"a": {Username: "app", Password: "p"}},
		},
		{
			name:   "json",
			isJSON: true,
			data:   "{\n  \"secrets\": {\n    \"a\": {\"username\": \"app\", \"password\": \"" + canary + "\", \"auth_source\": null}\n  }\n}\n",
			want:   map[string]Credentials{"a": {Username: "app", Password: canary}},
		},
		{
			name:   "json surrogate pair escape",
			isJSON: true,
			data:   `{"secrets": {"a": {"username": "app", "password": "\ud83d\ude00\/x"}}}`,
			want:   map[string]Credentials{"a": {Username: "app", Password: "\U0001F600/x"}},
		},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			got, err := parseSecrets([]byte(tt.data), tt.isJSON)
			if err != nil {
				t.Fatalf("parseSecrets: %v", err)
			}
			if diff := cmp.Diff(tt.want, got, cmp.Comparer(Credentials.Equal)); diff != "" {
				t.Errorf("parseSecrets mismatch (-want +got):\n%s", diff)
			}
		})
	}
}

func TestParseSecretsCertificate(t *testing.T) {
	cert, key := testKeyPair(t)
	yamlText := "secrets:\n  a:\n    username: app\n    certificate: |\n" + indent(string(cert), 6) +
		"    private_key: |\n" + indent(string(key), 6)
	got, err := parseSecrets([]byte(yamlText), false)
	if err != nil {
		t.Fatalf("parseSecrets: %v", err)
	}
	if string(got["a"].Certificate) != string(cert) {
		t.Errorf("certificate was not read back unchanged")
	}
	if string(got["a"].PrivateKey) != string(key) {
		t.Errorf("private key was not read back unchanged")
	}

	_, otherKey := testKeyPair(t)
	mismatched := "secrets:\n  a:\n    certificate: |\n" + indent(string(cert), 6) +
		"    private_key: |\n" + indent(string(otherKey), 6)
	_, err = parseSecrets([]byte(mismatched), false)
	if err == nil || !strings.Contains(err.Error(), "private_key") {
		t.Errorf("mismatched key pair: error = %v, want one naming private_key", err)
	}
	if err != nil && strings.Contains(err.Error(), "PRIVATE KEY") {
		t.Errorf("error quotes key material: %v", err)
	}
}

func indent(s string, n int) string {
	pad := strings.Repeat(" ", n)
	lines := strings.SplitAfter(s, "\n")
	var b strings.Builder
	for _, line := range lines {
		if line != "" {
			b.WriteString(pad + line)
		}
	}
	return b.String()
}

func TestParseSecretsErrors(t *testing.T) {
	tests := []struct {
		name   string
		isJSON bool
		data   string
		want   []string // substrings the error must contain
	}{
		{name: "yaml empty", data: "", want: []string{"empty"}},
		{name: "yaml unknown field", data: "secrets:\n  a:\n    username: app\n    pasword: " + canary + "\n", want: []string{"line 4", `"pasword"`, `secret "a"`}},
		{name: "yaml unknown top-level key", data: "secret:\n  a: {password: p}\n", want: []string{"line 1", "unknown top-level key"}},
		{name: "yaml missing secrets", data: "other: 1\n", want: []string{"line 1", "unknown top-level key"}},
		{name: "yaml duplicate secret", data: "secrets:\n  a: {password: p}\n  a: {password: q}\n", want: []string{"line 3", "duplicate"}},
		{name: "yaml duplicate key", data: "secrets:\n  a:\n    password: " + canary + "\n    password: q\n", want: []string{"line 4", `duplicate key "password"`}},
		{name: "yaml nested value", data: "secrets:\n  a:\n    password: [" + canary + "]\n", want: []string{"line 3", `"password"`, "string"}},
		{name: "yaml secret not mapping", data: "secrets:\n  a: " + canary + "\n", want: []string{"line 2", `secret "a"`}},
		{name: "yaml secrets not mapping", data: "secrets: [a]\n", want: []string{"line 1", "mapping"}},
		{name: "yaml nothing set", data: "secrets:\n  a: {auth_source: admin}\n", want: []string{"line 2", "none of"}},
		{name: "yaml certificate without key", data: "secrets:\n  a: {certificate: x}\n", want: []string{"private_key"}},
		{name: "yaml syntax", data: "secrets:\n  a: {password: \"" + canary + "\"\n  b: x\n", want: []string{"invalid YAML", "line"}},
		{name: "yaml undefined alias", data: "secrets:\n  a: {username: app, password: *" + canary + "}\n", want: []string{"invalid YAML", "undefined anchor", "quote"}},
		{name: "yaml anchor without value", data: "secrets:\n  a:\n    username: app\n    password: &" + canary + "\n", want: []string{"line 4", `"password"`, "anchor", "quote"}},
		{name: "yaml custom tag", data: "secrets:\n  a:\n    username: app\n    password: !" + canary + " rest\n", want: []string{"line 4", `"password"`, "tag", "quote"}},
		{name: "yaml verbatim tag", data: "secrets:\n  a:\n    username: app\n    password: !<" + canary + "> rest\n", want: []string{"line 4", `"password"`, "tag"}},
		{name: "yaml flow key without space", data: "secrets:\n  a: {username: app, password:" + canary + "}\n", want: []string{"line 2", `starts with "password" and ":"`, "space after the colon"}},
		{name: "yaml flow value without key", data: "secrets:\n  a: {username: app, " + canary + "}\n", want: []string{"line 2", "unknown key, not quoted"}},
		{name: "json value as key", isJSON: true, data: `{"secrets": {"a": {"username": "app", "` + canary + `": ""}}}`, want: []string{"unknown key, not quoted"}},
		{name: "yaml tab indentation", data: "secrets:\n\ta: {password: " + canary + "}\n", want: []string{"invalid YAML"}},
		{name: "json syntax", isJSON: true, data: "{\n\"secrets\": {\"a\": {\"password\": " + canary + "}}}", want: []string{"line 2", "invalid JSON syntax"}},
		{name: "json unknown field", isJSON: true, data: "{\"secrets\": {\"a\": {\n\"username\": \"app\",\n\"pasword\": \"" + canary + "\"}}}", want: []string{"line 3", `"pasword"`, `secret "a"`}},
		{name: "json number value", isJSON: true, data: `{"secrets": {"a": {"password": 12345}}}`, want: []string{`"password"`, "string"}},
		{name: "json truncated", isJSON: true, data: `{"secrets": {"a": {"password": "` + canary + `"`, want: []string{"end of JSON"}},
		{name: "json trailing data", isJSON: true, data: `{"secrets": {}} {"x": 1}`, want: []string{"after the top-level object"}},
		{name: "json top-level array", isJSON: true, data: `["` + canary + `"]`, want: []string{"top level"}},
		{name: "json missing secrets", isJSON: true, data: `{}`, want: []string{"missing"}},
		{name: "json duplicate secret", isJSON: true, data: `{"secrets": {"a": {"password": "p"}, "a": {"password": "q"}}}`, want: []string{"duplicate secret"}},
		{name: "json empty id", isJSON: true, data: `{"secrets": {"": {"password": "p"}}}`, want: []string{"non-empty"}},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			_, err := parseSecrets([]byte(tt.data), tt.isJSON)
			if err == nil {
				t.Fatal("parseSecrets succeeded, want an error")
			}
			msg := err.Error()
			for _, want := range tt.want {
				if !strings.Contains(msg, want) {
					t.Errorf("error %q does not contain %q", msg, want)
				}
			}
			if strings.Contains(msg, canary) || strings.Contains(msg, "12345") {
				t.Errorf("error echoes a secret value: %q", msg)
			}
		})
	}
}

func TestFileFetch(t *testing.T) {
	dir := t.TempDir()
	for _, name := range []string{"secrets.yaml", "secrets.json", "secrets"} {
		t.Run(name, func(t *testing.T) {
			path := writeFile(t, dir, name, `{"secrets": {"sec_orders": {"username": "app", "password": "`+canary+`"}}}`)
			src := NewFile(path)
			got, err := src.Fetch(t.Context(), "sec_orders")
			if err != nil {
				t.Fatalf("Fetch: %v", err)
			}
			if want := (Credentials{Username: "app", Password: canary}); !got.Equal(want) {
				t.Errorf("Fetch = %v, want %v", got, want)
			}

			_, err = src.Fetch(t.Context(), "sec_missing")
			if !errors.Is(err, ErrNotFound) {
				t.Fatalf("unknown id: error = %v, want ErrNotFound", err)
			}
			for _, want := range []string{"sec_missing", name} {
				if !strings.Contains(err.Error(), want) {
					t.Errorf("error %q does not name %q", err, want)
				}
			}
			if strings.Contains(err.Error(), dir) {
				t.Errorf("error %q names the file's directory", err)
			}
		})
	}
}

func TestFileRotation(t *testing.T) {
	dir := t.TempDir()
	path := writeFile(t, dir, "secrets.yaml", "secrets:\n  a: {username: app, password: old-one}\n")
	clock := newFakeClock()
	src := &File{Path: path, CheckInterval: time.Second, Now: clock.Now}
	ctx := t.Context()

	fetchPassword := func() string {
		t.Helper()
		creds, err := src.Fetch(ctx, "a")
		if err != nil {
			t.Fatalf("Fetch: %v", err)
		}
		return creds.Password
	}
	if got := fetchPassword(); got != "old-one" {
		t.Fatalf("first fetch: wrong password of length %d", len(got))
	}

	// Atomic replacement by rename: same size and modification time, so only the inode differs.
	tmp := writeFile(t, dir, "secrets.yaml.tmp", "secrets:\n  a: {username: app, password: new-one}\n")
	info, _ := os.Stat(path)
	if err := os.Chtimes(tmp, info.ModTime(), info.ModTime()); err != nil {
		t.Fatal(err)
	}
	if err := os.Rename(tmp, path); err != nil {
		t.Fatal(err)
	}
	if got := fetchPassword(); got != "old-one" {
		t.Errorf("within the check interval: the file was read again")
	}
	clock.Advance(time.Second)
	if got := fetchPassword(); got != "new-one" {
		t.Errorf("after rename: password was not reloaded")
	}

	// In-place write: same inode, new size.
	if err := os.WriteFile(path, []byte("secrets:\n  a: {username: app, password: newest-one}\n"), 0o600); err != nil {
		t.Fatal(err)
	}
	clock.Advance(time.Second)
	if got := fetchPassword(); got != "newest-one" {
		t.Errorf("after in-place write: password was not reloaded")
	}

	// A removed file fails, and its return is picked up.
	if err := os.Remove(path); err != nil {
		t.Fatal(err)
	}
	clock.Advance(time.Second)
	if _, err := src.Fetch(ctx, "a"); err == nil {
		t.Errorf("removed file: Fetch succeeded")
	}
	writeFile(t, dir, "secrets.yaml", "secrets:\n  a: {username: app, password: back}\n")
	clock.Advance(time.Second)
	if got := fetchPassword(); got != "back" {
		t.Errorf("after recreating the file: password was not reloaded")
	}
}

func TestFileCheck(t *testing.T) {
	dir := t.TempDir()
	tests := []struct {
		name     string
		data     string
		mode     os.FileMode
		wantErr  bool
		wantMode bool
	}{
		{name: "valid private file", data: "secrets: {a: {password: p}}\n", mode: 0o600},
		{name: "valid group-readable file", data: "secrets: {a: {password: p}}\n", mode: 0o640, wantErr: true, wantMode: true},
		{name: "invalid file", data: "secrets: {a: {pasword: p}}\n", mode: 0o644, wantErr: true},
	}
	for i, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			path := writeFile(t, dir, "s"+string(rune('0'+i))+".yaml", tt.data)
			if err := os.Chmod(path, tt.mode); err != nil {
				t.Fatal(err)
			}
			err := NewFile(path).Check()
			if (err != nil) != tt.wantErr {
				t.Fatalf("Check() = %v, want error: %v", err, tt.wantErr)
			}
			if got := errors.Is(err, ErrFileMode); got != tt.wantMode {
				t.Errorf("errors.Is(%v, ErrFileMode) = %v, want %v", err, got, tt.wantMode)
			}
		})
	}

	if err := NewFile(filepath.Join(dir, "missing.yaml")).Check(); err == nil {
		t.Errorf("Check on a missing file succeeded")
	}
	if err := NewFile(dir).Check(); err == nil || !strings.Contains(err.Error(), "regular file") {
		t.Errorf("Check on a directory: error = %v, want one about a regular file", err)
	}
}

func FuzzParseSecrets(f *testing.F) {
	f.Add([]byte("secrets:\n  a: {username: app, password: p}\n"), false)
	f.Add([]byte(`{"secrets": {"a": {"username": "app", "password": "p"}}}`), true)
	f.Add([]byte("secrets: &x {a: *x}\n"), false)
	f.Add([]byte("secrets:\n  a: {password: p}\n  b: x\n  a: {password: q}\n"), false)
	f.Add([]byte(`{"secrets": {"a": {"password": {"x": [1]}}, "": {}, "b": {"password": "p"}}}`), true)
	f.Fuzz(func(t *testing.T, data []byte, isJSON bool) {
		doc, docErr := parseSecretsDocument(data, isJSON)
		if docErr == nil {
			for id, creds := range doc.secrets {
				if err := validateSecret(creds); id == "" || err != nil {
					t.Errorf("accepted secret %q that fails validation: %v", id, err)
				}
			}
			for _, problem := range doc.problems {
				if _, ok := doc.secrets[problem.id]; ok {
					t.Errorf("secret %q is both valid and invalid", problem.id)
				}
			}
		}

		secrets, err := parseSecrets(data, isJSON)
		if strictOK := docErr == nil && len(doc.problems) == 0; (err == nil) != strictOK {
			t.Errorf("parseSecrets error = %v, but the document has error %v and %d problems",
				err, docErr, len(doc.problems))
		}
		if err != nil {
			return
		}
		for id, creds := range secrets {
			if id == "" {
				t.Errorf("accepted an empty secret id")
			}
			if err := validateSecret(creds); err != nil {
				t.Errorf("accepted secret %q that fails validation: %v", id, err)
			}
		}
	})
}

func TestFileReadBoundsGrownFile(t *testing.T) {
	path := writeFile(t, t.TempDir(), "secrets.yaml", "secrets: {}\n")
	info, err := os.Stat(path)
	if err != nil {
		t.Fatal(err)
	}
	// The file grows past the limit between the stat and the read.
	grown := "secrets: {}\n#" + strings.Repeat("x", maxFileSize) + "\n"
	if err := os.WriteFile(path, []byte(grown), 0o600); err != nil {
		t.Fatal(err)
	}
	_, err = NewFile(path).read(info)
	if err == nil || !strings.Contains(err.Error(), "exceeds the maximum") {
		t.Errorf("read = %v, want an error about the size", err)
	}
}
