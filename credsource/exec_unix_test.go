//go:build unix

package credsource

import (
	"bytes"
	"context"
	"errors"
	"fmt"
	"os"
	"path/filepath"
	"strconv"
	"strings"
	"syscall"
	"testing"
	"time"
)

// startedProcess reads the pid that a helper wrote to path and makes the test end that
// process if it is still running.
func startedProcess(t *testing.T, path string) int {
	t.Helper()
	data, err := os.ReadFile(path)
	if err != nil {
		t.Fatalf("helper did not record its child: %v", err)
	}
	pid, err := strconv.Atoi(strings.TrimSpace(string(data)))
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { syscall.Kill(pid, syscall.SIGKILL) })
	return pid
}

// processExited reports whether pid has ended, waiting up to wait. A zombie counts as
// ended, because the process that reaps orphans may take a moment.
func processExited(pid int, wait time.Duration) bool {
	for deadline := time.Now().Add(wait); ; time.Sleep(20 * time.Millisecond) {
		stat, err := os.ReadFile(fmt.Sprintf("/proc/%d/stat", pid))
		if err != nil {
			return true
		}
		// The state follows the command name, which is in parentheses.
		if i := bytes.LastIndexByte(stat, ')'); i >= 0 && bytes.HasPrefix(stat[i+1:], []byte(" Z")) {
			return true
		}
		if time.Now().After(deadline) {
			return false
		}
	}
}

func TestExecTimeoutKillsChildren(t *testing.T) {
	if _, err := os.Stat("/proc/self/stat"); err != nil {
		t.Skip("needs /proc to watch the helper's child")
	}
	pidFile := filepath.Join(t.TempDir(), "child.pid")
	// sh runs sleep as a child, which inherits the output pipes.
	helper := writeHelper(t, "sleep 30 &\necho $! > "+pidFile+"\nwait\n")
	src := &Exec{Command: []string{helper}, Timeout: 300 * time.Millisecond}
	start := time.Now()
	_, err := src.Fetch(context.Background(), "s")
	if !errors.Is(err, context.DeadlineExceeded) {
		t.Errorf("Fetch = %v, want a deadline error", err)
	}
	if d := time.Since(start); d >= 300*time.Millisecond+execWaitDelay {
		t.Errorf("Fetch returned after %v, want before the pipes' wait delay ran out", d)
	}
	if pid := startedProcess(t, pidFile); !processExited(pid, 3*time.Second) {
		t.Errorf("the helper's child %d still runs after the timeout", pid)
	}
}

func TestExecChildKeepsOutputOpen(t *testing.T) {
	pidFile := filepath.Join(t.TempDir(), "child.pid")
	helper := writeHelper(t, "sleep 30 &\necho $! > "+pidFile+"\necho '{\"username\": \"app\", \"password\": \""+canary+"\"}'\n")
	src := &Exec{Command: []string{helper}, Timeout: 10 * time.Second}
	_, err := src.Fetch(context.Background(), "s")
	startedProcess(t, pidFile)
	if err == nil {
		t.Fatal("Fetch succeeded, want an error")
	}
	for _, want := range []string{"exited with status 0", "kept its stdout or stderr open", "redirect the output"} {
		if !strings.Contains(err.Error(), want) {
			t.Errorf("error %q lacks %q", err, want)
		}
	}
	if strings.Contains(err.Error(), canary) {
		t.Errorf("error contains the password from stdout: %q", err)
	}
}
