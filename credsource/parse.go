package credsource

import (
	"bytes"
	"crypto/tls"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"path/filepath"
	"strings"

	"go.yaml.in/yaml/v3"
)

// The keys of one secret in a secrets file.
const (
	keyUsername    = "username"
	keyPassword    = "password"
	keyCertificate = "certificate"
	keyPrivateKey  = "private_key"
	keyAuthSource  = "auth_source"
)

func isJSONPath(path string) bool {
	return strings.EqualFold(filepath.Ext(path), ".json")
}

// parseSecrets parses a secrets file. Its errors give line numbers and key names but never
// echo a value, because any value in the file may be a secret.
func parseSecrets(data []byte, isJSON bool) (map[string]Credentials, error) {
	if isJSON {
		return parseJSON(data)
	}
	return parseYAML(data)
}

// setField stores one key of a secret, reporting an unknown key by name.
func setField(creds *Credentials, key, value string) error {
	switch key {
	case keyUsername:
		creds.Username = value
	case keyPassword:
		creds.Password = value
	case keyCertificate:
		creds.Certificate = []byte(value)
	case keyPrivateKey:
		creds.PrivateKey = []byte(value)
	case keyAuthSource:
		creds.AuthSource = value
	default:
		return fmt.Errorf("unknown key %q (expected %s, %s, %s, %s or %s)",
			key, keyUsername, keyPassword, keyCertificate, keyPrivateKey, keyAuthSource)
	}
	return nil
}

// validateSecret checks one parsed secret. The messages name keys only.
func validateSecret(creds Credentials) error {
	hasCert, hasKey := len(creds.Certificate) > 0, len(creds.PrivateKey) > 0
	switch {
	case creds.Username == "" && creds.Password == "" && !hasCert:
		return fmt.Errorf("none of %s, %s and %s is set", keyUsername, keyPassword, keyCertificate)
	case hasCert && !hasKey:
		return fmt.Errorf("%s is set without %s", keyCertificate, keyPrivateKey)
	case hasKey && !hasCert:
		return fmt.Errorf("%s is set without %s", keyPrivateKey, keyCertificate)
	case hasCert:
		// The crypto/tls errors describe the PEM structure and never include key material.
		if _, err := tls.X509KeyPair(creds.Certificate, creds.PrivateKey); err != nil {
			return fmt.Errorf("invalid %s or %s: %w", keyCertificate, keyPrivateKey, err)
		}
	}
	return nil
}

// parseYAML walks the YAML node tree instead of decoding into a struct, so that every
// error carries a line number and none quotes a scalar value.
func parseYAML(data []byte) (map[string]Credentials, error) {
	var doc yaml.Node
	if err := yaml.Unmarshal(data, &doc); err != nil {
		// yaml.v3 syntax errors read "yaml: line N: <problem>" with a fixed problem text.
		return nil, fmt.Errorf("invalid YAML: %s", strings.TrimPrefix(err.Error(), "yaml: "))
	}
	if doc.Kind != yaml.DocumentNode || len(doc.Content) == 0 {
		return nil, errors.New("file is empty: expected a top-level key \"secrets\"")
	}
	root := resolveAlias(doc.Content[0])
	if root.Kind != yaml.MappingNode {
		return nil, fmt.Errorf("line %d: the top level must be a mapping with the key \"secrets\"", root.Line)
	}

	var secretsNode *yaml.Node
	for i := 0; i+1 < len(root.Content); i += 2 {
		key := root.Content[i]
		if key.Value != "secrets" {
			return nil, fmt.Errorf("line %d: unknown top-level key %q (expected \"secrets\")", key.Line, key.Value)
		}
		if secretsNode != nil {
			return nil, fmt.Errorf("line %d: duplicate key \"secrets\"", key.Line)
		}
		secretsNode = resolveAlias(root.Content[i+1])
	}
	if secretsNode == nil {
		return nil, errors.New("missing top-level key \"secrets\"")
	}
	if isYAMLNull(secretsNode) {
		return map[string]Credentials{}, nil
	}
	if secretsNode.Kind != yaml.MappingNode {
		return nil, fmt.Errorf("line %d: \"secrets\" must be a mapping from secret id to secret", secretsNode.Line)
	}

	secrets := make(map[string]Credentials, len(secretsNode.Content)/2)
	for i := 0; i+1 < len(secretsNode.Content); i += 2 {
		idNode, entry := secretsNode.Content[i], resolveAlias(secretsNode.Content[i+1])
		id := idNode.Value
		if idNode.Kind != yaml.ScalarNode || id == "" {
			return nil, fmt.Errorf("line %d: a secret id must be a non-empty string", idNode.Line)
		}
		if _, dup := secrets[id]; dup {
			return nil, fmt.Errorf("line %d: duplicate secret %q", idNode.Line, id)
		}
		creds, err := parseYAMLSecret(entry)
		if err != nil {
			return nil, fmt.Errorf("secret %q: %w", id, err)
		}
		secrets[id] = creds
	}
	return secrets, nil
}

