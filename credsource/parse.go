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

	"github.com/knoxcall/dbproxy/internal/levenshtein"
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

// secretsDocument is a parsed secrets file. A problem in one secret leaves the others usable.
type secretsDocument struct {
	// secrets are the valid secrets by id. The map is never nil.
	secrets map[string]Credentials
	// problems are the invalid secrets in file order. An id that appears more than once is
	// a problem, and none of its entries is in secrets.
	problems []secretProblem
}

// secretProblem is one invalid secret of a secrets file.
type secretProblem struct {
	// id is the secret id, or empty when the id itself is invalid.
	id string
	// err gives the line and the key, but neither the id nor any value, so that it can be
	// returned to a client that fetches this id.
	err error
}

func (p secretProblem) Error() string {
	if p.id == "" {
		return p.err.Error()
	}
	return fmt.Sprintf("secret %q: %v", p.id, p.err)
}

func (p secretProblem) Unwrap() error { return p.err }

func newSecretsDocument() secretsDocument {
	return secretsDocument{secrets: make(map[string]Credentials)}
}

// add records the outcome of parsing the entry id. seen holds the ids met so far, so that
// a repeated id drops the earlier entry too.
func (d *secretsDocument) add(seen map[string]bool, id string, line int, creds Credentials, err error) {
	switch {
	case id == "":
		err = fmt.Errorf("line %d: a secret id must be a non-empty string", line)
	case seen[id]:
		delete(d.secrets, id)
		err = fmt.Errorf("line %d: duplicate secret id", line)
	}
	if id != "" {
		seen[id] = true
	}
	if err != nil {
		d.problems = append(d.problems, secretProblem{id: id, err: err})
		return
	}
	d.secrets[id] = creds
}

// parseSecretsDocument parses a secrets file. It returns an error when the file as a whole
// is unusable (a syntax error, a wrong top-level structure), and reports an invalid secret
// in the document's problems instead. No error or problem echoes a value, because any value
// in the file may be a secret.
func parseSecretsDocument(data []byte, isJSON bool) (secretsDocument, error) {
	if isJSON {
		return parseJSON(data)
	}
	return parseYAML(data)
}

// parseSecrets parses a secrets file and fails on its first problem, whole-file or not.
func parseSecrets(data []byte, isJSON bool) (map[string]Credentials, error) {
	doc, err := parseSecretsDocument(data, isJSON)
	if err != nil {
		return nil, err
	}
	if len(doc.problems) > 0 {
		return nil, doc.problems[0]
	}
	return doc.secrets, nil
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
		return fmt.Errorf("%s (expected %s, %s, %s, %s or %s)",
			describeUnknownKey(key), keyUsername, keyPassword, keyCertificate, keyPrivateKey, keyAuthSource)
	}
	return nil
}

// describeUnknownKey names an unknown key of a secret without echoing a value that was
// written in the place of a key. In a YAML flow mapping, "{password:hunter2}" and
// "{username: app, hunter2}" both make the password a key. The key is quoted only when it
// is a misspelling of a known key.
func describeUnknownKey(key string) string {
	for _, known := range []string{keyUsername, keyPassword, keyCertificate, keyPrivateKey, keyAuthSource} {
		if levenshtein.Distance(key, known) <= 2 {
			return fmt.Sprintf("unknown key %q", key)
		}
		if rest, ok := strings.CutPrefix(key, known); ok && rest != "" && !isKeyChar(rest[0]) {
			return fmt.Sprintf("unknown key that starts with %q and %q (write a space after the colon of %q)",
				known, rest[:1], known)
		}
	}
	return "unknown key, not quoted because it may be a value (check for a missing key or colon)"
}

