package credsource

import (
	"bytes"
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"os/exec"
	"strings"
	"time"
	"unicode"
	"unicode/utf8"
)

const (
	// DefaultExecTimeout bounds one run of an Exec helper when Timeout is zero.
	DefaultExecTimeout = 10 * time.Second
	// ExitNotFound is the exit status by which an Exec helper reports that it has no secret
	// with the requested id; Fetch then returns an error wrapping ErrNotFound.
	ExitNotFound = 3

	// maxSecretSize bounds the JSON of one secret read from a helper or an HTTP API. A
	// secret with a client certificate chain of a few certificates and its key is below
	// 16 KiB, so 1 MiB leaves room without letting a broken helper exhaust memory.
	maxSecretSize = 1 << 20
	// maxStderrInError bounds how much of a helper's stderr an error quotes.
	maxStderrInError = 1024
	// execWaitDelay is how long Fetch waits for the helper's pipes to close after the
	// helper exits or is killed, in case a child of the helper keeps them open.
	execWaitDelay = time.Second
)

// Exec is a Source that runs a helper program for every fetch. The helper is called as
// Command with the secret id appended as its last argument. It writes the secret as one
// JSON object to its standard output, with the keys of a secrets file entry:
//
//	{"username": "app", "password": "...", "certificate": "-----BEGIN...", "private_key": "...", "auth_source": "admin"}
//
// and exits with status 0. Exit status ExitNotFound means the id is unknown. Any other
// status, a timeout or invalid JSON makes Fetch fail with an error that carries the exit
// status and the start of the helper's stderr, but never its stdout, which may hold a
// secret. The helper inherits the agent's environment and working directory. On Unix it
// runs in a process group of its own, and a timeout kills that whole group.
//
// Wrap Exec in a Cache: it starts a process for every call.
type Exec struct {
	// Command is the helper's path followed by its fixed arguments. Required.
	Command []string
	// Timeout bounds one run of the helper, which is killed when it expires. Zero means
	// DefaultExecTimeout.
	Timeout time.Duration
}

var _ Source = (*Exec)(nil)

// Fetch runs the helper for id and parses the secret it writes to stdout.
func (e *Exec) Fetch(ctx context.Context, id string) (Credentials, error) {
	if len(e.Command) == 0 || e.Command[0] == "" {
		return Credentials{}, errors.New("exec source: no command configured")
	}
	if err := checkSecretID(id); err != nil {
		return Credentials{}, fmt.Errorf("exec source: %w", err)
	}
	timeout := e.Timeout
	if timeout <= 0 {
		timeout = DefaultExecTimeout
	}
	ctx, cancel := context.WithTimeout(ctx, timeout)
	defer cancel()

	args := append(append([]string(nil), e.Command[1:]...), id)
	cmd := exec.CommandContext(ctx, e.Command[0], args...)
	cmd.WaitDelay = execWaitDelay
	killGroupOnCancel(cmd)
	stdout := &limitedBuffer{max: maxSecretSize}
	stderr := &limitedBuffer{max: maxStderrInError}
	cmd.Stdout, cmd.Stderr = stdout, stderr
	// The output is the secret in clear: zero it once parsed. Copies made while the buffer
	// grew are left to the garbage collector.
	defer func() { clear(stdout.buf.Bytes()) }()

	err := cmd.Run()
	helper := e.Command[0]
	switch {
	case ctx.Err() != nil:
		return Credentials{}, fmt.Errorf("exec source: helper %s for secret %q: %w after %v%s",
			helper, id, ctx.Err(), timeout, stderr.quote())
	case stdout.overflow:
		return Credentials{}, fmt.Errorf("exec source: helper %s for secret %q: output exceeds %d bytes",
			helper, id, maxSecretSize)
	case errors.Is(err, exec.ErrWaitDelay):
		return Credentials{}, fmt.Errorf("exec source: helper %s for secret %q exited with status 0, "+
			"but a process it started kept its stdout or stderr open for %v after that; "+
			"redirect the output of background processes in the helper", helper, id, execWaitDelay)
	case err != nil:
		var exitErr *exec.ExitError
		if errors.As(err, &exitErr) && exitErr.ExitCode() == ExitNotFound {
			return Credentials{}, fmt.Errorf("exec source: helper %s: secret %q: %w%s",
				helper, id, ErrNotFound, stderr.quote())
		}
		if errors.As(err, &exitErr) {
			// ExitError's text is "exit status N" or "signal: killed".
			return Credentials{}, fmt.Errorf("exec source: helper %s for secret %q: %v%s",
				helper, id, exitErr, stderr.quote())
		}
		return Credentials{}, fmt.Errorf("exec source: run helper %s: %w", helper, err)
	}

	creds, err := parseSecretJSON(stdout.buf.Bytes())
	if err != nil {
		return Credentials{}, fmt.Errorf("exec source: helper %s for secret %q: invalid output: %w", helper, id, err)
	}
	return creds, nil
}

// checkSecretID rejects ids that cannot name a secret: empty ones, ones with control
// characters, and "." and "..", which a URL path or a file path would resolve.
func checkSecretID(id string) error {
	switch {
	case id == "":
		return errors.New("empty secret id")
	case id == "." || id == "..":
		return fmt.Errorf("invalid secret id %q", id)
	case !utf8.ValidString(id):
		return errors.New("secret id is not valid UTF-8")
	case strings.IndexFunc(id, unicode.IsControl) >= 0:
		return fmt.Errorf("secret id %q contains a control character", id)
	}
	return nil
}

// parseSecretJSON parses one secret object with the keys of a secrets file entry. Like the
// secrets file parser, its errors name keys and lines but never a value.
func parseSecretJSON(data []byte) (Credentials, error) {
	if len(bytes.TrimSpace(data)) == 0 {
		return Credentials{}, errors.New("empty output: expected a JSON object")
	}
	p := &jsonParser{data: data, dec: json.NewDecoder(bytes.NewReader(data))}
	p.dec.UseNumber()
	creds, invalid, err := p.secret()
	if err != nil {
		return Credentials{}, err
	}
	if invalid != nil {
		return Credentials{}, invalid
	}
	if _, err := p.dec.Token(); err != io.EOF {
		return Credentials{}, p.errorf("unexpected data after the secret object")
	}
	return creds, nil
}

// limitedBuffer keeps the first max bytes written to it and drops the rest, marking the
// overflow. It keeps accepting writes so that the helper never blocks on a full pipe.
type limitedBuffer struct {
	buf      bytes.Buffer
	max      int
	overflow bool
}

func (b *limitedBuffer) Write(p []byte) (int, error) {
	n := len(p)
	if room := b.max - b.buf.Len(); n > room {
		b.overflow = true
		p = p[:max(room, 0)]
	}
	b.buf.Write(p)
	return n, nil
}

// quote formats the collected stderr for an error message, or returns "" when the helper
// wrote none.
func (b *limitedBuffer) quote() string {
	text := strings.TrimSpace(b.buf.String())
	if text == "" {
		return ""
	}
	if b.overflow {
		text += " [truncated]"
	}
	return fmt.Sprintf(": stderr: %q", text)
}
