package main

import (
	"context"
	"errors"
	"fmt"
	"net/http"

	"os/exec"
	"path/filepath"
	"strings"
	"syscall"
	"testing"
	"time"

	"github.com/knoxcall/dbproxy/internal/dbtest"
)

// buildAgent builds the agent binary once per test into a temp dir.
func buildAgent(t *testing.T) string {
	t.Helper()
	bin := filepath.Join(t.TempDir(), "agent")
	out, err := exec.Command("go", "build", "-o", bin, ".").CombinedOutput()
	if err != nil {
		t.Fatalf("go build: %v\n%s", err, out)
	}
	return bin
}

// agentProcess is the built agent running as a child process.
type agentProcess struct {
	cmd    *exec.Cmd
	logs   *dbtest.LogBuffer
	exited chan error // receives the result of cmd.Wait once
}

// startAgentProcess runs the built agent on config as a child process.
func startAgentProcess(t *testing.T, bin, config string) (*agentProcess, string) {
	t.Helper()
	dir := t.TempDir()
	dbtest.ReplaceFile(t, filepath.Join(dir, "secrets.yaml"), fmt.Sprintf("secrets:\n  sec_orders: {username: app, password: %q}\n", canary))
	path := filepath.Join(dir, "agent.yaml")
	dbtest.ReplaceFile(t, path, config)
	logs := &dbtest.LogBuffer{}
	cmd := exec.Command(bin, "-config", path)
	cmd.Stdout, cmd.Stderr = logs, logs
	if err := cmd.Start(); err != nil {
		t.Fatal(err)
	}
	p := &agentProcess{cmd: cmd, logs: logs, exited: make(chan error, 1)}
	go func() { p.exited <- cmd.Wait() }()
	t.Cleanup(func() {
		select {
		case <-p.exited:
		default:
			cmd.Process.Kill()
			<-p.exited
		}
	})
	return p, path
}

// waitExit waits for the agent process and returns its exit code.
func (p *agentProcess) waitExit(t *testing.T, timeout time.Duration) int {
	t.Helper()
	select {
	case err := <-p.exited:
		p.exited <- err
		var exitErr *exec.ExitError
		if errors.As(err, &exitErr) {
			return exitErr.ExitCode()
		}
		if err != nil {
			t.Fatal(err)
		}
		return 0
	case <-time.After(timeout):
		t.Fatalf("agent did not exit within %v:\n%s", timeout, p.logs)
		return -1
	}
}

func TestSIGTERMDrain(t *testing.T) {
	pg := startPG(t)
	bin := buildAgent(t)
	for _, tc := range []struct {
		name       string
		finishes   bool
		wantExit   int
		wantLogLin string
	}{
		{"sessions finish", true, exitOK, "shutdown complete: all sessions ended"},
		{"session still open", false, exitFailed, "shutdown timeout reached: closing open sessions"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			port, adminPort := dbtest.FreePort(t), dbtest.FreePort(t)
			config := fmt.Sprintf("credentials: {source: file, path: secrets.yaml}\nadmin_address: 127.0.0.1:%d\n"+
				"shutdown_delay: 1s\nshutdown_timeout: 3s\nroutes:\n%s", adminPort, pgRoute("orders", port, pg, "sec_orders", ""))
			p, _ := startAgentProcess(t, bin, config)
			cmd, logs := p.cmd, p.logs
			waitListening(t, &agent{logs: logs, done: make(chan error)}, port)
			conn := pgConnect(t, port)

			// A query that outlives the shutdown delay keeps running through SIGTERM.
			queryDone := make(chan error, 1)
			go func() {
				_, err := queryInt(conn, "select 1 from pg_sleep(1.5)")
				queryDone <- err
			}()
			time.Sleep(200 * time.Millisecond)
			start := time.Now()
			if err := cmd.Process.Signal(syscall.SIGTERM); err != nil {
				t.Fatal(err)
			}

			// During the delay the agent is not ready but still accepts.
			admin := fmt.Sprintf("http://127.0.0.1:%d", adminPort)
			waitStatus(t, admin+"/readyz", http.StatusServiceUnavailable)
			if code, _ := httpGet(t, admin+"/healthz"); code != 200 {
				t.Errorf("healthz during the shutdown delay = %d, want 200", code)
			}
			late := pgConnect(t, port)
			if n, err := queryInt(late, "select 5"); err != nil || n != 5 {
				t.Errorf("query on a session opened during the shutdown delay = %d, %v", n, err)
			}
			late.Close(context.Background())

			if err := <-queryDone; err != nil {
				t.Errorf("query running at SIGTERM: %v", err)
			}
			if tc.finishes {
				conn.Close(context.Background())
			}
			code := p.waitExit(t, 15*time.Second)
			if code != tc.wantExit {
				t.Errorf("exit code = %d, want %d:\n%s", code, tc.wantExit, logs)
			}
			if !strings.Contains(logs.String(), tc.wantLogLin) {
				t.Errorf("log lacks %q:\n%s", tc.wantLogLin, logs)
			}
			if d := time.Since(start); d < time.Second {
				t.Errorf("agent exited %v after SIGTERM, before the 1s shutdown delay", d)
			}
			if !tc.finishes {
				if _, err := queryInt(conn, "select 1"); err == nil {
					t.Error("session still open after the shutdown timeout, want it closed")
				}
			}
			if strings.Contains(logs.String(), canary) {
				t.Error("the agent log contains the password")
			}
		})
	}
}

