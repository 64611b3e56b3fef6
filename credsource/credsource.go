// Package credsource supplies the database credentials that the agent presents upstream.
//
// A Source maps a secret id (the route's committed_secret_id) to Credentials. The stock
// sources read an in-memory map (Static), a YAML or JSON secrets file (File) and environment
// variables (Env). Cache wraps any Source with a TTL and single-flight fetches, and Invalidate
// lets a session drop credentials that the upstream has just rejected, so a rotated password
// is picked up on the next attempt without a restart.
//
// Credentials redact themselves when printed or logged: String, GoString, Format,
// slog.LogValuer and MarshalJSON all show the user name and never the password or the
// private key. One gap remains: fmt prints a Credentials stored in an unexported struct
// field without calling its methods, so never print a struct that holds one that way.
package credsource

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"log/slog"
)

// ErrNotFound is returned (wrapped) by a Source when it has no secret with the requested id.
var ErrNotFound = errors.New("secret not found")

// Source fetches the credentials stored under a secret id.
//
// Fetch must be safe for concurrent use. It returns an error wrapping ErrNotFound when the
// id is unknown. Errors must never contain the secret's values.
type Source interface {
	Fetch(ctx context.Context, id string) (Credentials, error)
}

// Credentials are what the agent presents to the upstream database on behalf of a client.
//
// The zero value has no user name and no password. Protocols that allow it (Redis with only
// a default user password, for example) treat an empty Username as "no user name".
type Credentials struct {
	// Username is the database user (role) name.
	Username string
	// Password is the database password. Never log it.
	Password string
	// Certificate is a PEM client certificate chain for mutual TLS, or nil.
	Certificate []byte
	// PrivateKey is the PEM private key for Certificate, or nil. Never log it.
	PrivateKey []byte
	// AuthSource is the MongoDB authentication database; empty means "admin".
	AuthSource string
}

// String returns a redacted description that names the user but no secret.
func (c Credentials) String() string {
	s := fmt.Sprintf("credentials{user=%q password=%s", c.Username, redacted(c.Password != ""))
	if len(c.Certificate) > 0 || len(c.PrivateKey) > 0 {
		s += " client_certificate=" + redacted(len(c.PrivateKey) > 0)
	}
	return s + "}"
}

// GoString keeps %#v from printing the secret fields.
func (c Credentials) GoString() string { return c.String() }

// Format keeps every fmt verb, %v, %+v and %#v included, on the redacted form.
func (c Credentials) Format(f fmt.State, verb rune) { fmt.Fprint(f, c.String()) }

// LogValue implements slog.LogValuer so that logging Credentials shows only the user name.
func (c Credentials) LogValue() slog.Value {
	return slog.GroupValue(
		slog.String("user", c.Username),
		slog.Bool("has_password", c.Password != ""),
		slog.Bool("has_client_certificate", len(c.Certificate) > 0),
	)
}

// MarshalJSON encodes the same redacted fields as LogValue, so that Credentials nested in a
// value that is logged through a JSON handler or encoded with encoding/json stay redacted.
// Credentials cannot be read back from this form.
func (c Credentials) MarshalJSON() ([]byte, error) {
	return json.Marshal(struct {
		User                 string `json:"user"`
		HasPassword          bool   `json:"has_password"`
		HasClientCertificate bool   `json:"has_client_certificate"`
	}{c.Username, c.Password != "", len(c.Certificate) > 0})
}

// Equal reports whether c and other hold the same values. Sessions use it to tell whether a
// re-fetch after an authentication failure brought new credentials.
func (c Credentials) Equal(other Credentials) bool {
	return c.Username == other.Username &&
		c.Password == other.Password &&
		string(c.Certificate) == string(other.Certificate) &&
		string(c.PrivateKey) == string(other.PrivateKey) &&
		c.AuthSource == other.AuthSource
}

func redacted(set bool) string {
	if set {
		return "[redacted]"
	}
	return "[empty]"
}

// Format methods for the sources that hold credentials in memory, so that printing a source
// with fmt (%v, %+v, %#v) shows its kind and size, never the credentials inside.

// Format prints the number of secrets, never their values.
func (s *Static) Format(f fmt.State, verb rune) {
	s.mu.RLock()
	n := len(s.secrets)
	s.mu.RUnlock()
	fmt.Fprintf(f, "credsource.Static{%d secrets}", n)
}

// Format prints the wrapped source and the number of cached entries, never their values.
func (c *Cache) Format(f fmt.State, verb rune) {
	c.mu.Lock()
	n := len(c.entries)
	c.mu.Unlock()
	fmt.Fprintf(f, "credsource.Cache{source: %v, %d entries}", c.Source, n)
}

// Format prints the file's path and the number of secrets read, never their values.
func (f *File) Format(state fmt.State, verb rune) {
	f.mu.Lock()
	n := len(f.secrets)
	f.mu.Unlock()
	fmt.Fprintf(state, "credsource.File{path: %q, %d secrets}", f.Path, n)
}
