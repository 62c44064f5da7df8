package main

import (
	"crypto/tls"
	"net"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/tetherlb/tether/controlplane"
	"github.com/tetherlb/tether/controlplane/xdscache"
	"github.com/tetherlb/tether/internal/etcdconn"
	"github.com/tetherlb/tether/internal/tlstest"
)

func envOf(m map[string]string) func(string) (string, bool) {
	return func(k string) (string, bool) { v, ok := m[k]; return v, ok }
}

// runCaptured runs the command with args and env and returns its exit code and stderr.
func runCaptured(t *testing.T, args []string, env map[string]string) (int, string) {
	t.Helper()
	f, err := os.Create(filepath.Join(t.TempDir(), "stderr"))
	if err != nil {
		t.Fatal(err)
	}
	defer f.Close()
	code := run(args, envOf(env), f)
	out, err := os.ReadFile(f.Name())
	if err != nil {
		t.Fatal(err)
	}
	return code, string(out)
}

func writeFile(t *testing.T, dir, name, content string) string {
	t.Helper()
	p := filepath.Join(dir, name)
	if err := os.WriteFile(p, []byte(content), 0o600); err != nil {
		t.Fatal(err)
	}
	return p
}

// TestBadFlagsExit2: every bad flag or environment value stops the start with exit code 2
// and a message naming the flag (or variable) at fault.
func TestBadFlagsExit2(t *testing.T) {
	dir := t.TempDir()
	garbage := writeFile(t, dir, "garbage.pem", "not a certificate")
	empty := writeFile(t, dir, "empty", "")
	password := writeFile(t, dir, "password", "s3cret\n")
	missing := filepath.Join(dir, "missing.pem")
	ca := tlstest.New(t, "test-ca")
	kp := ca.Server(t, "controlplane")
	etcd := []string{"--etcd-endpoints", "127.0.0.1:2379"}
	with := func(a ...string) []string { return append(append([]string{}, etcd...), a...) }
	cases := []struct {
		name string
		args []string
		env  map[string]string
		want string
	}{
		{"listen port 0", []string{"--envoy-listen-port", "0"}, nil, "--envoy-listen-port"},
		{"listen port 65536", []string{"--envoy-listen-port", "65536"}, nil, "--envoy-listen-port"},
		{"listen port not a number", []string{"--envoy-listen-port", "http"}, nil, "envoy-listen-port"},
		{"coalesce quiet zero", []string{"--coalesce-quiet", "0s"}, nil, "--coalesce-quiet"},
		{"coalesce max below quiet", []string{"--coalesce-quiet", "50ms", "--coalesce-max", "10ms"}, nil, "--coalesce-max"},
		{"publish settle zero", []string{"--publish-settle", "0s"}, nil, "--publish-settle"},
		{"initial syncs zero", []string{"--initial-syncs", "0"}, nil, "--initial-syncs"},
		{"max inflight bytes not a size", []string{"--max-inflight-bytes", "64MB"}, nil, "max-inflight-bytes"},
		{"max inflight bytes negative", []string{"--max-inflight-bytes", "-1"}, nil, "max-inflight-bytes"},
		{"deny backend cidr not a cidr", []string{"--deny-backend-cidr", "10.0.0.1"}, nil, "deny-backend-cidr"},
		{"deny backend cidr env", nil, map[string]string{"TETHER_DENY_BACKEND_CIDR": "10.0.0.0/8,gateway"}, "deny-backend-cidr"},
		{"max conns per peer zero", []string{"--max-conns-per-peer", "0"}, nil, "--max-conns-per-peer"},
		{"hold share over 1", []string{"--hold-share", "1.5"}, nil, "--hold-share"},
		{"hold grace not a duration", []string{"--hold-grace", "soon"}, nil, "hold-grace"},
		{"hold window not a duration", []string{"--hold-window", "a while"}, nil, "hold-window"},
		{"env allow loopback not a boolean", nil, map[string]string{"TETHER_ALLOW_LOOPBACK_BACKENDS": "maybe"}, "allow-loopback-backends"},
		{"prefix without slash", []string{"--prefix", "tether"}, nil, "--prefix"},
		{"log level", []string{"--log-level", "loud"}, nil, "--log-level"},
		{"log format", []string{"--log-format", "xml"}, nil, "--log-format"},
		{"endpoints with a space", []string{"--etcd-endpoints", "10.0.0.1:2379 10.0.0.2:2379"}, nil, "--etcd-endpoints"},
		{"endpoint scheme", []string{"--etcd-endpoints", "ftp://10.0.0.1:2379"}, nil, "--etcd-endpoints"},
		{"etcd cert without key", with("--etcd-cert", kp.CertFile), nil, "--etcd-cert"},
		{"etcd CA missing", with("--etcd-ca", missing), nil, "--etcd-ca"},
		{"etcd CA not PEM", with("--etcd-ca", garbage), nil, "--etcd-ca"},
		{"etcd user without password", with("--etcd-user", "tether-controlplane"), nil, "--etcd-user"},
		{"etcd password file missing", with("--etcd-user", "u", "--etcd-password-file", missing), nil, "--etcd-password-file"},
		{"etcd password file empty", with("--etcd-user", "u", "--etcd-password-file", empty), nil, "--etcd-password-file"},
		{"etcd password file without user", with("--etcd-password-file", password), nil, "--etcd-password-file"},
		{"etcd password is no flag", with("--etcd-user", "u", "--etcd-password", "s3cret"), nil, "etcd-password"},
		{"etcd dial timeout", with("--etcd-dial-timeout", "0s"), nil, "--etcd-dial-timeout"},
		{"etcd TLS with http://", []string{"--etcd-endpoints", "http://127.0.0.1:2379", "--etcd-ca", ca.CAFile}, nil, "plaintext"},
		{"admin host with a scheme", []string{"--admin-hosts", "localhost,http://tether.example.com"}, nil, "--admin-hosts"},
		{"etcd flags without endpoints", []string{"--etcd-user", "u", "--etcd-password-file", password}, nil, "need --etcd-endpoints"},
		{"xDS cert without key", []string{"--xds-tls-cert", kp.CertFile}, nil, "--xds-tls-cert"},
		{"xDS client CA without cert", []string{"--xds-client-ca", ca.CAFile}, nil, "--xds-client-ca"},
		{"xDS cert not PEM", []string{"--xds-tls-cert", garbage, "--xds-tls-key", garbage}, nil, "--xds-tls-cert"},
		{"xDS key missing", []string{"--xds-tls-cert", kp.CertFile, "--xds-tls-key", missing}, nil, "--xds-tls-key"},
		{"xDS client CA not PEM", []string{"--xds-tls-cert", kp.CertFile, "--xds-tls-key", kp.KeyFile, "--xds-client-ca", garbage}, nil, "--xds-client-ca"},
		{"positional argument", []string{"serve"}, nil, "unexpected argument"},
		{"env listen port", nil, map[string]string{"TETHER_ENVOY_LISTEN_PORT": "abc"}, "TETHER_ENVOY_LISTEN_PORT"},
		{"env hold grace", nil, map[string]string{"TETHER_HOLD_GRACE": "forever"}, "--hold-grace"},
		{"env endpoints", nil, map[string]string{"TETHER_ETCD_ENDPOINTS": "a:1 b:2"}, "--etcd-endpoints"},
		{"env prefix", nil, map[string]string{"TETHER_PREFIX": "no-slash"}, "--prefix"},
		// Checked at start, before the embedded etcd (or any client) starts.
		{"xDS address without a port", []string{"--etcd-endpoints", "127.0.0.1:1", "--xds-addr", "nonsense"}, nil, "--xds-addr"},
		{"admin port out of range", []string{"--etcd-endpoints", "127.0.0.1:1", "--admin-addr", "127.0.0.1:99999"}, nil, "--admin-addr"},
		{"xDS port not a number", []string{"--etcd-endpoints", "127.0.0.1:1", "--xds-addr", ":grpc"}, nil, "--xds-addr"},
	}
	for _, tc := range cases {
		t.Run(tc.name, func(t *testing.T) {
			code, out := runCaptured(t, tc.args, tc.env)
			if code != 2 {
				t.Errorf("exit code %d; want 2; stderr:\n%s", code, out)
			}
			if !strings.Contains(out, tc.want) {
				t.Errorf("stderr does not name %s:\n%s", tc.want, out)
			}
			if strings.Contains(out, "s3cret") {
				t.Errorf("stderr shows the password:\n%s", out)
			}
		})
	}
}

