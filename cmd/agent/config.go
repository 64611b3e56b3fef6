package main

import (
	"bytes"
	"errors"
	"fmt"
	"io"
	"os"
	"path/filepath"
	"reflect"
	"regexp"
	"strconv"
	"strings"
	"time"

	"go.yaml.in/yaml/v3"

	"github.com/knoxcall/dbproxy/credsource"
	"github.com/knoxcall/dbproxy/internal/levenshtein"
	"github.com/knoxcall/dbproxy/knoxproxy"
)

// fileConfig is the agent's configuration file. YAML, and so also JSON.
type fileConfig struct {
	Credentials     credentialsConfig `yaml:"credentials"`
	ShutdownTimeout duration          `yaml:"shutdown_timeout"`
	// ShutdownDelay is how long the agent keeps accepting after SIGTERM while /readyz
	// already returns 503, so a load balancer or orchestrator stops sending new clients.
	ShutdownDelay duration `yaml:"shutdown_delay"`
	// MaxLogins is the max number of sessions in their login phase at once, across routes.
	// Zero means knoxproxy.DefaultMaxLogins.
	MaxLogins int `yaml:"max_logins"`
	// AdminAddress is the loopback host:port of the admin listener; empty means none.
	AdminAddress string `yaml:"admin_address"`
	// ConfigCheckInterval is how often the agent checks the configuration file for changes;
	// zero means defaultConfigCheckInterval.
	ConfigCheckInterval duration `yaml:"config_check_interval"`
	// ResolvePeerPID makes the session log show the PID of TCP peers too, at a cost per
	// connection that grows with the number of sockets the client holds.
	ResolvePeerPID bool          `yaml:"resolve_peer_pid"`
	Routes         []routeConfig `yaml:"routes"`
}

// credentialsConfig is the credentials section. Reload compares it as a whole, so it
// contains only comparable fields and paths already resolved against the config directory.
type credentialsConfig struct {
	// Source is "file", "env", "exec" or "http".
	Source string `yaml:"source"`
	// Path is the secrets file of the file source, relative to the config file.
	Path string `yaml:"path"`
	// EnvPrefix is the variable prefix of the env source; empty means DBPROXY_SECRET_.
	EnvPrefix string `yaml:"env_prefix"`
	// CacheTTL is how long fetched credentials are reused; zero means 5 minutes.
	CacheTTL duration `yaml:"cache_ttl"`
	// Command is the helper of the exec source: its path and fixed arguments.
	Command []string `yaml:"command"`
	// Timeout bounds one run of the exec helper or one request of the http source; zero
	// means the source's default (10s).
	Timeout duration `yaml:"timeout"`
	// BaseURL, TokenFile, TokenEnv and CAFile configure the http source.
	BaseURL   string `yaml:"base_url"`
	TokenFile string `yaml:"token_file"`
	TokenEnv  string `yaml:"token_env"`
	CAFile    string `yaml:"ca_file"`
}

type routeConfig struct {
	Name           string    `yaml:"name"`
	Protocol       string    `yaml:"protocol"`
	LocalPort      int       `yaml:"local_port"`
	ListenAddress  string    `yaml:"listen_address"`
	UnixSocket     string    `yaml:"unix_socket"`
	UnixSocketMode *fileMode `yaml:"unix_socket_mode"`
	UpstreamHost   string    `yaml:"upstream_host"`
	UpstreamPort   int       `yaml:"upstream_port"`
	SecretID       string    `yaml:"committed_secret_id"`
	AllowedUIDs    []uint32  `yaml:"allowed_uids"`
	TLS            tlsConfig `yaml:"tls"`
	DialTimeout    duration  `yaml:"dial_timeout"`
	LoginTimeout   duration  `yaml:"login_timeout"`
	MaxConnections int       `yaml:"max_connections"`
}

type tlsConfig struct {
	CAFile             string `yaml:"ca_file"`
	ServerName         string `yaml:"server_name"`
	InsecureSkipVerify bool   `yaml:"insecure_skip_verify"`
	// ClientCertSecretID names a secret whose certificate and private_key the agent
	// presents to the upstream in the TLS handshake.
	ClientCertSecretID string `yaml:"client_cert_secret_id"`
}