func parseYAMLSecret(entry *yaml.Node) (Credentials, error) {
	if entry.Kind != yaml.MappingNode {
		return Credentials{}, fmt.Errorf("line %d: a secret must be a mapping of %s, %s and other keys", entry.Line, keyUsername, keyPassword)
	}
	var creds Credentials
	seen := make(map[string]bool, len(entry.Content)/2)
	for i := 0; i+1 < len(entry.Content); i += 2 {
		keyNode, valueNode := entry.Content[i], resolveAlias(entry.Content[i+1])
		key := keyNode.Value
		if seen[key] {
			return Credentials{}, fmt.Errorf("line %d: duplicate key %q", keyNode.Line, key)
		}
		seen[key] = true
		if valueNode.Kind != yaml.ScalarNode {
			return Credentials{}, fmt.Errorf("line %d: key %q must have a string value", valueNode.Line, key)
		}
		value := valueNode.Value
		if isYAMLNull(valueNode) {
			value = ""
		}
		if err := setField(&creds, key, value); err != nil {
			return Credentials{}, fmt.Errorf("line %d: %w", keyNode.Line, err)
		}
	}
	if err := validateSecret(creds); err != nil {
		return Credentials{}, fmt.Errorf("line %d: %w", entry.Line, err)
	}
	return creds, nil
}

func resolveAlias(n *yaml.Node) *yaml.Node {
	// An alias may point at another alias; the parser rejects cycles, and the bound keeps a
	// malformed tree from looping.
	for i := 0; i < 16 && n.Kind == yaml.AliasNode && n.Alias != nil; i++ {
		n = n.Alias
	}
	return n
}

func isYAMLNull(n *yaml.Node) bool {
	return n.Kind == yaml.ScalarNode && n.ShortTag() == "!!null"
}

// jsonParser walks a JSON secrets file token by token, which gives the line of each error
// and lets it reject unknown and duplicate keys.
type jsonParser struct {
	data []byte
	dec  *json.Decoder
}

func parseJSON(data []byte) (map[string]Credentials, error) {
	p := &jsonParser{data: data, dec: json.NewDecoder(bytes.NewReader(data))}
	p.dec.UseNumber()

	if err := p.expectDelim('{', "the top level must be an object with the key \"secrets\""); err != nil {
		return nil, err
	}
	var secrets map[string]Credentials
	for p.dec.More() {
		key, err := p.key()
		if err != nil {
			return nil, err
		}
		if key != "secrets" {
			return nil, p.errorf("unknown top-level key %q (expected \"secrets\")", key)
		}
		if secrets != nil {
			return nil, p.errorf("duplicate key \"secrets\"")
		}
		if secrets, err = p.secrets(); err != nil {
			return nil, err
		}
	}
	if err := p.expectDelim('}', "expected the end of the top-level object"); err != nil {
		return nil, err
	}
	if _, err := p.dec.Token(); err != io.EOF {
		return nil, p.errorf("unexpected data after the top-level object")
	}
	if secrets == nil {
		return nil, errors.New("missing top-level key \"secrets\"")
	}
	return secrets, nil
}