// TestListenFailureExit1: an address already in use is a runtime failure (exit 1), and the
// log line names the flag.
func TestListenFailureExit1(t *testing.T) {
	l, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	defer l.Close()
	for _, flagName := range []string{"--xds-addr", "--admin-addr"} {
		args := []string{"--etcd-endpoints", "127.0.0.1:1", "--xds-addr", "127.0.0.1:0", "--admin-addr", "127.0.0.1:0", flagName, l.Addr().String()}
		code, out := runCaptured(t, args, nil)
		if code != 1 || !strings.Contains(out, flagName) {
			t.Errorf("%s in use: exit %d, stderr:\n%s\nwant exit 1 naming the flag", flagName, code, out)
		}
	}
}

// TestRefusedEtcdFailsAtOnce: status, drains and drain against an endpoint where nothing
// listens fail at once (exit 1), naming the endpoint and the likely cause, instead of waiting
// for their timeout and printing "context deadline exceeded".
func TestRefusedEtcdFailsAtOnce(t *testing.T) {
	l, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	ep := l.Addr().String()
	l.Close() // now refused
	for _, args := range [][]string{
		{"status", "--etcd-endpoints", ep},
		{"drains", "--etcd-endpoints", ep},
		{"drain", "app/a1", "--etcd-endpoints", ep},
	} {
		start := time.Now()
		code, out := runCaptured(t, args, nil)
		took := time.Since(start)
		if code != 1 || !strings.Contains(out, ep) || !strings.Contains(out, "connection refused") || !strings.Contains(out, "--etcd-endpoints") {
			t.Errorf("%v: exit %d, stderr %q; want exit 1 naming %s, the refused connection and --etcd-endpoints", args, code, out, ep)
		}
		if took > 3*time.Second {
			t.Errorf("%v: took %s; a refused connection should fail at once", args, took.Round(time.Millisecond))
		}
		if strings.Contains(out, "context deadline exceeded") {
			t.Errorf("%v: %q says only that a deadline passed", args, out)
		}
	}
}

