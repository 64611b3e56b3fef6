package credsource

import (
	"context"
	"errors"
	"fmt"
	"io/fs"
	"os"
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
// CheckInterval. While the file is invalid, Fetch returns the parse error for every id.
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

	mu        sync.Mutex
	loaded    bool
	checkedAt time.Time
	identity  fileIdentity
	secrets   map[string]Credentials
	loadErr   error
}

var _ Source = (*File)(nil)

// fileIdentity is the stat data that File compares to detect a changed file.
type fileIdentity struct {
	modTime time.Time
	size    int64
	inode   uint64
}

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

	if err := f.refreshLocked(); err != nil {
		return Credentials{}, err
	}
	creds, ok := f.secrets[id]
	if !ok {
		return Credentials{}, fmt.Errorf("secrets file %s: secret %q: %w", f.Path, id, ErrNotFound)
	}
	return creds.clone(), nil
}

// Invalidate makes the next Fetch check the file for changes at once, ignoring
// CheckInterval. Cache calls it when a session reports rejected credentials.
func (f *File) Invalidate(id string) {
	f.mu.Lock()
	defer f.mu.Unlock()
	f.checkedAt = time.Time{}
}

// Check reads and validates the file now, ignoring CheckInterval, and reports the
// first problem. The agent calls it at start so that a broken file stops it early.
// For a valid file that group or other users can access, the error wraps ErrFileMode.
func (f *File) Check() error {
	f.mu.Lock()
	defer f.mu.Unlock()

	f.loaded = false
	if err := f.refreshLocked(); err != nil {
		return err
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

// refreshLocked re-reads the file if it may have changed. f.mu must be held.
func (f *File) refreshLocked() error {
	now := f.now()
	interval := f.CheckInterval
	if interval <= 0 {
		interval = DefaultFileCheckInterval
	}
	if f.loaded && now.Sub(f.checkedAt) < interval && !now.Before(f.checkedAt) {
		return f.loadErr
	}
	f.checkedAt = now

	info, err := os.Stat(f.Path)
	if err != nil {
		// Forget the identity so that the file is read again once it reappears.
		f.loaded, f.secrets = true, nil
		f.identity = fileIdentity{}
		f.loadErr = fmt.Errorf("secrets file: %w", err)
		return f.loadErr
	}
	identity := identityOf(info)
	if f.loaded && identity == f.identity {
		// Unchanged since the last read, which may have failed: keep its result.
		return f.loadErr
	}

	secrets, err := f.read(info)
	f.loaded, f.identity = true, identity
	if err != nil {
		f.secrets, f.loadErr = nil, err
		return err
	}
	f.secrets, f.loadErr = secrets, nil
	return nil
}

func (f *File) read(info fs.FileInfo) (map[string]Credentials, error) {
	if !info.Mode().IsRegular() {
		return nil, fmt.Errorf("secrets file %s: not a regular file", f.Path)
	}
	if info.Size() > maxFileSize {
		return nil, fmt.Errorf("secrets file %s: size %d exceeds the maximum of %d bytes", f.Path, info.Size(), maxFileSize)
	}
	data, err := os.ReadFile(f.Path)
	if err != nil {
		return nil, fmt.Errorf("secrets file: %w", err)
	}
	secrets, err := parseSecrets(data, isJSONPath(f.Path))
	if err != nil {
		return nil, fmt.Errorf("secrets file %s: %w", f.Path, err)
	}
	return secrets, nil
}

func (f *File) now() time.Time {
	if f.Now != nil {
		return f.Now()
	}
	return time.Now()
}
