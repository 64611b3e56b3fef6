package credsource

import (
	"context"
	"errors"
	"fmt"
	"os"
	"strings"
)

// DefaultEnvPrefix is the prefix Env uses when its Prefix is empty.
const DefaultEnvPrefix = "DBPROXY_SECRET_"

// Env is a Source that reads credentials from environment variables. For a secret id, it
// reads these variables, where NAME is the id upper-cased with every byte other than an ASCII
// letter or digit replaced by "_":
//
//	<Prefix><NAME>_USERNAME
//	<Prefix><NAME>_PASSWORD
//	<Prefix><NAME>_CERTIFICATE   PEM client certificate chain, with real newlines
//	<Prefix><NAME>_PRIVATE_KEY   PEM private key for the certificate
//	<Prefix><NAME>_AUTH_SOURCE   MongoDB authentication database
//
// With the default prefix, the secret "sec_orders" is read from DBPROXY_SECRET_SEC_ORDERS_USERNAME,
// DBPROXY_SECRET_SEC_ORDERS_PASSWORD and so on. Because of the mapping, the ids "sec-orders" and
// "sec_orders" read the same variables. A secret is found when at least one of its variables
// is set, even to an empty value.
//
// The zero value reads the process environment with DefaultEnvPrefix.
type Env struct {
	// Prefix is prepended to every variable name. Empty means DefaultEnvPrefix.
	Prefix string
	// LookupEnv reads one variable. Nil means os.LookupEnv. Tests replace it.
	LookupEnv func(name string) (string, bool)
}

var _ Source = Env{}

// Fetch reads the variables of the secret id. The variables are read on every call, so a
// process that changes its own environment gets the new values at once.
func (e Env) Fetch(ctx context.Context, id string) (Credentials, error) {
	if err := ctx.Err(); err != nil {
		return Credentials{}, err
	}
	if id == "" {
		return Credentials{}, errors.New("environment source: empty secret id")
	}
	base := e.VariablePrefix(id)
	lookup := e.LookupEnv
	if lookup == nil {
		lookup = os.LookupEnv
	}

	var creds Credentials
	found := false
	read := func(suffix string) string {
		value, ok := lookup(base + suffix)
		found = found || ok
		return value
	}
	creds.Username = read("USERNAME")
	creds.Password = read("PASSWORD")
	if cert := read("CERTIFICATE"); cert != "" {
		creds.Certificate = []byte(cert)
	}
	if key := read("PRIVATE_KEY"); key != "" {
		creds.PrivateKey = []byte(key)
	}
	creds.AuthSource = read("AUTH_SOURCE")

	if !found {
		return Credentials{}, fmt.Errorf("environment source: secret %q: no variable %s* is set: %w", id, base, ErrNotFound)
	}
	if err := validateSecret(creds); err != nil {
		return Credentials{}, fmt.Errorf("environment source: secret %q (variables %s*): %w", id, base, err)
	}
	return creds, nil
}

// VariablePrefix returns the common prefix of the variables that hold the secret id,
// for example "DBPROXY_SECRET_SEC_ORDERS_" for "sec_orders".
func (e Env) VariablePrefix(id string) string {
	prefix := e.Prefix
	if prefix == "" {
		prefix = DefaultEnvPrefix
	}
	var b strings.Builder
	b.Grow(len(prefix) + len(id) + 1)
	b.WriteString(prefix)
	for i := 0; i < len(id); i++ {
		c := id[i]
		switch {
		case 'a' <= c && c <= 'z':
			b.WriteByte(c - 'a' + 'A')
		case 'A' <= c && c <= 'Z', '0' <= c && c <= '9':
			b.WriteByte(c)
		default:
			b.WriteByte('_')
		}
	}
	b.WriteByte('_')
	return b.String()
}