// TestSecurityFlags: the xDS TLS flags give TLS or mutual TLS, and the etcd password comes
// from the environment when no file is given.
func TestSecurityFlags(t *testing.T) {
	ca := tlstest.New(t, "test-ca")
	kp := ca.Server(t, "controlplane")
	o, err := parse(nil, envOf(nil), os.Stderr)
	if err != nil || o.cfg.XDSTLS != nil {
		t.Fatalf("no TLS flags: %v, TLS %v; want plaintext", err, o.cfg.XDSTLS)
	}
	o, err = parse([]string{"--xds-tls-cert", kp.CertFile, "--xds-tls-key", kp.KeyFile}, envOf(nil), os.Stderr)
	if err != nil || o.cfg.XDSTLS == nil || o.cfg.XDSTLS.ClientAuth != tls.NoClientCert {
		t.Fatalf("TLS flags: %v; want TLS without client certificates", err)
	}
	o, err = parse([]string{"--xds-tls-cert", kp.CertFile, "--xds-tls-key", kp.KeyFile, "--xds-client-ca", ca.CAFile}, envOf(nil), os.Stderr)
	if err != nil || o.cfg.XDSTLS == nil || o.cfg.XDSTLS.ClientAuth != tls.RequireAndVerifyClientCert || o.cfg.XDSTLS.ClientCAs == nil {
		t.Fatalf("mutual TLS flags: %v; want client certificates required", err)
	}
	o, err = parse([]string{"--etcd-endpoints", "127.0.0.1:2379", "--etcd-user", "tether-controlplane"},
		envOf(map[string]string{etcdconn.PasswordEnv: "from-env"}), os.Stderr)
	if err != nil || o.cfg.Etcd.Username != "tether-controlplane" || o.cfg.Etcd.Password != "from-env" {
		t.Fatalf("password from %s: %v", etcdconn.PasswordEnv, err)
	}
	o, err = parse(nil, envOf(nil), os.Stderr)
	if err != nil || o.cfg.AllowLoopback || o.cfg.HoldWindow != controlplane.DefaultHoldWindow {
		t.Fatalf("defaults: %v, loopback %v, hold window %s; want loopback refused and %s", err, o.cfg.AllowLoopback, o.cfg.HoldWindow, controlplane.DefaultHoldWindow)
	}
	if o.cfg.MaxInflightBytes != xdscache.DefaultMaxInflightBytes {
		t.Errorf("default --max-inflight-bytes %d; want %d", o.cfg.MaxInflightBytes, xdscache.DefaultMaxInflightBytes)
	}
	for flag, want := range map[string]int64{"16MiB": 16 << 20, "65536": 65536, "0": -1} {
		o, err := parse([]string{"--max-inflight-bytes", flag}, envOf(nil), os.Stderr)
		if err != nil {
			t.Errorf("--max-inflight-bytes %s: %v", flag, err)
		} else if o.cfg.MaxInflightBytes != want {
			t.Errorf("--max-inflight-bytes %s: %d; want %d", flag, o.cfg.MaxInflightBytes, want)
		}
	}
	o, err = parse([]string{"--allow-loopback-backends", "--hold-window", "3s"}, envOf(nil), os.Stderr)
	if err != nil || !o.cfg.AllowLoopback || o.cfg.HoldWindow != 3*time.Second {
		t.Fatalf("--allow-loopback-backends --hold-window 3s: %v, %+v", err, o.cfg)
	}
}

