package credsource

import (
	"context"
	"errors"
	"fmt"
	"io"
	"io/fs"
	"log/slog"
	"os"
	"path/filepath"
	"sync"
	"time"
)

// DefaultFileCheckInterval is how long File trusts its last look at the secrets file before
// it calls stat again.
const DefaultFileCheckInterval = time.Second

// maxFileSize bounds the secrets file that File reads. A file with a few thousand secrets
// and their certificates stays well below it.
const maxFileSize = 16 << 20

// ErrFileMode is wrapped by File.Check when the secrets file can be read or written by its
// group or by other users. Check reports it only when the file is otherwise valid, so a
// caller can log it as a warning and still start.
var ErrFileMode = errors.New("secrets file is accessible to group or other users")

// File is a Source that reads a secrets file in YAML or JSON:
//
//	secrets:
//	  sec_orders:
//	    username: app
//	    password: "..."
//	    certificate: "-----BEGIN CERTIFICATE-----\n..."   # optional, PEM
//	    private_key: "-----BEGIN PRIVATE KEY-----\n..."   # optional, PEM; required with certificate
//	    auth_source: admin                                 # optional, MongoDB only
//
// A file whose name ends in ".json" is parsed as JSON, any other as YAML. Unknown and
// duplicate keys are errors. Parse errors name the file, the line and the key, never a value.
//
// Fetch re-reads the file when its modification time, size or inode changed, so both an
// in-place write and an atomic rename are picked up. It calls stat at most once per
// CheckInterval, and reads the file only when it changed.
//
// A change that breaks the file as a whole (a syntax error, a wrong top-level structure, a
// read error) is logged once and otherwise ignored: Fetch keeps serving the content of the
// last valid read. Only when no read has succeeded yet does Fetch return that error, for
// every id. A file that stat cannot find or access, a removed one for example, fails every
// fetch until it is back, and the next valid read starts afresh.
//
// A change that breaks one secret (a wrong type, an unknown key, a certificate without its
// key) affects only that id. If the id had a valid value before, Fetch keeps returning it and the
// problem is logged, because a typo in a rotation must not take a database offline. An id
// without an earlier value fails with the entry's error. Fetch errors name the file's base
// name and the requested id only, never another id or any value, because they can reach a
// database client.
//
// Create a File with NewFile, or set Path on a zero File. Methods are safe for concurrent use.
type File struct {
	// Path is the secrets file.
	Path string
	// CheckInterval is the minimum time between two stat calls on Path. Zero means
	// DefaultFileCheckInterval.
	CheckInterval time.Duration
	// Now returns the current time. Nil means time.Now. Tests replace it.
	Now func() time.Time
	// Logger receives one line per change that makes the file or a secret invalid, and one
	// when it is valid again. Nil means no logging.
	Logger *slog.Logger

	mu        sync.Mutex
	loaded    bool
	checkedAt time.Time
	identity  fileIdentity
	// secrets are the credentials that Fetch returns: those of the last valid read, plus
	// the last valid value of each secret that is invalid in it. Nil until a read succeeds.
	secrets map[string]Credentials
	// invalid maps each id whose entry in the last valid read is invalid to the entry's
	// error, which names neither the id nor a value.
	invalid map[string]error
	// problems are the invalid entries of the last valid read, for Check.
	problems []secretProblem
	// readErr is the error that made the file unreadable or unparsable at its last change, or
	// nil.
	readErr error
}

var _ Source = (*File)(nil)

// fileIdentity is the stat data that File compares to detect a changed file.
type fileIdentity struct {
	modTime time.Time
	size    int64
	inode   uint64
}

// maxLoggedProblems bounds the log lines for invalid secrets after one change, so that a
// file with thousands of broken entries does not flood the log. A final line gives the rest
// as a count.
const maxLoggedProblems = 10

// NewFile returns a File source that reads path.
func NewFile(path string) *File {
	return &File{Path: path}
}

// Fetch returns the credentials stored under id, re-reading the file first if it changed.
func (f *File) Fetch(ctx context.Context, id string) (Credentials, error) {
	if err := ctx.Err(); err != nil {
		return Credentials{}, err
	}
	f.mu.Lock()
	defer f.mu.Unlock()

	f.refreshLocked()
	name := filepath.Base(f.Path)
	if f.secrets == nil {
		return Credentials{}, fmt.Errorf("secrets file %s: %w", name, f.readErr)
	}
	if creds, ok := f.secrets[id]; ok {
		return creds.clone(), nil
	}
	if err, ok := f.invalid[id]; ok {
		return Credentials{}, fmt.Errorf("secrets file %s: secret %q: %w", name, id, err)
	}
	return Credentials{}, fmt.Errorf("secrets file %s: secret %q: %w", name, id, ErrNotFound)
}

// Invalidate makes the next Fetch check the file for changes at once, ignoring
// CheckInterval. Cache calls it when a session reports rejected credentials.
func (f *File) Invalidate(id string) {
	f.mu.Lock()
	defer f.mu.Unlock()
	f.checkedAt = time.Time{}
}

