package credsource

import (
	"context"
	"fmt"
	"log/slog"
	"os"
	"path/filepath"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/knoxcall/dbproxy/internal/dbtest"
)

// fetchResult is the expected outcome of fetching one id: a password, or an error that
// contains every string in errContains.
type fetchResult struct {
	password    string
	errContains []string
}

// fileChange is one version of the secrets file and what fetches return after it.
type fileChange struct {
	data string
	want map[string]fetchResult
	// errorLogs is the number of error lines this change must log.
	errorLogs int
	// infoLog, if set, is a message that this change must log at info level.
	infoLog string
}

// The ids of the secrets in the tests below. Every Fetch error is checked to name none of
// them except the one requested.
var testSecretIDs = []string{"sec_orders", "sec_pg", "sec_cache"}

func served(password string) fetchResult { return fetchResult{password: password} }

func failed(contains ...string) fetchResult { return fetchResult{errContains: contains} }

func TestFileInvalidChanges(t *testing.T) {
	const (
		goodYAML = "secrets:\n" +
			"  sec_orders: {username: app, password: orders-1}\n" +
			"  sec_pg: {username: app, password: pg-1}\n"
		goodJSON = `{"secrets": {"sec_orders": {"username": "app", "password": "orders-1"},` +
			` "sec_pg": {"username": "app", "password": "pg-1"}}}`
	)
	bothServed := map[string]fetchResult{"sec_orders": served("orders-1"), "sec_pg": served("pg-1")}

	tests := []struct {
		name    string
		file    string
		changes []fileChange
	}{
		{
			name: "yaml syntax error keeps serving",
			file: "secrets.yaml",
			changes: []fileChange{
				{data: goodYAML, want: bothServed},
				{
					data:      "secrets:\n  sec_orders: {password: \"" + canary + "\"\n  sec_pg: x\n",
					want:      bothServed,
					errorLogs: 1,
				},
				{
					data: "secrets:\n  sec_orders: {password: orders-2}\n  sec_pg: {password: pg-2}\n",
					want: map[string]fetchResult{
						"sec_orders": served("orders-2"),
						"sec_pg":     served("pg-2"),
					},
					infoLog: "secrets file valid again",
				},
			},
		},
		{
			name: "yaml wrong top-level type keeps serving",
			file: "secrets.yaml",
			changes: []fileChange{
				{data: goodYAML, want: bothServed},
				{data: "- " + canary + "\n- sec_pg\n", want: bothServed, errorLogs: 1},
				{data: "secrets: [sec_orders, sec_pg]\n", want: bothServed, errorLogs: 1},
				{data: goodYAML, want: bothServed, infoLog: "secrets file valid again"},
			},
		},
		{
			name: "json syntax error keeps serving",
			file: "secrets.json",
			changes: []fileChange{
				{data: goodJSON, want: bothServed},
				{
					data:      `{"secrets": {"sec_orders": {"password": ` + canary + `}}}`,
					want:      bothServed,
					errorLogs: 1,
				},
			},
		},
		{
			name: "never valid fails every id",
			file: "secrets.yaml",
			changes: []fileChange{
				{
					data: "secrets:\n\tsec_orders: {password: " + canary + "}\n",
					want: map[string]fetchResult{
						"sec_orders": failed("secrets.yaml", "invalid YAML"),
						"sec_pg":     failed("secrets.yaml", "invalid YAML"),
					},
					errorLogs: 1,
				},
				{data: goodYAML, want: bothServed, infoLog: "secrets file valid again"},
			},
		},
		{
			name: "yaml secret id at top level",
			file: "secrets.yaml",
			changes: []fileChange{
				{
					data: "secrets:\n  sec_orders: {password: " + canary + "}\nsec_pg: {password: pg-1}\n",
					want: map[string]fetchResult{
						"sec_orders": failed("secrets.yaml", "line 3", "unknown top-level key"),
						"sec_cache":  failed("secrets.yaml", "line 3", "unknown top-level key"),
					},
					errorLogs: 1,
				},
			},
		},
		{
			name: "yaml bad entry fails only its id",
			file: "secrets.yaml",
			changes: []fileChange{
				{
					data: "secrets:\n" +
						"  sec_orders: {username: app, password: orders-1}\n" +
						"  sec_pg: " + canary + "\n" +
						"  sec_cache: {password: cache-1}\n",
					want: map[string]fetchResult{
						"sec_orders": served("orders-1"),
						"sec_pg":     failed("secrets.yaml", `secret "sec_pg"`, "line 3", "mapping"),
						"sec_cache":  served("cache-1"),
					},
					errorLogs: 1,
				},
				{
					data:    goodYAML,
					want:    bothServed,
					infoLog: "secret valid again",
				},
			},
		},
		{
			name: "yaml bad entry keeps its last value",
			file: "secrets.yaml",
			changes: []fileChange{
				{data: goodYAML, want: bothServed},
				{
					data: "secrets:\n" +
						"  sec_orders: {username: app, password: orders-2}\n" +
						"  sec_pg: {username: app, pasword: " + canary + "}\n",
					want: map[string]fetchResult{
						"sec_orders": served("orders-2"),
						"sec_pg":     served("pg-1"),
					},
					errorLogs: 1,
				},
				{
					// Still invalid in a later change: the value from two changes back stays.
					data: "secrets:\n" +
						"  sec_orders: {username: app, password: orders-3}\n" +
						"  sec_pg: {username: app, certificate: x}\n" +
						"  sec_cache: {password: [" + canary + "]}\n",
					want: map[string]fetchResult{
						"sec_orders": served("orders-3"),
						"sec_pg":     served("pg-1"),
						"sec_cache":  failed(`secret "sec_cache"`, "line 4", `"password"`, "string"),
					},
					errorLogs: 2,
				},
				{
					data: "secrets:\n" +
						"  sec_orders: {username: app, password: orders-3}\n" +
						"  sec_pg: {username: app, password: pg-2}\n",
					want: map[string]fetchResult{
						"sec_orders": served("orders-3"),
						"sec_pg":     served("pg-2"),
						"sec_cache":  failed(`secret "sec_cache"`, "not found"),
					},
					infoLog: "secret valid again",
				},
			},
		},
		{
			name: "yaml duplicate id",
			file: "secrets.yaml",
			changes: []fileChange{
				{data: goodYAML, want: bothServed},
				{
					data: goodYAML + "  sec_pg: {username: app, password: " + canary + "}\n" +
						"  sec_cache: {password: cache-1}\n  sec_cache: {password: cache-2}\n",
					want: map[string]fetchResult{
						"sec_orders": served("orders-1"),
						"sec_pg":     served("pg-1"),
						"sec_cache":  failed(`secret "sec_cache"`, "line 6", "duplicate secret id"),
					},
					errorLogs: 2,
				},
			},
		},
		{
			name: "json bad entries fail only their ids",
			file: "secrets.json",
			changes: []fileChange{
				{data: goodJSON, want: bothServed},
				{
					data: "{\"secrets\": {\n" +
						`"sec_pg": {"username": "app", "password": {"nested": ["` + canary + `"]}},` + "\n" +
						`"": {"password": "x"},` + "\n" +
						`"sec_cache": ["` + canary + `"],` + "\n" +
						`"sec_orders": {"username": "app", "password": "orders-2"}` + "\n}}",
					want: map[string]fetchResult{
						"sec_orders": served("orders-2"),
						"sec_pg":     served("pg-1"),
						"sec_cache":  failed("secrets.json", `secret "sec_cache"`, "line 4", "object"),
					},
					errorLogs: 3,
				},
			},
		},
		{
			name: "more bad entries than logged",
			file: "secrets.yaml",
			changes: []fileChange{
				{
					data: manyInvalidSecrets(maxLoggedProblems + 5),
					want: map[string]fetchResult{
						"sec_orders": served("orders-1"),
						"sec_pg":     failed(`secret "sec_pg"`, "unknown key"),
					},
					// One line per logged problem, and one with the count of the rest.
					errorLogs: maxLoggedProblems + 1,
				},
			},
		},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			dir := t.TempDir()
			path := filepath.Join(dir, tt.file)
			clock := newFakeClock()
			logs := &logRecorder{}
			src := &File{Path: path, CheckInterval: time.Second, Now: clock.Now, Logger: slog.New(logs)}

			for i, change := range tt.changes {
				dbtest.ReplaceFile(t, path, change.data)
				clock.Advance(time.Second)
				logs.reset()

				// Fetch twice, across a check interval: the second round finds the file
				// unchanged and must not log again.
				for round := range 2 {
					for id, want := range change.want {
						checkFetch(t, src, fmt.Sprintf("change %d round %d", i, round), id, want, dir)
					}
					clock.Advance(time.Second)
				}
				if got := logs.count(slog.LevelError); got != change.errorLogs {
					t.Errorf("change %d: %d error log lines, want %d:\n%s", i, got, change.errorLogs, logs.text())
				}
				if change.infoLog != "" && !strings.Contains(logs.text(), change.infoLog) {
					t.Errorf("change %d: no log line %q in:\n%s", i, change.infoLog, logs.text())
				}
				if strings.Contains(logs.text(), canary) {
					t.Errorf("change %d: the log contains a secret value:\n%s", i, logs.text())
				}
			}
		})
	}
}

