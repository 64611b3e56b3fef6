// Package vault is a credsource.Source that reads secrets from HashiCorp Vault's KV
// version 2 secrets engine:
//
//	GET {Address}/v1/{Mount}/data/{id}
//	X-Vault-Token: {token}
//
// The secret's data holds the keys of a secrets file entry: username, password,
// certificate, private_key and auth_source. Wrap the source in a credsource.Cache.
package vault

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"net/http"
	"net/url"
	"os"
	"strings"
	"time"

	"github.com/knoxcall/dbproxy/credsource"
)

// maxResponseSize bounds the body read from Vault; a secret with a certificate chain is
// a few KiB.
const maxResponseSize = 1 << 20

// ErrPermissionDenied is returned (wrapped) when Vault rejects the token (403).
var ErrPermissionDenied = errors.New("vault rejected the token")

// Source reads KV v2 secrets. The zero value is not usable: set Address and a token.
type Source struct {
	// Address is Vault's https URL, such as https://vault.internal:8200.
	Address string
	// Mount is the KV v2 mount path. Empty means "secret".
	Mount string
	// TokenFile is a file with the Vault token, read on every fetch so that a renewed
	// token is used at once. Empty means the VAULT_TOKEN variable.
	TokenFile string
	// Client sends the requests. Nil means http.DefaultClient with a 10 s timeout.
	Client *http.Client
}

var _ credsource.Source = (*Source)(nil)

// kvResponse is the part of a KV v2 read response that the source uses.
type kvResponse struct {
	Data struct {
		Data map[string]any `json:"data"`
	} `json:"data"`
}

// Fetch reads the secret id, a path below the mount such as "db/orders".
func (s *Source) Fetch(ctx context.Context, id string) (credsource.Credentials, error) {
	token, err := s.token()
	if err != nil {
		return credsource.Credentials{}, err
	}
	mount := s.Mount
	if mount == "" {
		mount = "secret"
	}
	segments := strings.Split(id, "/")
	for i, seg := range segments {
		if seg == "" || seg == "." || seg == ".." {
			return credsource.Credentials{}, fmt.Errorf("vault: invalid secret path %q", id)
		}
		segments[i] = url.PathEscape(seg)
	}
	target := strings.TrimRight(s.Address, "/") + "/v1/" + url.PathEscape(mount) + "/data/" + strings.Join(segments, "/")
	req, err := http.NewRequestWithContext(ctx, http.MethodGet, target, nil)
	if err != nil {
		return credsource.Credentials{}, fmt.Errorf("vault: %w", err)
	}
	req.Header.Set("X-Vault-Token", token)
	client := s.Client
	if client == nil {
		client = &http.Client{Timeout: 10 * time.Second}
	}
	resp, err := client.Do(req)
	if err != nil {
		return credsource.Credentials{}, fmt.Errorf("vault: secret %q: %w", id, err)
	}
	defer resp.Body.Close()
	body, err := io.ReadAll(io.LimitReader(resp.Body, maxResponseSize))
	defer clear(body)
	switch {
	case resp.StatusCode == http.StatusNotFound:
		return credsource.Credentials{}, fmt.Errorf("vault: secret %q: %w", id, credsource.ErrNotFound)
	case resp.StatusCode == http.StatusForbidden:
		return credsource.Credentials{}, fmt.Errorf("vault: secret %q: %w", id, ErrPermissionDenied)
	case resp.StatusCode != http.StatusOK:
		return credsource.Credentials{}, fmt.Errorf("vault: secret %q: unexpected status %s", id, resp.Status)
	case err != nil:
		return credsource.Credentials{}, fmt.Errorf("vault: secret %q: read response: %w", id, err)
	}
	var kv kvResponse
	if err := json.Unmarshal(body, &kv); err != nil {
		// json errors quote at most a type name and an offset, not the secret's values.
		return credsource.Credentials{}, fmt.Errorf("vault: secret %q: invalid response: %w", id, err)
	}
	return credentials(id, kv.Data.Data)
}

func credentials(id string, data map[string]any) (credsource.Credentials, error) {
	var creds credsource.Credentials
	fields := map[string]*string{"username": &creds.Username, "password": &creds.Password, "auth_source": &creds.AuthSource}
	var cert, key string
	fields["certificate"], fields["private_key"] = &cert, &key
	for name, value := range data {
		dst, ok := fields[name]
		if !ok {
			return credsource.Credentials{}, fmt.Errorf("vault: secret %q: unknown key %q", id, name)
		}
		text, ok := value.(string)
		if !ok {
			return credsource.Credentials{}, fmt.Errorf("vault: secret %q: key %q must be a string", id, name)
		}
		*dst = text
	}
	if cert != "" {
		creds.Certificate, creds.PrivateKey = []byte(cert), []byte(key)
	}
	if creds.Username == "" && creds.Password == "" && cert == "" {
		return credsource.Credentials{}, fmt.Errorf("vault: secret %q: none of username, password and certificate is set", id)
	}
	return creds, nil
}

func (s *Source) token() (string, error) {
	if s.TokenFile == "" {
		if t := strings.TrimSpace(os.Getenv("VAULT_TOKEN")); t != "" {
			return t, nil
		}
		return "", errors.New("vault: no token: set TokenFile or VAULT_TOKEN")
	}
	data, err := os.ReadFile(s.TokenFile)
	if err != nil {
		return "", fmt.Errorf("vault: token file: %w", err)
	}
	return strings.TrimSpace(string(data)), nil
}
