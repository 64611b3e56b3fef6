package credsource

import (
	"context"
	"crypto/tls"
	"crypto/x509"
	"errors"
	"fmt"
	"io"
	"net/http"
	"net/url"
	"os"
	"strings"
	"sync"
	"time"
	"unicode"
)

const (
	// DefaultHTTPTimeout bounds one request of an HTTP source when Timeout is zero.
	DefaultHTTPTimeout = 10 * time.Second
	// maxErrorBodyInError bounds how much of an error response body an error quotes.
	maxErrorBodyInError = 256
	// maxTokenSize bounds the token file. It is an estimate, chosen well above the size
	// of the bearer tokens, JWTs included, that secrets APIs issue.
	maxTokenSize = 64 << 10
)

// ErrUnauthorized is returned (wrapped) by HTTP when the secrets API rejects the token with
// 401 Unauthorized or 403 Forbidden.
var ErrUnauthorized = errors.New("secrets API rejected the token")

// HTTP is a Source that reads secrets from an HTTPS API:
//
//	GET {BaseURL}/secrets/{id}
//	Authorization: Bearer {token}
//
// The id is path-escaped. A 200 response carries one JSON object with the keys of a
// secrets file entry (username, password, certificate, private_key, auth_source). 404
// becomes an error wrapping ErrNotFound, 401 and 403 one wrapping ErrUnauthorized, and any
// other status an error with the status and the start of the body. Redirects are not
// followed, so the token is only ever sent to BaseURL's host.
//
// The token is read from TokenFile or the variable TokenEnv on every request, so a rotated
// token is used at once. Wrap HTTP in a Cache.
type HTTP struct {
	// BaseURL is the API's https URL, with an optional path prefix. Required.
	BaseURL string
	// TokenFile is a file that contains the bearer token; surrounding white space is
	// ignored. A token with white space or a control character inside, and a file of
	// more than 64 KiB, are errors. Exactly one of TokenFile and TokenEnv is required.
	TokenFile string
	// TokenEnv is the environment variable that contains the bearer token.
	TokenEnv string
	// CAFile is a PEM file of the CAs that may sign the API's certificate. Empty means the
	// system roots.
	CAFile string
	// Timeout bounds one request, body included. Zero means DefaultHTTPTimeout.
	Timeout time.Duration
	// Client sends the requests. Nil means a client built from CAFile, with TLS 1.2 or
	// later. Tests replace it.
	Client *http.Client

	once      sync.Once
	client    *http.Client
	clientErr error
}

var _ Source = (*HTTP)(nil)

// Check validates the configuration and reads the CA file and the token once, so that a
// broken configuration stops the agent at start. It never returns the token.
func (h *HTTP) Check() error {
	if _, err := h.secretURL("check"); err != nil {
		return err
	}
	if _, err := h.httpClient(); err != nil {
		return err
	}
	_, err := h.token()
	return err
}

// Fetch requests the secret id from the API.
func (h *HTTP) Fetch(ctx context.Context, id string) (Credentials, error) {
	if err := checkSecretID(id); err != nil {
		return Credentials{}, fmt.Errorf("http source: %w", err)
	}
	target, err := h.secretURL(id)
	if err != nil {
		return Credentials{}, err
	}
	client, err := h.httpClient()
	if err != nil {
		return Credentials{}, err
	}
	token, err := h.token()
	if err != nil {
		return Credentials{}, err
	}
	timeout := h.Timeout
	if timeout <= 0 {
		timeout = DefaultHTTPTimeout
	}
	ctx, cancel := context.WithTimeout(ctx, timeout)
	defer cancel()

	req, err := http.NewRequestWithContext(ctx, http.MethodGet, target, nil)
	if err != nil {
		return Credentials{}, fmt.Errorf("http source: secret %q: %w", id, err)
	}
	req.Header.Set("Authorization", "Bearer "+token)
	req.Header.Set("Accept", "application/json")
	resp, err := client.Do(req)
	if err != nil {
		// url.Error quotes the URL, which contains the id but no token.
		return Credentials{}, fmt.Errorf("http source: secret %q: %w", id, err)
	}
	defer resp.Body.Close()

	body, readErr := io.ReadAll(io.LimitReader(resp.Body, maxSecretSize+1))
	defer clear(body)
	switch {
	case resp.StatusCode == http.StatusNotFound:
		return Credentials{}, fmt.Errorf("http source: secret %q: %w", id, ErrNotFound)
	case resp.StatusCode == http.StatusUnauthorized || resp.StatusCode == http.StatusForbidden:
		return Credentials{}, fmt.Errorf("http source: secret %q: %s: %w (check the token)", id, resp.Status, ErrUnauthorized)
	case resp.StatusCode != http.StatusOK:
		return Credentials{}, fmt.Errorf("http source: secret %q: unexpected status %s%s", id, resp.Status, quoteBody(body, token))
	case readErr != nil:
		return Credentials{}, fmt.Errorf("http source: secret %q: read response: %w", id, readErr)
	case len(body) > maxSecretSize:
		return Credentials{}, fmt.Errorf("http source: secret %q: response body exceeds %d bytes", id, maxSecretSize)
	}
	creds, err := parseSecretJSON(body)
	if err != nil {
		return Credentials{}, fmt.Errorf("http source: secret %q: invalid response body: %w", id, err)
	}
	return creds, nil
}