// duration reads a Go duration string such as "30s" or "5m".
type duration time.Duration

func (d *duration) UnmarshalYAML(n *yaml.Node) error {
	v, err := time.ParseDuration(n.Value)
	if err != nil {
		return fmt.Errorf("line %d: invalid duration %q (use a number with a unit, such as 30s or 5m)", n.Line, n.Value)
	}
	if v < 0 {
		return fmt.Errorf("line %d: duration %q is negative", n.Line, n.Value)
	}
	*d = duration(v)
	return nil
}

// fileMode reads a permission such as 0660 (octal in YAML) or "0660".
type fileMode os.FileMode

func (m *fileMode) UnmarshalYAML(n *yaml.Node) error {
	digits := strings.TrimPrefix(strings.TrimPrefix(n.Value, "0o"), "0O")
	v, err := strconv.ParseUint(digits, 8, 32)
	if err != nil || v&^0o777 != 0 {
		return fmt.Errorf("line %d: invalid file mode %q (use octal, such as 0600)", n.Line, n.Value)
	}
	*m = fileMode(v)
	return nil
}

// yamlSections turns the Go type names in the YAML decoder's errors into the names of the
// configuration's sections.
var yamlSections = strings.NewReplacer(
	"in type main.fileConfig", "at the top level",
	"in type main.routeConfig", "in a route",
	"in type main.tlsConfig", "in a route's tls section",
	"in type main.credentialsConfig", "in the credentials section",
	"main.", "",
)

// agentConfig is a loaded and checked configuration.
type agentConfig struct {
	routes          []knoxproxy.Route
	source          credsource.Source
	credentials     credentialsConfig
	warnings        []string
	cacheTTL        time.Duration
	shutdownTimeout time.Duration
	maxLogins       int
	shutdownDelay   time.Duration
	adminAddress    string
	checkInterval   time.Duration
	resolvePeerPID  bool
}

