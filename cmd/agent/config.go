package main

import (
	"bytes"
	"errors"
	"fmt"
	"os"
	"path/filepath"
	"time"

	"go.yaml.in/yaml/v3"

	"github.com/knoxcall/dbproxy/credsource"
	"github.com/knoxcall/dbproxy/knoxproxy"
)

// fileConfig is the agent's configuration file. YAML, and so also JSON.
type fileConfig struct {
	Credentials     credentialsConfig `yaml:"credentials"`
	ShutdownTimeout duration          `yaml:"shutdown_timeout"`
	Routes          []routeConfig     `yaml:"routes"`
}

type credentialsConfig struct {
	// Source is "file" or "env".
	Source string `yaml:"source"`
	// Path is the secrets file of the file source, relative to the config file.
	Path string `yaml:"path"`
	// EnvPrefix is the variable prefix of the env source; empty means DBPROXY_SECRET_.
	EnvPrefix string `yaml:"env_prefix"`
	// CacheTTL is how long fetched credentials are reused; zero means 5 minutes.
	CacheTTL duration `yaml:"cache_ttl"`
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
}

type tlsConfig struct {
	CAFile             string `yaml:"ca_file"`
	ServerName         string `yaml:"server_name"`
	InsecureSkipVerify bool   `yaml:"insecure_skip_verify"`
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
	var v uint32
	if _, err := fmt.Sscanf(n.Value, "%o", &v); err != nil || v&^0o777 != 0 {
		return fmt.Errorf("line %d: invalid file mode %q (use octal, such as 0600)", n.Line, n.Value)
	}
	*m = fileMode(v)
	return nil
}

// agentConfig is a loaded and checked configuration.
type agentConfig struct {
	routes          []knoxproxy.Route
	source          credsource.Source
	warnings        []string
	cacheTTL        time.Duration
	shutdownTimeout time.Duration
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
		return nil, fmt.Errorf("config %s: %w", path, err)
	}
	base := filepath.Dir(path)
	resolve := func(p string) string {
		if p == "" || filepath.IsAbs(p) {
			return p
		}
		return filepath.Join(base, p)
	}

	cfg := &agentConfig{cacheTTL: time.Duration(fc.Credentials.CacheTTL), shutdownTimeout: time.Duration(fc.ShutdownTimeout)}
	switch fc.Credentials.Source {
	case "file":
		if fc.Credentials.Path == "" {
			return nil, errors.New("config: credentials.path: missing (the secrets file of source: file)")
		}
		f := credsource.NewFile(resolve(fc.Credentials.Path))
		if err := f.Check(); errors.Is(err, credsource.ErrFileMode) {
			cfg.warnings = append(cfg.warnings, err.Error())
		} else if err != nil {
			return nil, fmt.Errorf("config: credentials.path: %w", err)
		}
		cfg.source = f
	case "env":
		cfg.source = credsource.Env{Prefix: fc.Credentials.EnvPrefix}
	case "":
		return nil, errors.New("config: credentials.source: missing (want file or env)")
	default:
		return nil, fmt.Errorf("config: credentials.source: unknown source %q (want file or env)", fc.Credentials.Source)
	}

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
			},
			DialTimeout:  time.Duration(rc.DialTimeout),
			LoginTimeout: time.Duration(rc.LoginTimeout),
		}
		if rc.UnixSocketMode != nil {
			r.UnixSocketMode = os.FileMode(*rc.UnixSocketMode)
		}
		if err := r.Validate(); err != nil {
			return nil, fmt.Errorf("config: %w", err)
		}
		cfg.routes = append(cfg.routes, r)
	}
	return cfg, nil
}