// checkFetch fetches id and compares the result with want. A Fetch error must not contain
// a secret value, another secret's id or the file's directory.
func checkFetch(t *testing.T, src *File, step, id string, want fetchResult, dir string) {
	t.Helper()
	creds, err := src.Fetch(t.Context(), id)
	if want.errContains == nil {
		if err != nil {
			t.Errorf("%s: Fetch(%s): %v", step, id, err)
		} else if creds.Password != want.password {
			t.Errorf("%s: Fetch(%s) returned the wrong password (length %d, want %q)",
				step, id, len(creds.Password), want.password)
		}
		return
	}
	if err == nil {
		t.Errorf("%s: Fetch(%s) succeeded, want an error", step, id)
		return
	}
	msg := err.Error()
	for _, s := range want.errContains {
		if !strings.Contains(msg, s) {
			t.Errorf("%s: Fetch(%s) error %q does not contain %q", step, id, msg, s)
		}
	}
	for _, other := range testSecretIDs {
		if other != id && strings.Contains(msg, other) {
			t.Errorf("%s: Fetch(%s) error %q names another secret %q", step, id, msg, other)
		}
	}
	for _, secret := range []string{canary, dir} {
		if strings.Contains(msg, secret) {
			t.Errorf("%s: Fetch(%s) error %q contains %q", step, id, msg, secret)
		}
	}
}

