package etcdconn

import (
	"crypto/x509"
	"errors"
	"flag"
	"fmt"
	"os"
	"strings"
	"time"

	"go.etcd.io/etcd/client/pkg/v3/transport"
	clientv3 "go.etcd.io/etcd/client/v3"
	"go.uber.org/zap"
)

// Flags are the etcd client flags of every command.
type Flags struct {
	Endpoints, CA, Cert, Key, User, PasswordFile string
	DialTimeout                                  time.Duration
}

// PasswordEnv is the environment variable holding the etcd password when
// --etcd-password-file is not given. The password is never a plain flag.
const PasswordEnv = "TETHER_ETCD_PASSWORD" //nolint:gosec // G101: the name of the variable, not a password

// Register defines --etcd-endpoints, --etcd-ca, --etcd-cert, --etcd-key, --etcd-user,
// --etcd-password-file and --etcd-dial-timeout on fs.
func (e *Flags) Register(fs *flag.FlagSet, defaultEndpoints string) {
	fs.StringVar(&e.Endpoints, "etcd-endpoints", defaultEndpoints, "comma-separated etcd endpoints (host:port or URL)")
	fs.StringVar(&e.CA, "etcd-ca", "", "CA certificate file that signs the etcd server certificates (enables TLS)")
	fs.StringVar(&e.Cert, "etcd-cert", "", "client certificate file for etcd TLS (with --etcd-key)")
	fs.StringVar(&e.Key, "etcd-key", "", "client private key file for etcd TLS (with --etcd-cert)")
	fs.StringVar(&e.User, "etcd-user", "", "etcd user name (password from --etcd-password-file or "+PasswordEnv+")")
	fs.StringVar(&e.PasswordFile, "etcd-password-file", "", "file holding the etcd password")
	fs.DurationVar(&e.DialTimeout, "etcd-dial-timeout", 5*time.Second, "timeout of the first connection to etcd")
}

// ClientConfig builds the etcd client configuration. Endpoints without a scheme get http://
// (https:// when --etcd-ca or --etcd-cert is given). Errors name the flag at fault.
func (e *Flags) ClientConfig(lookup func(string) (string, bool)) (clientv3.Config, error) {
	var cfg clientv3.Config
	tlsOn := e.CA != "" || e.Cert != "" || e.Key != ""
	for _, ep := range strings.Split(e.Endpoints, ",") {
		ep = strings.TrimSpace(ep)
		if ep == "" {
			continue
		}
		if strings.ContainsAny(ep, " \t") {
			return cfg, fmt.Errorf("--etcd-endpoints: %q holds a space; use a comma-separated list such as 10.0.0.1:2379,10.0.0.2:2379", ep)
		}
		if !strings.Contains(ep, "://") {
			if tlsOn {
				ep = "https://" + ep
			} else {
				ep = "http://" + ep
			}
		} else if !strings.HasPrefix(ep, "http://") && !strings.HasPrefix(ep, "https://") && !strings.HasPrefix(ep, "unix://") && !strings.HasPrefix(ep, "unixs://") {
			return cfg, fmt.Errorf("--etcd-endpoints: %q has an unknown scheme; use host:port, http://, https:// or unix://", ep)
		} else if tlsOn && (strings.HasPrefix(ep, "http://") || strings.HasPrefix(ep, "unix://")) {
			// The etcd client lets the scheme win: TLS (and the password's protection) would
			// be dropped without a word.
			return cfg, fmt.Errorf("--etcd-endpoints: %q is plaintext but --etcd-ca, --etcd-cert or --etcd-key ask for TLS; use https:// (unixs://) or host:port", ep)
		}
		cfg.Endpoints = append(cfg.Endpoints, ep)
	}
	if len(cfg.Endpoints) == 0 {
		return cfg, errors.New("--etcd-endpoints: no endpoint given; use e.g. 127.0.0.1:2379")
	}
	if e.DialTimeout <= 0 {
		return cfg, fmt.Errorf("--etcd-dial-timeout: %s must be positive, e.g. 5s", e.DialTimeout)
	}
	cfg.DialTimeout = e.DialTimeout
	cfg.Logger = zap.NewNop()
	if (e.Cert == "") != (e.Key == "") {
		return cfg, errors.New("--etcd-cert and --etcd-key: give both or neither")
	}
	if tlsOn {
		for flagName, file := range map[string]string{"--etcd-ca": e.CA, "--etcd-cert": e.Cert, "--etcd-key": e.Key} {
			if file == "" {
				continue
			}
			if _, err := os.Stat(file); err != nil {
				return cfg, fmt.Errorf("%s: %w", flagName, err)
			}
		}
		if e.CA != "" {
			// etcd's TLS helper accepts a CA file with no certificate in it, which then
			// fails every handshake at run time; refuse it here.
			pem, err := os.ReadFile(e.CA)
			if err != nil {
				return cfg, fmt.Errorf("--etcd-ca: %w", err)
			}
			if !x509.NewCertPool().AppendCertsFromPEM(pem) {
				return cfg, fmt.Errorf("--etcd-ca: %s holds no PEM certificate", e.CA)
			}
		}
		info := transport.TLSInfo{CertFile: e.Cert, KeyFile: e.Key, TrustedCAFile: e.CA}
		tc, err := info.ClientConfig()
		if err != nil {
			return cfg, fmt.Errorf("--etcd-ca/--etcd-cert/--etcd-key: %w", err)
		}
		cfg.TLS = tc
	}
	if e.User != "" {
		pw, err := e.password(lookup)
		if err != nil {
			return cfg, err
		}
		cfg.Username, cfg.Password = e.User, pw
	} else if e.PasswordFile != "" {
		return cfg, errors.New("--etcd-password-file needs --etcd-user")
	}
	return cfg, nil
}

// NeedEndpoints refuses etcd client flags given without --etcd-endpoints, for a binary that
// starts an embedded etcd when the endpoints are empty: the flags would be silently ignored.
func (e *Flags) NeedEndpoints() error {
	if strings.TrimSpace(e.Endpoints) != "" {
		return nil
	}
	var given []string
	for _, f := range []struct{ name, v string }{
		{"--etcd-ca", e.CA}, {"--etcd-cert", e.Cert}, {"--etcd-key", e.Key}, {"--etcd-user", e.User}, {"--etcd-password-file", e.PasswordFile},
	} {
		if f.v != "" {
			given = append(given, f.name)
		}
	}
	if len(given) == 0 {
		return nil
	}
	return fmt.Errorf("%s: need --etcd-endpoints; without it the embedded etcd starts and they would be ignored", strings.Join(given, ", "))
}

func (e *Flags) password(lookup func(string) (string, bool)) (string, error) {
	if e.PasswordFile != "" {
		b, err := os.ReadFile(e.PasswordFile)
		if err != nil {
			return "", fmt.Errorf("--etcd-password-file: %w", err)
		}
		pw := strings.TrimRight(string(b), "\r\n")
		if pw == "" {
			return "", fmt.Errorf("--etcd-password-file: %s is empty", e.PasswordFile)
		}
		return pw, nil
	}
	if pw, ok := lookup(PasswordEnv); ok && pw != "" {
		return pw, nil
	}
	return "", fmt.Errorf("--etcd-user %q needs a password: --etcd-password-file or %s", e.User, PasswordEnv)
}
