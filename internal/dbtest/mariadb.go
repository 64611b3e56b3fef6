package dbtest

import (
	"os"
	"os/exec"
	"path/filepath"
	"strconv"
	"strings"
	"syscall"
	"testing"
	"time"
)

// MariaDB is a running MariaDB server on 127.0.0.1 that requires TLS on TCP
// (require_secure_transport). Tests administer it as root over the Unix socket in Dir.
type MariaDB struct {
	Host  string
	Port  int
	Dir   string // server directory, holding the socket, pid file and error log
	Certs *Certs
	// Socket is the Unix socket path. Root logs in there without a password.
	Socket string
}

// MariaDBOptions change how the server starts.
type MariaDBOptions struct {
	// Args are extra mariadbd options, such as "--max-connect-errors=2".
	Args []string
	// NameResolve turns host name resolution back on: the launcher passes
	// --skip-name-resolve unless this is set.
	NameResolve bool
}

// StartMariaDB starts MariaDB with TLS required and creates the database appdb and two users
// with the password "secret" and all privileges on it: native (mysql_native_password) and ed
// (ed25519).
func StartMariaDB(t testing.TB, opts MariaDBOptions) *MariaDB {
	t.Helper()
	RequireRoot(t)
	installDB := LookPath(t, "mariadb-install-db")
	mariadbd := LookPath(t, "mariadbd", "/usr/sbin")
	LookPath(t, "mariadb")
	base := SharedDir(t)
	certs := NewCerts(t, filepath.Join(base, "certs"))
	dir := filepath.Join(base, "mariadb")
	m := &MariaDB{Host: "127.0.0.1", Port: FreePort(t), Dir: dir, Certs: certs,
		Socket: filepath.Join(dir, "mysqld.sock")}
	// A temporary directory of its own: servers started at the same time by other test
	// processes share /tmp, and a leftover temporary table file there failed an install.
	tmp := filepath.Join(dir, "tmp")
	if err := os.MkdirAll(tmp, 0o700); err != nil {
		t.Fatal(err)
	}
	for _, f := range []string{"server.pem", "server.key", "ca.pem"} {
		copyFile(t, filepath.Join(certs.Dir, f), filepath.Join(dir, f), 0o600)
	}
	chownTree(t, dir, "mysql")

	// --no-defaults must come first, or /etc/mysql/*.cnf adds the system socket and port 3306.
	install := exec.Command(installDB, "--no-defaults", "--user=mysql", "--datadir="+filepath.Join(dir, "data"),
		"--auth-root-authentication-method=socket", "--skip-test-db", "--tmpdir="+tmp)
	if out, err := install.CombinedOutput(); err != nil {
		t.Fatalf("mariadb-install-db: %v\n%s", err, out)
	}

	args := []string{"--no-defaults", "--user=mysql", "--datadir=" + filepath.Join(dir, "data"),
		"--port=" + strconv.Itoa(m.Port), "--bind-address=127.0.0.1", "--socket=" + m.Socket, "--tmpdir=" + tmp,
		"--pid-file=" + filepath.Join(dir, "mysqld.pid"), "--log-error=" + filepath.Join(dir, "error.log"),
		"--ssl-cert=" + filepath.Join(dir, "server.pem"), "--ssl-key=" + filepath.Join(dir, "server.key"),
		"--ssl-ca=" + filepath.Join(dir, "ca.pem"), "--require-secure-transport=ON",
		"--plugin-load-add=auth_ed25519",
		"--innodb-buffer-pool-size=64M", "--innodb-log-file-size=16M", "--innodb-flush-log-at-trx-commit=0",
		"--skip-log-bin", "--performance-schema=OFF"}
	if !opts.NameResolve {
		args = append(args, "--skip-name-resolve")
	}
	args = append(args, opts.Args...)
	cmd := exec.Command(mariadbd, args...)
	if err := cmd.Start(); err != nil {
		t.Fatalf("start mariadbd: %v", err)
	}
	exited := make(chan error, 1)
	go func() { exited <- cmd.Wait() }()
	t.Cleanup(func() {
		StopPID(cmd.Process.Pid, syscall.SIGTERM)
		<-exited
	})

	m.waitReady(t, exited)
	m.Exec(t, `CREATE USER 'native'@'%' IDENTIFIED VIA mysql_native_password USING PASSWORD('secret');
CREATE USER 'ed'@'%' IDENTIFIED VIA ed25519 USING PASSWORD('secret');
CREATE DATABASE appdb;
GRANT ALL ON appdb.* TO 'native'@'%';
GRANT ALL ON appdb.* TO 'ed'@'%';`)
	return m
}

// waitReady polls the Unix socket for up to 20 s, failing early if mariadbd exits.
func (m *MariaDB) waitReady(t testing.TB, exited <-chan error) {
	t.Helper()
	deadline := time.Now().Add(20 * time.Second)
	for time.Now().Before(deadline) {
		select {
		case err := <-exited:
			log, _ := os.ReadFile(filepath.Join(m.Dir, "error.log"))
			t.Fatalf("mariadbd exited during start: %v\n%s", err, log)
		default:
		}
		ping := exec.Command("mariadb-admin", "--no-defaults", "--socket="+m.Socket, "-uroot", "ping")
		if ping.Run() == nil {
			return
		}
		time.Sleep(100 * time.Millisecond)
	}
	t.Fatalf("mariadbd not ready on %s after 20 s", m.Socket)
}

// Exec runs SQL as root over the Unix socket and returns the client's tab-separated output
// without column names.
func (m *MariaDB) Exec(t testing.TB, sql string) string {
	t.Helper()
	cmd := exec.Command("mariadb", "--no-defaults", "--socket="+m.Socket, "-uroot", "-N", "-B")
	cmd.Stdin = strings.NewReader(sql)
	out, err := cmd.CombinedOutput()
	if err != nil {
		t.Fatalf("mariadb %q: %v\n%s", sql, err, out)
	}
	return strings.TrimSpace(string(out))
}

// Addr returns host:port of the TCP listener.
func (m *MariaDB) Addr() string { return m.Host + ":" + strconv.Itoa(m.Port) }
