// Package awssm is a credsource.Source that reads secrets from AWS Secrets Manager with the
// GetSecretValue action of its JSON API, signed with Signature Version 4. It needs no AWS
// SDK. The secret's SecretString holds a JSON object with the keys of a secrets file entry
// (username, password, certificate, private_key, auth_source); the JSON that Secrets
// Manager's RDS rotation writes has more keys (engine, host, port), which are ignored.
package awssm

import (
	"bytes"
	"context"
	"crypto/hmac"
	"crypto/sha256"
	"encoding/hex"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"net/http"
	"net/url"
	"strings"
	"time"

	"github.com/knoxcall/dbproxy/credsource"
)

// maxResponseSize bounds the body read from the API; Secrets Manager limits a secret
// value to 64 KiB.
const maxResponseSize = 1 << 20

// Source fetches secrets by name or ARN.
type Source struct {
	// Region is the AWS region, such as eu-west-1. Required.
	Region string
	// Endpoint is the API URL. Empty means https://secretsmanager.{Region}.amazonaws.com.
	Endpoint string
	// AccessKeyID, SecretAccessKey and SessionToken are the AWS credentials; SessionToken
	// is only set for temporary credentials.
	AccessKeyID, SecretAccessKey, SessionToken string
	// Client sends the requests. Nil means a client with a 10 s timeout.
	Client *http.Client
	// Now returns the signing time. Nil means time.Now.
	Now func() time.Time
}

var _ credsource.Source = (*Source)(nil)

// Fetch calls GetSecretValue for id and parses its SecretString.
func (s *Source) Fetch(ctx context.Context, id string) (credsource.Credentials, error) {
	endpoint := s.Endpoint
	if endpoint == "" {
		endpoint = "https://secretsmanager." + s.Region + ".amazonaws.com"
	}
	body, _ := json.Marshal(map[string]string{"SecretId": id})
	req, err := http.NewRequestWithContext(ctx, http.MethodPost, endpoint+"/", bytes.NewReader(body))
	if err != nil {
		return credsource.Credentials{}, fmt.Errorf("secrets manager: %w", err)
	}
	req.Header.Set("Content-Type", "application/x-amz-json-1.1")
	req.Header.Set("X-Amz-Target", "secretsmanager.GetSecretValue")
	now := time.Now
	if s.Now != nil {
		now = s.Now
	}
	s.sign(req, body, now().UTC())

	client := s.Client
	if client == nil {
		client = &http.Client{Timeout: 10 * time.Second}
	}
	resp, err := client.Do(req)
	if err != nil {
		return credsource.Credentials{}, fmt.Errorf("secrets manager: secret %q: %w", id, err)
	}
	defer resp.Body.Close()
	data, err := io.ReadAll(io.LimitReader(resp.Body, maxResponseSize))
	defer clear(data)
	if err != nil {
		return credsource.Credentials{}, fmt.Errorf("secrets manager: secret %q: read response: %w", id, err)
	}
	if resp.StatusCode != http.StatusOK {
		return credsource.Credentials{}, apiError(id, resp.Status, data)
	}
	var out struct {
		SecretString *string
	}
	if err := json.Unmarshal(data, &out); err != nil || out.SecretString == nil {
		return credsource.Credentials{}, fmt.Errorf("secrets manager: secret %q: response has no SecretString", id)
	}
	var fields struct {
		Username    string `json:"username"`
		Password    string `json:"password"`
		Certificate string `json:"certificate"`
		PrivateKey  string `json:"private_key"`
		AuthSource  string `json:"auth_source"`
	}
	if err := json.Unmarshal([]byte(*out.SecretString), &fields); err != nil {
		// Never wrap this error: a syntax error can quote part of the secret.
		return credsource.Credentials{}, fmt.Errorf("secrets manager: secret %q: SecretString is not a JSON object of strings", id)
	}
	creds := credsource.Credentials{Username: fields.Username, Password: fields.Password, AuthSource: fields.AuthSource}
	if fields.Certificate != "" {
		creds.Certificate, creds.PrivateKey = []byte(fields.Certificate), []byte(fields.PrivateKey)
	}
	return creds, nil
}

// apiError maps an error response: its body is {"__type": "...#ResourceNotFoundException", "Message": "..."}.
func apiError(id, status string, body []byte) error {
	var e struct {
		Type    string `json:"__type"`
		Message string `json:"message"`
	}
	json.Unmarshal(body, &e)
	kind := e.Type[strings.LastIndexByte(e.Type, '#')+1:]
	if kind == "ResourceNotFoundException" {
		return fmt.Errorf("secrets manager: secret %q: %w", id, credsource.ErrNotFound)
	}
	return fmt.Errorf("secrets manager: secret %q: %s: %s %s", id, status, kind, e.Message)
}

// sign adds the Signature Version 4 headers for the secretsmanager service: the canonical
// request covers the method, path, host, content type, date, target and body hash.
func (s *Source) sign(req *http.Request, body []byte, t time.Time) {
	amzDate := t.Format("20060102T150405Z")
	day := t.Format("20060102")
	payloadHash := sha256Hex(body)
	req.Header.Set("X-Amz-Date", amzDate)
	if s.SessionToken != "" {
		req.Header.Set("X-Amz-Security-Token", s.SessionToken)
	}

	headers := map[string]string{
		"content-type": req.Header.Get("Content-Type"),
		"host":         req.URL.Host,
		"x-amz-date":   amzDate,
		"x-amz-target": req.Header.Get("X-Amz-Target"),
	}
	names := []string{"content-type", "host", "x-amz-date", "x-amz-target"}
	if s.SessionToken != "" {
		headers["x-amz-security-token"] = s.SessionToken
		names = append(names, "x-amz-security-token")
	}
	var canonicalHeaders strings.Builder
	for _, n := range names {
		canonicalHeaders.WriteString(n + ":" + strings.TrimSpace(headers[n]) + "\n")
	}
	signedHeaders := strings.Join(names, ";")
	path := req.URL.EscapedPath()
	if path == "" {
		path = "/"
	}
	canonicalRequest := strings.Join([]string{req.Method, path, url.Values{}.Encode(),
		canonicalHeaders.String(), signedHeaders, payloadHash}, "\n")

	scope := day + "/" + s.Region + "/secretsmanager/aws4_request"
	stringToSign := "AWS4-HMAC-SHA256\n" + amzDate + "\n" + scope + "\n" + sha256Hex([]byte(canonicalRequest))
	key := hmacSHA256([]byte("AWS4"+s.SecretAccessKey), day)
	for _, part := range []string{s.Region, "secretsmanager", "aws4_request"} {
		key = hmacSHA256(key, part)
	}
	signature := hex.EncodeToString(hmacSHA256(key, stringToSign))
	req.Header.Set("Authorization", "AWS4-HMAC-SHA256 Credential="+s.AccessKeyID+"/"+scope+
		", SignedHeaders="+signedHeaders+", Signature="+signature)
}

func sha256Hex(b []byte) string {
	sum := sha256.Sum256(b)
	return hex.EncodeToString(sum[:])
}

func hmacSHA256(key []byte, data string) []byte {
	m := hmac.New(sha256.New, key)
	m.Write([]byte(data))
	return m.Sum(nil)
}

// errMissingRegion is returned by Check.
var errMissingRegion = errors.New("secrets manager: region is required")

// Check reports a configuration that cannot work.
func (s *Source) Check() error {
	if s.Region == "" {
		return errMissingRegion
	}
	if s.AccessKeyID == "" || s.SecretAccessKey == "" {
		return errors.New("secrets manager: access key id and secret access key are required")
	}
	return nil
}