func isKeyChar(c byte) bool {
	return c == '_' || 'a' <= c && c <= 'z' || 'A' <= c && c <= 'Z' || '0' <= c && c <= '9'
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
func parseYAML(data []byte) (secretsDocument, error) {
	var root yaml.Node
	if err := yaml.Unmarshal(data, &root); err != nil {
		return secretsDocument{}, fmt.Errorf("invalid YAML: %s", yamlErrorText(err))
	}
	secretsNode, err := findYAMLSecrets(&root)
	if err != nil {
		return secretsDocument{}, err
	}
	doc := newSecretsDocument()
	if isYAMLNull(secretsNode) {
		return doc, nil
	}
	if secretsNode.Kind != yaml.MappingNode {
		return secretsDocument{}, fmt.Errorf("line %d: \"secrets\" must be a mapping from secret id to secret", secretsNode.Line)
	}

	seen := make(map[string]bool, len(secretsNode.Content)/2)
	for i := 0; i+1 < len(secretsNode.Content); i += 2 {
		idNode, entry := secretsNode.Content[i], resolveAlias(secretsNode.Content[i+1])
		id := idNode.Value
		if idNode.Kind != yaml.ScalarNode {
			id = ""
		}
		creds, err := parseYAMLSecret(entry)
		doc.add(seen, id, idNode.Line, creds, err)
	}
	return doc, nil
}

// yamlErrorText returns the problem of a yaml.v3 parse error without its value. Syntax
// errors read "yaml: line N: <problem>" with a fixed problem text, but the undefined-alias
// error quotes the alias name, and an unquoted password that starts with "*" is parsed as
// an alias.
func yamlErrorText(err error) string {
	text := strings.TrimPrefix(err.Error(), "yaml: ")
	if strings.HasPrefix(text, "unknown anchor ") {
		return "an alias (a value that starts with *) refers to an undefined anchor; quote the value if it is a literal"
	}
	return text
}

// findYAMLSecrets returns the value of the top-level key "secrets" of a parsed document.
func findYAMLSecrets(root *yaml.Node) (*yaml.Node, error) {
	if root.Kind != yaml.DocumentNode || len(root.Content) == 0 {
		return nil, errors.New("file is empty: expected a top-level key \"secrets\"")
	}
	top := resolveAlias(root.Content[0])
	if top.Kind != yaml.MappingNode {
		return nil, fmt.Errorf("line %d: the top level must be a mapping with the key \"secrets\"", top.Line)
	}

	var secretsNode *yaml.Node
	for i := 0; i+1 < len(top.Content); i += 2 {
		key := top.Content[i]
		if key.Value != "secrets" {
			// The key is not quoted: it may be a secret id indented wrongly, and this error
			// can reach a client that fetches another id.
			return nil, fmt.Errorf("line %d: unknown top-level key (the only one allowed is \"secrets\")", key.Line)
		}
		if secretsNode != nil {
			return nil, fmt.Errorf("line %d: duplicate key \"secrets\"", key.Line)
		}
		secretsNode = resolveAlias(top.Content[i+1])
	}
	if secretsNode == nil {
		return nil, errors.New("missing top-level key \"secrets\"")
	}
	return secretsNode, nil
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
		if err := checkYAMLMarks(entry.Content[i+1], valueNode, key); err != nil {
			return Credentials{}, err
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

// checkYAMLMarks rejects a value that YAML reads differently from its text. An unquoted
// password that starts with "&" becomes an anchor with an empty value. One that starts with
// "!" becomes a tag followed by the rest of the password. raw is the value as written, and
// value is raw with its alias resolved. The errors quote neither the anchor nor the tag.
func checkYAMLMarks(raw, value *yaml.Node, key string) error {
	if raw.Anchor != "" && isYAMLNull(raw) {
		return fmt.Errorf("line %d: key %q has an anchor (a value that starts with &) but no value; quote the value if it is a literal", raw.Line, key)
	}
	if tag := value.ShortTag(); !strings.HasPrefix(tag, "!!") {
		return fmt.Errorf("line %d: key %q has a custom YAML tag (a value that starts with !); quote the value if it is a literal", value.Line, key)
	}
	return nil
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

func parseJSON(data []byte) (secretsDocument, error) {
	p := &jsonParser{data: data, dec: json.NewDecoder(bytes.NewReader(data))}
	p.dec.UseNumber()

	if err := p.expectDelim('{', "the top level must be an object with the key \"secrets\""); err != nil {
		return secretsDocument{}, err
	}
	var doc secretsDocument
	found := false
	for p.dec.More() {
		key, err := p.key()
		if err != nil {
			return secretsDocument{}, err
		}
		if key != "secrets" {
			return secretsDocument{}, p.errorf("unknown top-level key (the only one allowed is \"secrets\")")
		}
		if found {
			return secretsDocument{}, p.errorf("duplicate key \"secrets\"")
		}
		found = true
		if doc, err = p.secrets(); err != nil {
			return secretsDocument{}, err
		}
	}
	if err := p.expectDelim('}', "expected the end of the top-level object"); err != nil {
		return secretsDocument{}, err
	}
	if _, err := p.dec.Token(); err != io.EOF {
		return secretsDocument{}, p.errorf("unexpected data after the top-level object")
	}
	if !found {
		return secretsDocument{}, errors.New("missing top-level key \"secrets\"")
	}
	return doc, nil
}

func (p *jsonParser) secrets() (secretsDocument, error) {
	if err := p.expectDelim('{', "\"secrets\" must be an object from secret id to secret"); err != nil {
		return secretsDocument{}, err
	}
	doc := newSecretsDocument()
	seen := make(map[string]bool)
	for p.dec.More() {
		id, err := p.key()
		if err != nil {
			return secretsDocument{}, err
		}
		line := p.line()
		creds, invalid, err := p.secret()
		if err != nil {
			return secretsDocument{}, err
		}
		doc.add(seen, id, line, creds, invalid)
	}
	return doc, p.expectDelim('}', "expected the end of \"secrets\"")
}

// secret reads one secret object. A problem confined to the secret comes back as invalid,
// after the rest of the secret has been read, so that the caller can go on with the next
// one. An error in err (invalid syntax, an unexpected end) ends the parse.
func (p *jsonParser) secret() (creds Credentials, invalid, err error) {
	first, err := p.token()
	if err != nil {
		return Credentials{}, nil, err
	}
	if d, ok := first.(json.Delim); !ok || d != '{' {
		invalid = p.errorf("a secret must be an object of username, password and other keys")
		return Credentials{}, invalid, p.skipValue(first)
	}

	seen := make(map[string]bool)
	for p.dec.More() {
		key, err := p.key()
		if err != nil {
			return Credentials{}, nil, err
		}
		value, err := p.token()
		if err != nil {
			return Credentials{}, nil, err
		}
		if invalid == nil {
			invalid = p.setField(&creds, seen, key, value)
		}
		// A nested value is invalid, and the rest of it still has to be read.
		if err := p.skipValue(value); err != nil {
			return Credentials{}, nil, err
		}
	}
	if err := p.expectDelim('}', "expected the end of the secret"); err != nil {
		return Credentials{}, nil, err
	}
	if invalid == nil {
		if err := validateSecret(creds); err != nil {
			invalid = p.errorf("%w", err)
		}
	}
	if invalid != nil {
		return Credentials{}, invalid, nil
	}
	return creds, nil, nil
}

// setField stores the value of one key of a secret. seen holds the keys read so far.
func (p *jsonParser) setField(creds *Credentials, seen map[string]bool, key string, value json.Token) error {
	if seen[key] {
		return p.errorf("duplicate key %q", key)
	}
	seen[key] = true
	var text string
	switch v := value.(type) {
	case string:
		text = v
	case nil:
	default:
		return p.errorf("key %q must have a string value", key)
	}
	if err := setField(creds, key, text); err != nil {
		return p.errorf("%w", err)
	}
	return nil
}

// skipValue reads the rest of the value that starts with the token first: nothing for a
// scalar, and up to the matching closing delimiter for an object or an array.
func (p *jsonParser) skipValue(first json.Token) error {
	if first != json.Delim('{') && first != json.Delim('[') {
		return nil
	}
	for depth := 1; depth > 0; {
		tok, err := p.token()
		if err != nil {
			return err
		}
		switch tok {
		case json.Delim('{'), json.Delim('['):
			depth++
		case json.Delim('}'), json.Delim(']'):
			depth--
		}
	}
	return nil
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
	return fmt.Errorf("line %d: %w", p.line(), fmt.Errorf(format, args...))
}

// line returns the line of the token just read.
func (p *jsonParser) line() int {
	return p.lineAt(p.dec.InputOffset())
}

func (p *jsonParser) lineAt(offset int64) int {
	offset = max(0, min(offset, int64(len(p.data))))
	return 1 + bytes.Count(p.data[:offset], []byte{'\n'})
}