// manyInvalidSecrets returns a YAML secrets file with sec_orders valid and n invalid
// secrets, sec_pg the first of them.
func manyInvalidSecrets(n int) string {
	var b strings.Builder
	b.WriteString("secrets:\n  sec_orders: {password: orders-1}\n  sec_pg: {pasword: " + canary + "}\n")
	for i := 1; i < n; i++ {
		fmt.Fprintf(&b, "  sec_bad_%d: {pasword: %s}\n", i, canary)
	}
	return b.String()
}

func TestFileCheckAfterInvalidChange(t *testing.T) {
	dir := t.TempDir()
	path := writeFile(t, dir, "secrets.yaml", "secrets:\n  sec_pg: {password: pg-1}\n")
	clock := newFakeClock()
	src := &File{Path: path, Now: clock.Now}
	if err := src.Check(); err != nil {
		t.Fatalf("Check on a valid file: %v", err)
	}

	tests := []struct {
		name string
		data string
		want []string
	}{
		{name: "syntax error", data: "secrets: {sec_pg: {password: pg-2}\n", want: []string{path, "invalid YAML"}},
		{name: "bad entry", data: "secrets:\n  sec_pg: {pasword: pg-2}\n", want: []string{path, `secret "sec_pg"`, "line 2"}},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			dbtest.ReplaceFile(t, path, tt.data)
			err := src.Check()
			if err == nil {
				t.Fatal("Check succeeded, want an error")
			}
			for _, want := range tt.want {
				if !strings.Contains(err.Error(), want) {
					t.Errorf("Check error %q does not contain %q", err, want)
				}
			}
			clock.Advance(time.Second)
			checkFetch(t, src, "after Check", "sec_pg", served("pg-1"), dir)
		})
	}
}

func TestFileRemovedAfterValidRead(t *testing.T) {
	dir := t.TempDir()
	path := writeFile(t, dir, "secrets.yaml", "secrets:\n  sec_pg: {password: pg-1}\n")
	clock := newFakeClock()
	logs := &logRecorder{}
	src := &File{Path: path, Now: clock.Now, Logger: slog.New(logs)}
	checkFetch(t, src, "before removal", "sec_pg", served("pg-1"), dir)

	if err := os.Remove(path); err != nil {
		t.Fatal(err)
	}
	for range 2 {
		clock.Advance(time.Second)
		checkFetch(t, src, "after removal", "sec_pg", failed("secrets.yaml", "no such file"), dir)
	}
	if got := logs.count(slog.LevelError); got != 1 {
		t.Errorf("%d error log lines after removal, want 1:\n%s", got, logs.text())
	}
}

// logRecorder is a slog.Handler that keeps every record for inspection.
type logRecorder struct {
	mu      sync.Mutex
	records []slog.Record
}

func (r *logRecorder) Enabled(context.Context, slog.Level) bool { return true }

func (r *logRecorder) Handle(_ context.Context, record slog.Record) error {
	r.mu.Lock()
	defer r.mu.Unlock()
	r.records = append(r.records, record.Clone())
	return nil
}

func (r *logRecorder) WithAttrs([]slog.Attr) slog.Handler { return r }

func (r *logRecorder) WithGroup(string) slog.Handler { return r }

func (r *logRecorder) reset() {
	r.mu.Lock()
	defer r.mu.Unlock()
	r.records = nil
}

func (r *logRecorder) count(level slog.Level) int {
	r.mu.Lock()
	defer r.mu.Unlock()
	n := 0
	for _, record := range r.records {
		if record.Level == level {
			n++
		}
	}
	return n
}

// text returns the records one per line, with their attributes.
func (r *logRecorder) text() string {
	r.mu.Lock()
	defer r.mu.Unlock()
	var b strings.Builder
	for _, record := range r.records {
		fmt.Fprintf(&b, "%s %s", record.Level, record.Message)
		record.Attrs(func(a slog.Attr) bool {
			fmt.Fprintf(&b, " %s=%v", a.Key, a.Value)
			return true
		})
		b.WriteString("\n")
	}
	return b.String()
}
