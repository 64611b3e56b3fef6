package dbtest

import (
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"strconv"
	"strings"
	"syscall"
	"testing"
	"time"
)

// pgBinDirs are the directories of initdb and pg_ctl in Debian's postgresql packages (not on PATH).
var pgBinDirs = []string{"/usr/lib/postgresql/17/bin", "/usr/lib/postgresql/16/bin", "/usr/lib/postgresql/15/bin"}

// Postgres is a running PostgreSQL server that accepts only TLS with scram-sha-256 on TCP
// and trusts the local Unix socket in Dir, which tests use as the superuser postgres.
type Postgres struct {
	Host    string
	Port    int
	Dir     string // server directory, also the Unix socket directory
	Certs   *Certs
	binDir  string
	dataDir string
}

// PostgresOptions change the server's authentication rules.
type PostgresOptions struct {
	// HBA replaces the hostssl line of pg_hba.conf when not empty.
	HBA string
	// Conf adds lines to postgresql.conf.
	Conf string
}

// StartPostgres starts PostgreSQL on 127.0.0.1 with TLS and creates the role app (password
// "secret") and its database appdb.
func StartPostgres(t testing.TB, opts PostgresOptions) *Postgres {
	t.Helper()
	RequireRoot(t)
	initdb := LookPath(t, "initdb", pgBinDirs...)
	binDir := filepath.Dir(initdb)
	base := SharedDir(t)
	certs := NewCerts(t, filepath.Join(base, "certs"))
	dir := filepath.Join(base, "pg")
	pg := &Postgres{Host: "127.0.0.1", Port: FreePort(t), Dir: dir, Certs: certs, binDir: binDir,
		dataDir: filepath.Join(dir, "data")}
	if err := os.MkdirAll(dir, 0o700); err != nil {
		t.Fatal(err)
	}
	for _, f := range []string{"server.pem", "server.key", "ca.pem"} {
		copyFile(t, filepath.Join(certs.Dir, f), filepath.Join(dir, f), 0o600)
	}
	chownTree(t, dir, "postgres")

	runAs(t, "postgres", initdb, "-D", pg.dataDir, "-U", "postgres", "-A", "trust", "-E", "UTF8", "--locale=C.UTF-8")
	conf := fmt.Sprintf(`
listen_addresses = '127.0.0.1'
port = %d
unix_socket_directories = '%s'
ssl = on
ssl_cert_file = '%s/server.pem'
ssl_key_file = '%s/server.key'
ssl_ca_file = '%s/ca.pem'
password_encryption = 'scram-sha-256'
fsync = off
synchronous_commit = off
full_page_writes = off
max_connections = 200
%s
`, pg.Port, dir, dir, dir, dir, opts.Conf)
	appendFile(t, filepath.Join(pg.dataDir, "postgresql.conf"), conf)
	hba := opts.HBA
	if hba == "" {
		hba = "hostssl all all 127.0.0.1/32 scram-sha-256"
	}
	writeFile(t, filepath.Join(pg.dataDir, "pg_hba.conf"),
		"local all all trust\n"+hba+"\nhostnossl all all 0.0.0.0/0 reject\n")
	chownTree(t, dir, "postgres")

	runAs(t, "postgres", filepath.Join(binDir, "pg_ctl"), "-D", pg.dataDir, "-l", filepath.Join(dir, "server.log"), "-w", "-t", "30", "start")
	t.Cleanup(pg.stop)
	pg.Exec(t, "CREATE ROLE app LOGIN PASSWORD 'secret'")
	pg.Exec(t, "CREATE DATABASE appdb OWNER app")
	return pg
}

// Exec runs SQL as the superuser over the Unix socket and returns psql's unaligned output.
func (pg *Postgres) Exec(t testing.TB, sql string) string {
	t.Helper()
	cmd := exec.Command("runuser", "-u", "postgres", "--", "psql", "-h", pg.Dir, "-p", strconv.Itoa(pg.Port),
		"-U", "postgres", "-d", "postgres", "-v", "ON_ERROR_STOP=1", "-XAtq", "-c", sql)
	cmd.Dir = "/" // the test's directory may be closed to the postgres user
	out, err := cmd.CombinedOutput()
	if err != nil {
		t.Fatalf("psql %q: %v\n%s", sql, err, out)
	}
	return strings.TrimSpace(string(out))
}

// Restart stops and starts the server, keeping its data.
func (pg *Postgres) Restart(t testing.TB) {
	t.Helper()
	pg.stop()
	runAs(t, "postgres", filepath.Join(pg.binDir, "pg_ctl"), "-D", pg.dataDir, "-l", filepath.Join(pg.Dir, "server.log"), "-w", "-t", "30", "start")
}

// Stop stops the server (fast shutdown). Tests use it to make the upstream unreachable.
func (pg *Postgres) Stop() { pg.stop() }

func (pg *Postgres) stop() {
	data, err := os.ReadFile(filepath.Join(pg.dataDir, "postmaster.pid"))
	if err != nil {
		return
	}
	pid, err := strconv.Atoi(strings.TrimSpace(strings.SplitN(string(data), "\n", 2)[0]))
	if err != nil {
		return
	}
	StopPID(pid, syscall.SIGINT) // SIGINT is PostgreSQL's fast shutdown
}

// StopPID sends sig to pid and waits up to 10 s for it to exit, then kills it. A zombie
// counts as exited: orphaned servers may wait a moment for init to reap them.
func StopPID(pid int, sig syscall.Signal) {
	if syscall.Kill(pid, sig) != nil {
		return
	}
	deadline := time.Now().Add(10 * time.Second)
	for time.Now().Before(deadline) {
		if !alive(pid) {
			return
		}
		time.Sleep(20 * time.Millisecond)
	}
	syscall.Kill(pid, syscall.SIGKILL)
}

func alive(pid int) bool {
	data, err := os.ReadFile(fmt.Sprintf("/proc/%d/stat", pid))
	if err != nil {
		return false
	}
	// The state follows the command name in parentheses: "pid (comm) S ...".
	s := string(data)
	i := strings.LastIndexByte(s, ')')
	return i < 0 || i+2 >= len(s) || s[i+2] != 'Z'
}

func runAs(t testing.TB, user, bin string, args ...string) {
	t.Helper()
	cmd := exec.Command("runuser", append([]string{"-u", user, "--", bin}, args...)...)
	cmd.Dir = "/" // the test's directory may be closed to user
	if out, err := cmd.CombinedOutput(); err != nil {
		t.Fatalf("%s %s: %v\n%s", bin, strings.Join(args, " "), err, out)
	}
}

func chownTree(t testing.TB, dir, user string) {
	t.Helper()
	if out, err := exec.Command("chown", "-R", user+":"+user, dir).CombinedOutput(); err != nil {
		t.Fatalf("chown %s: %v\n%s", dir, err, out)
	}
}

func copyFile(t testing.TB, from, to string, mode os.FileMode) {
	t.Helper()
	data, err := os.ReadFile(from)
	if err != nil {
		t.Fatal(err)
	}
	if err := os.WriteFile(to, data, mode); err != nil {
		t.Fatal(err)
	}
}

func writeFile(t testing.TB, name, data string) {
	t.Helper()
	if err := os.WriteFile(name, []byte(data), 0o600); err != nil {
		t.Fatal(err)
	}
}

func appendFile(t testing.TB, name, data string) {
	t.Helper()
	f, err := os.OpenFile(name, os.O_APPEND|os.O_WRONLY, 0)
	if err != nil {
		t.Fatal(err)
	}
	defer f.Close()
	if _, err := f.WriteString(data); err != nil {
		t.Fatal(err)
	}
}