// Check reads and validates the file now, ignoring CheckInterval, and reports the
// first problem, an invalid secret included, with the file's full path. The agent calls it
// at start so that a broken file stops it early. For a valid file that group or other users
// can access, the error wraps ErrFileMode.
func (f *File) Check() error {
	f.mu.Lock()
	defer f.mu.Unlock()

	f.loaded = false
	f.refreshLocked()
	if f.readErr != nil {
		return fmt.Errorf("secrets file %s: %w", f.Path, f.readErr)
	}
	if len(f.problems) > 0 {
		return fmt.Errorf("secrets file %s: %w", f.Path, f.problems[0])
	}
	info, err := os.Stat(f.Path)
	if err != nil {
		return fmt.Errorf("secrets file: %w", err)
	}
	if mode := info.Mode().Perm(); mode&0o077 != 0 {
		return fmt.Errorf("secrets file %s: mode %#o: %w; run chmod 600 on it", f.Path, mode, ErrFileMode)
	}
	return nil
}

// Poll re-reads the file when CheckInterval has passed and the file changed, and logs a
// change in validity as Fetch does. A caller that serves fetches from a cache calls it
// periodically, so that a broken edit is reported before the cache entries expire.
func (f *File) Poll() {
	f.mu.Lock()
	defer f.mu.Unlock()
	f.refreshLocked()
}

// refreshLocked re-reads the file if it may have changed. f.mu must be held.
func (f *File) refreshLocked() {
	now := f.now()
	interval := f.CheckInterval
	if interval <= 0 {
		interval = DefaultFileCheckInterval
	}
	if f.loaded && now.Sub(f.checkedAt) < interval && !now.Before(f.checkedAt) {
		return
	}
	f.checkedAt = now

	info, err := os.Stat(f.Path)
	if err != nil {
		if f.secrets != nil {
			f.logger().Error("secrets file unavailable, every fetch fails until it is back",
				"path", f.Path, "err", err)
		}
		// Forget the identity so that the file is read again once it reappears.
		f.loaded, f.identity = true, fileIdentity{}
		f.secrets, f.invalid, f.problems = nil, nil, nil
		f.readErr = withoutPath(err)
		return
	}
	identity := identityOf(info)
	if f.loaded && identity == f.identity {
		// Unchanged since the last read, which may have failed: keep its result.
		return
	}
	f.loaded, f.identity = true, identity

	doc, err := f.read(info)
	if err != nil {
		f.readErr = err
		if f.secrets != nil {
			f.logger().Error("secrets file invalid, still serving its last valid content",
				"path", f.Path, "err", err)
		} else {
			f.logger().Error("secrets file invalid, every fetch fails until it is fixed",
				"path", f.Path, "err", err)
		}
		return
	}
	if f.readErr != nil {
		f.logger().Info("secrets file valid again", "path", f.Path)
	}
	f.applyLocked(doc)
}

// applyLocked makes doc the served content, keeping the last valid value of each secret that
// is invalid in doc, and logs what changed in validity. f.mu must be held.
func (f *File) applyLocked(doc secretsDocument) {
	logger := f.logger()
	secrets := doc.secrets
	invalid := make(map[string]error, len(doc.problems))
	for i, problem := range doc.problems {
		last, hasLast := f.secrets[problem.id]
		if hasLast {
			secrets[problem.id] = last
		}
		if problem.id != "" {
			if _, repeated := invalid[problem.id]; !repeated {
				invalid[problem.id] = problem.err
			}
		}

		switch {
		case i == maxLoggedProblems:
			logger.Error("secrets file: more invalid secrets not logged",
				"path", f.Path, "count", len(doc.problems)-maxLoggedProblems)
		case i > maxLoggedProblems:
		case hasLast:
			logger.Error("secrets file: invalid secret, still serving its last valid value",
				"path", f.Path, "secret_id", problem.id, "err", problem.err)
		default:
			logger.Error("secrets file: invalid secret, fetches of it fail until it is fixed",
				"path", f.Path, "secret_id", problem.id, "err", problem.err)
		}
	}
	for id := range f.invalid {
		if _, stillInvalid := invalid[id]; !stillInvalid {
			if _, present := secrets[id]; present {
				logger.Info("secrets file: secret valid again", "path", f.Path, "secret_id", id)
			}
		}
	}
	f.secrets, f.invalid, f.problems, f.readErr = secrets, invalid, doc.problems, nil
}

func (f *File) read(info fs.FileInfo) (secretsDocument, error) {
	if !info.Mode().IsRegular() {
		return secretsDocument{}, errors.New("not a regular file")
	}
	if info.Size() > maxFileSize {
		return secretsDocument{}, fmt.Errorf("size %d exceeds the maximum of %d bytes", info.Size(), maxFileSize)
	}
	// The file may have grown since the stat, and files such as those under /proc report
	// size 0, so the read is bounded too.
	file, err := os.Open(f.Path)
	if err != nil {
		return secretsDocument{}, withoutPath(err)
	}
	defer file.Close()
	data, err := io.ReadAll(io.LimitReader(file, maxFileSize+1))
	if err != nil {
		return secretsDocument{}, withoutPath(err)
	}
	if len(data) > maxFileSize {
		return secretsDocument{}, fmt.Errorf("size exceeds the maximum of %d bytes", maxFileSize)
	}
	return parseSecretsDocument(data, isJSONPath(f.Path))
}

// withoutPath drops the path that an os error repeats, because a Fetch error names only the
// file's base name. errors.Is still matches the underlying error.
func withoutPath(err error) error {
	var pathErr *fs.PathError
	if errors.As(err, &pathErr) {
		return fmt.Errorf("%s: %w", pathErr.Op, pathErr.Err)
	}
	return err
}

func (f *File) logger() *slog.Logger {
	if f.Logger != nil {
		return f.Logger
	}
	return slog.New(slog.DiscardHandler)
}

func (f *File) now() time.Time {
	if f.Now != nil {
		return f.Now()
	}
	return time.Now()
}
