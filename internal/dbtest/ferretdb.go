package dbtest

import (
	"net"
	"os"
	"os/exec"
	"path/filepath"
	"strconv"
	"syscall"
	"testing"
	"time"
)

// FerretDBEnv names the environment variable with the path of the FerretDB binary. The
// Makefile builds FerretDB with scripts/build-ferretdb.sh and sets it.
const FerretDBEnv = "DBPROXY_FERRETDB"

// FerretDB is a running FerretDB server: a MongoDB-wire server with a SQLite backend that
// listens on 127.0.0.1 with TLS only and requires SCRAM authentication. It has the user app
// (password "secret", SCRAM-SHA-1 and SCRAM-SHA-256 credentials) in the database appdb, so
// clients use authSource=appdb.
type FerretDB struct {
	Host  string
	Port  int
	Dir   string // server directory: data, state, certificates and ferretdb.log
	Certs *Certs
}

// FerretDBOptions change how FerretDB starts.
type FerretDBOptions struct {
	// Args are extra command-line flags.
	Args []string
}

// Addr returns host:port.
func (f *FerretDB) Addr() string { return net.JoinHostPort(f.Host, strconv.Itoa(f.Port)) }

// StartFerretDB starts FerretDB from the binary named by DBPROXY_FERRETDB and waits until it
// accepts TCP connections. The test is skipped (failed under CI) when the variable is unset.
func StartFerretDB(t testing.TB, opts FerretDBOptions) *FerretDB {
	t.Helper()
	bin := os.Getenv(FerretDBEnv)
	if bin == "" {
		Unavailable(t, "%s is not set: build FerretDB with scripts/build-ferretdb.sh and set it to the binary "+
			"(or run `make test`, which does)", FerretDBEnv)
		return nil
	}
	if _, err := os.Stat(bin); err != nil {
		Unavailable(t, "%s=%s: %v (build it with scripts/build-ferretdb.sh)", FerretDBEnv, bin, err)
		return nil
	}

	base := t.TempDir()
	f := &FerretDB{Host: "127.0.0.1", Port: FreePort(t), Dir: filepath.Join(base, "ferretdb"),
		Certs: NewCerts(t, filepath.Join(base, "certs"))}
	for _, d := range []string{"data", "state"} {
		if err := os.MkdirAll(filepath.Join(f.Dir, d), 0o700); err != nil {
			t.Fatal(err)
		}
	}
	logFile, err := os.Create(filepath.Join(f.Dir, "ferretdb.log"))
	if err != nil {
		t.Fatal(err)
	}
	defer logFile.Close()

	// --listen-addr="" turns off the default plaintext listener on 127.0.0.1:27017,
	// --debug-addr=- the HTTP debug listener on 127.0.0.1:8088, and --telemetry=disable with
	// DO_NOT_TRACK=1 the telemetry reports. --test-enable-new-auth turns on SCRAM, without
	// which the SQLite backend accepts any password. The setup user is created only when
	// the database appdb does not exist yet.
	args := []string{
		"--handler=sqlite",
		"--sqlite-url=file:" + filepath.Join(f.Dir, "data") + "/",
		"--state-dir=" + filepath.Join(f.Dir, "state"),
		"--listen-addr=",
		"--listen-tls=" + f.Addr(),
		"--listen-tls-cert-file=" + f.Certs.ServerCert,
		"--listen-tls-key-file=" + f.Certs.ServerKey,
		"--debug-addr=-",
		"--telemetry=disable",
		"--log-level=warn",
		"--test-enable-new-auth",
		"--setup-database=appdb",
		"--setup-username=app",
		"--setup-password=secret",
	}
	cmd := exec.Command(bin, append(args, opts.Args...)...)
	cmd.Env = append(os.Environ(), "DO_NOT_TRACK=1")
	cmd.Stdout, cmd.Stderr = logFile, logFile
	if err := cmd.Start(); err != nil {
		t.Fatalf("start ferretdb: %v", err)
	}
	t.Cleanup(func() {
		StopPID(cmd.Process.Pid, syscall.SIGTERM)
		cmd.Wait()
	})

	deadline := time.Now().Add(15 * time.Second)
	for {
		conn, err := net.DialTimeout("tcp", f.Addr(), time.Second)
		if err == nil {
			conn.Close()
			return f
		}
		if time.Now().After(deadline) {
			log, _ := os.ReadFile(filepath.Join(f.Dir, "ferretdb.log"))
			t.Fatalf("ferretdb did not accept connections on %s within 15 s: %v\n%s", f.Addr(), err, log)
		}
		time.Sleep(50 * time.Millisecond)
	}
}