// TestSubcommands: the operator's commands are reached by their names; their usage errors
// exit 2 naming the command.
func TestSubcommands(t *testing.T) {
	for _, c := range []struct {
		args []string
		code int
		want string
	}{
		{[]string{"drain", "-h"}, 0, "tether-controlplane drain SERVICE/ID"},
		{[]string{"drain", "app"}, 2, "tether-controlplane drain: app is a whole service"},
		{[]string{"drains", "a", "b"}, 2, "tether-controlplane drains: unexpected argument"},
		{[]string{"status", "extra"}, 2, "tether-controlplane status: unexpected argument"},
	} {
		code, out := runCaptured(t, c.args, nil)
		if code != c.code || !strings.Contains(out, c.want) {
			t.Errorf("%v: exit %d, %q; want %d and %q", c.args, code, out, c.code, c.want)
		}
	}
}

// The state file is in the data directory with the embedded etcd, nowhere beside an external
// etcd unless given, and "" turns it off.
func TestStateFileDefault(t *testing.T) {
	for _, c := range []struct {
		args []string
		want string
	}{
		{nil, filepath.Join("tether-data", "controlplane-state.json")},
		{[]string{"--data-dir", "d"}, filepath.Join("d", "controlplane-state.json")},
		{[]string{"--state-file", ""}, ""},
		{[]string{"--etcd-endpoints", "127.0.0.1:2379"}, ""},
		{[]string{"--etcd-endpoints", "127.0.0.1:2379", "--state-file", "s.json"}, "s.json"},
	} {
		o, err := parse(c.args, envOf(nil), os.Stderr)
		if err != nil {
			t.Fatalf("%v: %v", c.args, err)
		}
		if o.cfg.StateFile != c.want {
			t.Errorf("%v: state file %q, want %q", c.args, o.cfg.StateFile, c.want)
		}
	}
}
