package main

import (
	"os"
	"os/exec"
	"os/user"
	"path/filepath"
	"regexp"
	"strconv"
	"strings"
	"testing"

	"github.com/knoxcall/dbproxy/internal/dbtest"
)

// The example unit and its README must agree on who owns the files: the unit's User= must
// be a static user that the README creates and gives the secrets file to, with mode 0600.
func TestSystemdExampleOwnership(t *testing.T) {
	unit, err := os.ReadFile("../../examples/systemd/dbproxy-agent.service")
	if err != nil {
		t.Fatal(err)
	}
	readme, err := os.ReadFile("../../examples/systemd/README.md")
	if err != nil {
		t.Fatal(err)
	}

	if strings.Contains(string(unit), "\nDynamicUser=yes") {
		t.Error("unit sets DynamicUser=yes, whose transient user cannot own the secrets file")
	}
	m := regexp.MustCompile(`(?m)^User=(\S+)$`).FindStringSubmatch(string(unit))
	if m == nil {
		t.Fatal("unit sets no User=")
	}
	name := m[1]

	if !regexp.MustCompile(`(?m)^useradd .*\b` + name + `$`).Match(readme) {
		t.Errorf("README does not create the user %s", name)
	}
	secretsLine := regexp.MustCompile(`(?m)^install .*secrets\.yaml.*$`).FindString(string(readme))
	for _, want := range []string{"-o " + name, "-m 0600"} {
		if !strings.Contains(secretsLine, want) {
			t.Errorf("README installs the secrets file with %q, want %q in it", secretsLine, want)
		}
	}

	if _, err := exec.LookPath("systemd-analyze"); err == nil {
		dir := t.TempDir()
		bin := buildAgent(t)
		path := filepath.Join(dir, "dbproxy-agent.service")
		os.WriteFile(path, []byte(strings.ReplaceAll(string(unit), "/usr/local/bin/dbproxy-agent", bin)), 0o644)
		if out, err := exec.Command("systemd-analyze", "verify", path).CombinedOutput(); err != nil {
			t.Errorf("systemd-analyze verify: %v\n%s", err, out)
		}
	}
}

// With the README's owners and modes, the service user reads the configuration through its
// group and the secrets file as its owner, and the agent does not warn about the mode. The
// test uses the user nobody in place of dbproxy.
func TestSystemdExampleFileModes(t *testing.T) {
	dbtest.RequireRoot(t)
	runuser := dbtest.LookPath(t, "runuser")
	service, err := user.Lookup("nobody")
	if err != nil {
		t.Skipf("no user nobody: %v", err)
	}
	uid, _ := strconv.Atoi(service.Uid)
	gid, _ := strconv.Atoi(service.Gid)
	bin := buildAgent(t)
	dir := t.TempDir()
	for _, d := range []string{filepath.Dir(bin), filepath.Dir(filepath.Dir(bin)), filepath.Dir(dir)} {
		os.Chmod(d, 0o755)
	}
	// The layout of /etc/dbproxy in the README: the directory and the configuration owned
	// by root and readable by the service's group, the secrets file owned by the service.
	config := "credentials: {source: file, path: secrets.yaml}\nroutes:\n" +
		"  - {name: orders, protocol: postgres, upstream_host: 127.0.0.1, upstream_port: " +
		strconv.Itoa(dbtest.FreePort(t)) + ", committed_secret_id: sec_orders, dial_timeout: 1s}\n"
	for _, f := range []struct {
		path     string
		data     string
		uid, gid int
		mode     os.FileMode
	}{
		{filepath.Join(dir, "agent.yaml"), config, 0, gid, 0o640},
		{filepath.Join(dir, "secrets.yaml"), "secrets:\n  sec_orders: {username: app, password: " + canary + "}\n", uid, gid, 0o600},
	} {
		if err := os.WriteFile(f.path, []byte(f.data), f.mode); err != nil {
			t.Fatal(err)
		}
		if err := os.Chown(f.path, f.uid, f.gid); err != nil {
			t.Fatal(err)
		}
		os.Chmod(f.path, f.mode)
	}
	os.Chown(dir, 0, gid)
	os.Chmod(dir, 0o750)

	out, err := exec.Command(runuser, "-u", service.Username, "--", bin, "check",
		"-config", filepath.Join(dir, "agent.yaml"), "-log-level", "warn", "-timeout", "5s").CombinedOutput()
	text := string(out)
	if strings.Contains(text, canary) {
		t.Errorf("check output contains the password")
	}
	// The upstream port is closed, so the check fails at the dial, after reading both files.
	if !strings.Contains(text, `dbproxy route "orders": dial upstream`) {
		t.Errorf("check did not get to the upstream dial (err %v):\n%s", err, text)
	}
	for _, unwanted := range []string{"permission denied", "accessible to group or other users", "chmod"} {
		if strings.Contains(strings.ToLower(text), strings.ToLower(unwanted)) {
			t.Errorf("check output contains %q:\n%s", unwanted, text)
		}
	}
}