// TestSecondSignalExitsAtOnce checks that a second SIGTERM during the shutdown delay ends
// the agent at once, so an operator need not wait for the delay or send SIGKILL.
func TestSecondSignalExitsAtOnce(t *testing.T) {
	bin := buildAgent(t)
	port := dbtest.FreePort(t)
	config := fmt.Sprintf("credentials: {source: file, path: secrets.yaml}\nshutdown_delay: 30s\nroutes:\n"+
		"  - {name: cache, protocol: redis, local_port: %d, upstream_host: 127.0.0.1, upstream_port: %d, committed_secret_id: sec_orders}\n",
		port, dbtest.FreePort(t))
	p, _ := startAgentProcess(t, bin, config)
	waitListening(t, &agent{logs: p.logs, done: make(chan error)}, port)

	if err := p.cmd.Process.Signal(syscall.SIGTERM); err != nil {
		t.Fatal(err)
	}
	waitUntilLogged(t, p.logs, "shutdown requested")
	start := time.Now()
	if err := p.cmd.Process.Signal(syscall.SIGTERM); err != nil {
		t.Fatal(err)
	}
	p.waitExit(t, 5*time.Second)
	if d := time.Since(start); d > 3*time.Second {
		t.Errorf("agent exited %v after the second SIGTERM, want at once", d)
	}
}

// waitUntilLogged waits up to 5s for logs to contain want.
func waitUntilLogged(t *testing.T, logs *dbtest.LogBuffer, want string) {
	t.Helper()
	deadline := time.Now().Add(5 * time.Second)
	for !strings.Contains(logs.String(), want) {
		if time.Now().After(deadline) {
			t.Fatalf("log lacks %q after 5s:\n%s", want, logs)
		}
		time.Sleep(20 * time.Millisecond)
	}
}

func TestSIGHUPReloads(t *testing.T) {
	pg := startPG(t)
	bin := buildAgent(t)
	portA, portB := dbtest.FreePort(t), dbtest.FreePort(t)
	// The file check interval is long, so only SIGHUP can cause the reload.
	head := "credentials: {source: file, path: secrets.yaml}\nconfig_check_interval: 1h\nroutes:\n"
	p, path := startAgentProcess(t, bin, head+pgRoute("a", portA, pg, "sec_orders", ""))
	cmd, logs := p.cmd, p.logs
	waitListening(t, &agent{logs: logs, done: make(chan error)}, portA)

	dbtest.ReplaceFile(t, path, head+pgRoute("a", portA, pg, "sec_orders", "")+pgRoute("b", portB, pg, "sec_orders", ""))
	if err := cmd.Process.Signal(syscall.SIGHUP); err != nil {
		t.Fatal(err)
	}
	waitListening(t, &agent{logs: logs, done: make(chan error)}, portB)
	conn := pgConnect(t, portB)
	if n, err := queryInt(conn, "select 6"); err != nil || n != 6 {
		t.Errorf("query through the route added by SIGHUP = %d, %v", n, err)
	}
	conn.Close(context.Background())
	if !strings.Contains(logs.String(), "trigger=SIGHUP") {
		t.Errorf("log lacks trigger=SIGHUP:\n%s", logs)
	}
	// The credentials section did not change, so the reload line reports no new source.
	if !strings.Contains(logs.String(), "credential_source_changed=false") {
		t.Errorf("log lacks credential_source_changed=false:\n%s", logs)
	}
	cmd.Process.Signal(syscall.SIGTERM)
	if code := p.waitExit(t, 15*time.Second); code != exitOK {
		t.Errorf("exit code = %d, want 0", code)
	}
}

// waitStatus polls url until it returns want, or fails the test after 5s.
func waitStatus(t *testing.T, url string, want int) {
	t.Helper()
	deadline := time.Now().Add(5 * time.Second)
	for {
		code, _ := httpGet(t, url)
		if code == want {
			return
		}
		if time.Now().After(deadline) {
			t.Errorf("GET %s = %d after 5s, want %d", url, code, want)
			return
		}
		time.Sleep(20 * time.Millisecond)
	}
}