func (p *jsonParser) secrets() (map[string]Credentials, error) {
	if err := p.expectDelim('{', "\"secrets\" must be an object from secret id to secret"); err != nil {
		return nil, err
	}
	secrets := make(map[string]Credentials)
	for p.dec.More() {
		id, err := p.key()
		if err != nil {
			return nil, err
		}
		if id == "" {
			return nil, p.errorf("a secret id must be a non-empty string")
		}
		if _, dup := secrets[id]; dup {
			return nil, p.errorf("duplicate secret %q", id)
		}
		creds, err := p.secret()
		if err != nil {
			return nil, fmt.Errorf("secret %q: %w", id, err)
		}
		secrets[id] = creds
	}
	return secrets, p.expectDelim('}', "expected the end of \"secrets\"")
}

func (p *jsonParser) secret() (Credentials, error) {
	if err := p.expectDelim('{', "a secret must be an object of username, password and other keys"); err != nil {
		return Credentials{}, err
	}
	var creds Credentials
	seen := make(map[string]bool)
	for p.dec.More() {
		key, err := p.key()
		if err != nil {
			return Credentials{}, err
		}
		if seen[key] {
			return Credentials{}, p.errorf("duplicate key %q", key)
		}
		seen[key] = true
		tok, err := p.token()
		if err != nil {
			return Credentials{}, err
		}
		var value string
		switch v := tok.(type) {
		case string:
			value = v
		case nil:
		default:
			return Credentials{}, p.errorf("key %q must have a string value", key)
		}
		if err := setField(&creds, key, value); err != nil {
			return Credentials{}, p.errorf("%w", err)
		}
	}
	if err := p.expectDelim('}', "expected the end of the secret"); err != nil {
		return Credentials{}, err
	}
	if err := validateSecret(creds); err != nil {
		return Credentials{}, p.errorf("%w", err)
	}
	return creds, nil
}

func (p *jsonParser) key() (string, error) {
	tok, err := p.token()
	if err != nil {
		return "", err
	}
	key, ok := tok.(string)
	if !ok {
		return "", p.errorf("expected an object key")
	}
	return key, nil
}

func (p *jsonParser) expectDelim(want json.Delim, message string) error {
	tok, err := p.token()
	if err != nil {
		return err
	}
	if d, ok := tok.(json.Delim); !ok || d != want {
		return p.errorf("%s", message)
	}
	return nil
}

// token reads the next token and rewrites syntax errors, whose text from encoding/json
// quotes the offending character, into a line number only.
func (p *jsonParser) token() (json.Token, error) {
	tok, err := p.dec.Token()
	if err == nil {
		return tok, nil
	}
	var syntaxErr *json.SyntaxError
	switch {
	case errors.As(err, &syntaxErr):
		return nil, fmt.Errorf("line %d: invalid JSON syntax", p.lineAt(syntaxErr.Offset))
	case err == io.EOF || errors.Is(err, io.ErrUnexpectedEOF):
		return nil, fmt.Errorf("line %d: unexpected end of JSON", p.lineAt(int64(len(p.data))))
	default:
		return nil, p.errorf("invalid JSON")
	}
}

// errorf prefixes the line of the token just read.
func (p *jsonParser) errorf(format string, args ...any) error {
	return fmt.Errorf("line %d: %w", p.lineAt(p.dec.InputOffset()), fmt.Errorf(format, args...))
}

func (p *jsonParser) lineAt(offset int64) int {
	offset = max(0, min(offset, int64(len(p.data))))
	return 1 + bytes.Count(p.data[:offset], []byte{'\n'})
}