// loadConfig reads, parses and validates the configuration file. Relative paths in it are
// taken from the file's directory. Errors name the route and the field.
func loadConfig(path string) (*agentConfig, error) {
	data, err := os.ReadFile(path)
	if err != nil {
		return nil, fmt.Errorf("read config: %w", err)
	}
	var fc fileConfig
	dec := yaml.NewDecoder(bytes.NewReader(data))
	dec.KnownFields(true)
	if err := dec.Decode(&fc); err != nil {
		if errors.Is(err, io.EOF) {
			return nil, fmt.Errorf("config %s: the file is empty", path)
		}
		return nil, fmt.Errorf("config %s: %s", path, yamlSections.Replace(suggestKeys(err.Error())))
	}
	base := filepath.Dir(path)
	resolve := func(p string) string {
		if p == "" || filepath.IsAbs(p) {
			return p
		}
		return filepath.Join(base, p)
	}

	cfg := &agentConfig{
		cacheTTL:        time.Duration(fc.Credentials.CacheTTL),
		shutdownTimeout: time.Duration(fc.ShutdownTimeout),
		maxLogins:       fc.MaxLogins,
		shutdownDelay:   time.Duration(fc.ShutdownDelay),
		adminAddress:    fc.AdminAddress,
		checkInterval:   time.Duration(fc.ConfigCheckInterval),
		resolvePeerPID:  fc.ResolvePeerPID,
	}
	if cfg.checkInterval == 0 {
		cfg.checkInterval = defaultConfigCheckInterval
	}
	if cfg.maxLogins < 0 {
		return nil, fmt.Errorf("config: max_logins: %d is negative (0 means the default, %d)", cfg.maxLogins, knoxproxy.DefaultMaxLogins)
	}
	if cfg.adminAddress != "" {
		if err := checkAdminAddress(cfg.adminAddress); err != nil {
			return nil, fmt.Errorf("config: admin_address: %w", err)
		}
	}
	cc := fc.Credentials
	cc.Path, cc.TokenFile, cc.CAFile = resolve(cc.Path), resolve(cc.TokenFile), resolve(cc.CAFile)
	if len(cc.Command) > 0 && cc.Command[0] != "" && !filepath.IsAbs(cc.Command[0]) && strings.ContainsRune(cc.Command[0], '/') {
		helper := resolve(cc.Command[0])
		if !strings.ContainsRune(helper, filepath.Separator) {
			// filepath.Join drops the "./" of a helper beside a config file named without a
			// directory, and exec would then look the bare name up in PATH.
			helper = "." + string(filepath.Separator) + helper
		}
		cc.Command = append([]string{helper}, cc.Command[1:]...)
	}
	cfg.credentials = cc
	source, warnings, err := newSource(cc)
	if err != nil {
		return nil, fmt.Errorf("config: %w", err)
	}
	cfg.source, cfg.warnings = source, warnings

	if len(fc.Routes) == 0 {
		return nil, errors.New("config: routes: no routes configured")
	}
	for _, rc := range fc.Routes {
		r := knoxproxy.Route{
			Name:          rc.Name,
			Protocol:      rc.Protocol,
			ListenAddress: rc.ListenAddress,
			LocalPort:     rc.LocalPort,
			UnixSocket:    resolve(rc.UnixSocket),
			UpstreamHost:  rc.UpstreamHost,
			UpstreamPort:  rc.UpstreamPort,
			SecretID:      rc.SecretID,
			AllowedUIDs:   rc.AllowedUIDs,
			TLS: knoxproxy.TLS{
				CAFile:             resolve(rc.TLS.CAFile),
				ServerName:         rc.TLS.ServerName,
				InsecureSkipVerify: rc.TLS.InsecureSkipVerify,
				ClientCertSecretID: rc.TLS.ClientCertSecretID,
			},
			DialTimeout:    time.Duration(rc.DialTimeout),
			LoginTimeout:   time.Duration(rc.LoginTimeout),
			MaxConnections: rc.MaxConnections,
		}
		if rc.UnixSocketMode != nil {
			r.UnixSocketMode = os.FileMode(*rc.UnixSocketMode)
		}
		cfg.routes = append(cfg.routes, r)
	}

	// Check the fields and conflicts of every route before touching any file.
	if err := knoxproxy.ValidateRoutes(cfg.routes); err != nil {
		return nil, fmt.Errorf("config: %w", err)
	}
	for i := range cfg.routes {
		if err := cfg.routes[i].CheckFiles(); err != nil {
			return nil, fmt.Errorf("config: %w", err)
		}
	}
	return cfg, nil
}

// unknownField matches a line of the YAML decoder's error for a key that the section's
// type does not have, such as "field secret_id not found in type main.routeConfig".
var unknownField = regexp.MustCompile(`field (\S+) not found in type main\.(\w+)`)

// sectionTypes maps the Go type names in unknownField to the types whose yaml tags are the
// section's keys.
var sectionTypes = map[string]reflect.Type{
	"fileConfig":        reflect.TypeFor[fileConfig](),
	"routeConfig":       reflect.TypeFor[routeConfig](),
	"tlsConfig":         reflect.TypeFor[tlsConfig](),
	"credentialsConfig": reflect.TypeFor[credentialsConfig](),
}

// suggestKeys appends "(did you mean KEY?)" to every unknown key in the YAML decoder's
// error message msg that has a close key in its section. A key is close when it is one or
// two edits away, or when it ends with the unknown key, as committed_secret_id does.
func suggestKeys(msg string) string {
	return unknownField.ReplaceAllStringFunc(msg, func(match string) string {
		m := unknownField.FindStringSubmatch(match)
		typ, ok := sectionTypes[m[2]]
		if !ok {
			return match
		}
		if key := closestKey(m[1], typ); key != "" {
			return match + " (did you mean " + key + "?)"
		}
		return match
	})
}

// closestKey returns the yaml key of typ that name most likely misspells, or "".
func closestKey(name string, typ reflect.Type) string {
	best, bestDistance := "", 3
	for field := range typ.Fields() {
		key, _, _ := strings.Cut(field.Tag.Get("yaml"), ",")
		if key == "" {
			continue
		}
		if strings.HasSuffix(key, "_"+name) {
			return key
		}
		if d := levenshtein.Distance(name, key); d < bestDistance {
			best, bestDistance = key, d
		}
	}
	return best
}