// secretURL returns BaseURL/secrets/{id} with the id escaped as one path segment.
func (h *HTTP) secretURL(id string) (string, error) {
	base, err := url.Parse(h.BaseURL)
	if err != nil {
		return "", fmt.Errorf("http source: base_url: %w", err)
	}
	if base.Scheme != "https" || base.Host == "" {
		return "", fmt.Errorf("http source: base_url %q: must be an https URL with a host", h.BaseURL)
	}
	if base.User != nil || base.RawQuery != "" || base.Fragment != "" {
		return "", errors.New("http source: base_url: must not contain user info, a query or a fragment")
	}
	prefix := strings.TrimRight(base.EscapedPath(), "/")
	return base.Scheme + "://" + base.Host + prefix + "/secrets/" + url.PathEscape(id), nil
}

func (h *HTTP) httpClient() (*http.Client, error) {
	if h.Client != nil {
		return h.Client, nil
	}
	h.once.Do(func() {
		tlsConfig := &tls.Config{MinVersion: tls.VersionTLS12}
		if h.CAFile != "" {
			pem, err := os.ReadFile(h.CAFile)
			if err != nil {
				h.clientErr = fmt.Errorf("http source: ca_file: %w", err)
				return
			}
			pool := x509.NewCertPool()
			if !pool.AppendCertsFromPEM(pem) {
				h.clientErr = fmt.Errorf("http source: ca_file %s: no PEM certificates found", h.CAFile)
				return
			}
			tlsConfig.RootCAs = pool
		}
		transport := http.DefaultTransport.(*http.Transport).Clone()
		transport.TLSClientConfig = tlsConfig
		transport.Proxy = nil
		h.client = &http.Client{
			Transport: transport,
			CheckRedirect: func(*http.Request, []*http.Request) error {
				return http.ErrUseLastResponse
			},
		}
	})
	return h.client, h.clientErr
}

func (h *HTTP) token() (string, error) {
	switch {
	case h.TokenFile != "" && h.TokenEnv != "":
		return "", errors.New("http source: set token_file or token_env, not both")
	case h.TokenFile != "":
		data, err := readTokenFile(h.TokenFile)
		if err != nil {
			return "", fmt.Errorf("http source: token_file: %w", err)
		}
		token := strings.TrimSpace(string(data))
		clear(data)
		if token == "" {
			return "", fmt.Errorf("http source: token_file %s is empty", h.TokenFile)
		}
		if err := checkToken(token); err != nil {
			return "", fmt.Errorf("http source: token_file %s: %w", h.TokenFile, err)
		}
		return token, nil
	case h.TokenEnv != "":
		token := strings.TrimSpace(os.Getenv(h.TokenEnv))
		if token == "" {
			return "", fmt.Errorf("http source: token_env: variable %s is not set or empty", h.TokenEnv)
		}
		if err := checkToken(token); err != nil {
			return "", fmt.Errorf("http source: token_env: variable %s: %w", h.TokenEnv, err)
		}
		return token, nil
	}
	return "", errors.New("http source: token_file or token_env is required")
}

// readTokenFile reads at most maxTokenSize bytes of path, so that a token_file that names
// a large file or a device such as /dev/zero fails instead of filling memory.
func readTokenFile(path string) ([]byte, error) {
	file, err := os.Open(path)
	if err != nil {
		return nil, err
	}
	defer file.Close()
	data, err := io.ReadAll(io.LimitReader(file, maxTokenSize+1))
	if err != nil {
		return nil, err
	}
	if len(data) > maxTokenSize {
		clear(data)
		return nil, fmt.Errorf("%s is larger than %d bytes: it does not contain only a token", path, maxTokenSize)
	}
	return data, nil
}

// checkToken rejects a token that cannot be sent as a bearer token: one with white space
// or a control character inside, which a file of several lines or a pasted "Bearer " prefix
// leaves. The error never quotes the token.
func checkToken(token string) error {
	if i := strings.IndexFunc(token, func(r rune) bool { return unicode.IsSpace(r) || unicode.IsControl(r) }); i >= 0 {
		return fmt.Errorf("the token contains white space or a control character at byte %d; "+
			"the file or variable must contain only the token", i)
	}
	return nil
}

// quoteBody formats the start of an error response for an error message. Error bodies of a
// secrets API describe the failure; a 200 body, which holds the secret, is never quoted. A
// server or a proxy in front of it may echo the request headers, so the token is replaced
// before the body is cut, which also keeps a token cut in half out of the message.
func quoteBody(body []byte, token string) string {
	text := strings.ReplaceAll(string(body), token, "[redacted]")
	text = strings.TrimSpace(text[:min(len(text), maxErrorBodyInError)])
	if text == "" {
		return ""
	}
	return fmt.Sprintf(": %q", text)
}
