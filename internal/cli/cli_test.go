package cli

import (
	"flag"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"
)

func env(m map[string]string) func(string) (string, bool) {
	return func(k string) (string, bool) { v, ok := m[k]; return v, ok }
}

func TestBindEnvOnlyUnsetFlags(t *testing.T) {
	fs := flag.NewFlagSet("t", flag.ContinueOnError)
	maxSessions := fs.Int("max-sessions", 0, "")
	service := fs.String("service", "", "")
	ttl := fs.Duration("ttl", 10*time.Second, "")
	if err := fs.Parse([]string{"--service", "cmdline"}); err != nil {
		t.Fatal(err)
	}
	err := BindEnv(fs, env(map[string]string{
		"TETHER_MAX_SESSIONS": "100",
		"TETHER_SERVICE":      "fromenv",
	}))
	if err != nil {
		t.Fatalf("BindEnv: %v", err)
	}
	if *maxSessions != 100 {
		t.Errorf("max-sessions = %d, want 100 from TETHER_MAX_SESSIONS", *maxSessions)
	}
	if *service != "cmdline" {
		t.Errorf("service = %q, want the command line's value", *service)
	}
	if *ttl != 10*time.Second {
		t.Errorf("ttl = %s, want the default", *ttl)
	}
}

func TestBindEnvBadValueNamesVariableAndFlag(t *testing.T) {
	fs := flag.NewFlagSet("t", flag.ContinueOnError)
	fs.Int("max-sessions", 0, "")
	if err := fs.Parse(nil); err != nil {
		t.Fatal(err)
	}
	err := BindEnv(fs, env(map[string]string{"TETHER_MAX_SESSIONS": "lots"}))
	if err == nil {
		t.Fatal("BindEnv accepted TETHER_MAX_SESSIONS=lots")
	}
	for _, want := range []string{"TETHER_MAX_SESSIONS", "--max-sessions"} {
		if !strings.Contains(err.Error(), want) {
			t.Errorf("error %q does not name %s", err, want)
		}
	}
}

func TestClientConfig(t *testing.T) {
	dir := t.TempDir()
	pwFile := filepath.Join(dir, "pw")
	if err := os.WriteFile(pwFile, []byte("s3cret\n"), 0o600); err != nil {
		t.Fatal(err)
	}
	e := EtcdFlags{Endpoints: "10.0.0.1:2379, https://10.0.0.2:2379", DialTimeout: time.Second, User: "root", PasswordFile: pwFile}
	cfg, err := e.ClientConfig(env(nil))
	if err != nil {
		t.Fatalf("ClientConfig: %v", err)
	}
	if got := strings.Join(cfg.Endpoints, ","); got != "http://10.0.0.1:2379,https://10.0.0.2:2379" {
		t.Errorf("endpoints = %s", got)
	}
	if cfg.Username != "root" || cfg.Password != "s3cret" {
		t.Errorf("auth = %q/%q, want root/s3cret", cfg.Username, cfg.Password)
	}
	e.PasswordFile = ""
	cfg, err = e.ClientConfig(env(map[string]string{PasswordEnv: "fromenv"}))
	if err != nil || cfg.Password != "fromenv" {
		t.Errorf("password from %s: %q, %v", PasswordEnv, cfg.Password, err)
	}
}

func TestClientConfigErrorsNameFlag(t *testing.T) {
	dir := t.TempDir()
	cases := []struct {
		name string
		e    EtcdFlags
		want string
	}{
		{"empty endpoints", EtcdFlags{Endpoints: " , ", DialTimeout: time.Second}, "--etcd-endpoints"},
		{"bad scheme", EtcdFlags{Endpoints: "ftp://x:1", DialTimeout: time.Second}, "--etcd-endpoints"},
		{"zero dial timeout", EtcdFlags{Endpoints: "x:1"}, "--etcd-dial-timeout"},
		{"cert without key", EtcdFlags{Endpoints: "x:1", DialTimeout: time.Second, Cert: filepath.Join(dir, "c.pem")}, "--etcd-key"},
		{"missing CA", EtcdFlags{Endpoints: "x:1", DialTimeout: time.Second, CA: filepath.Join(dir, "nope.pem")}, "--etcd-ca"},
		{"user without password", EtcdFlags{Endpoints: "x:1", DialTimeout: time.Second, User: "root"}, "--etcd-password-file"},
		{"password file without user", EtcdFlags{Endpoints: "x:1", DialTimeout: time.Second, PasswordFile: "p"}, "--etcd-user"},
		{"TLS with http://", EtcdFlags{Endpoints: "x:1,http://y:2", DialTimeout: time.Second, CA: filepath.Join(dir, "ca.pem")}, `"http://y:2" is plaintext`},
		{"TLS with unix://", EtcdFlags{Endpoints: "unix:///run/etcd.sock", DialTimeout: time.Second, Cert: "c", Key: "k"}, "plaintext"},
	}
	for _, c := range cases {
		_, err := c.e.ClientConfig(env(nil))
		if err == nil || !strings.Contains(err.Error(), c.want) {
			t.Errorf("%s: error %v, want one naming %s", c.name, err, c.want)
		}
	}
}

func TestRegisterDefaults(t *testing.T) {
	fs := flag.NewFlagSet("t", flag.ContinueOnError)
	var e EtcdFlags
	e.Register(fs, "127.0.0.1:2379")
	if err := fs.Parse([]string{"--etcd-ca", "/ca.pem"}); err != nil {
		t.Fatal(err)
	}
	if e.Endpoints != "127.0.0.1:2379" || e.CA != "/ca.pem" || e.DialTimeout != 5*time.Second {
		t.Errorf("flags = %+v", e)
	}
	if fs.Lookup("etcd-password") != nil {
		t.Error("a plain --etcd-password flag exists; the password must come from a file or the environment")
	}
}

func TestNewLogger(t *testing.T) {
	f, err := os.Create(filepath.Join(t.TempDir(), "log"))
	if err != nil {
		t.Fatal(err)
	}
	defer f.Close()
	log, err := NewLogger("warn", "", f)
	if err != nil {
		t.Fatal(err)
	}
	log.Info().Msg("hidden")
	log.Warn().Str("instance", "a1").Msg("shown")
	b, err := os.ReadFile(f.Name())
	if err != nil {
		t.Fatal(err)
	}
	out := string(b)
	if strings.Contains(out, "hidden") || !strings.Contains(out, `"instance":"a1"`) {
		t.Errorf("log output %q: want only the warning, as JSON (a file is not a terminal)", out)
	}
	if _, err := NewLogger("verbose", "json", f); err == nil || !strings.Contains(err.Error(), "--log-level") {
		t.Errorf("bad level: %v", err)
	}
	if _, err := NewLogger("info", "xml", f); err == nil || !strings.Contains(err.Error(), "--log-format") {
		t.Errorf("bad format: %v", err)
	}
}

// TestLogDurationsAreReadable: a duration field reads as a duration, not as a bare number
// whose unit the reader must guess.
func TestLogDurationsAreReadable(t *testing.T) {
	f, err := os.CreateTemp(t.TempDir(), "log")
	if err != nil {
		t.Fatal(err)
	}
	defer f.Close()
	log, err := NewLogger("info", "json", f)
	if err != nil {
		t.Fatal(err)
	}
	log.Info().Dur("timeout", 10*time.Minute).Msg("x")
	b, err := os.ReadFile(f.Name())
	if err != nil {
		t.Fatal(err)
	}
	if !strings.Contains(string(b), `"timeout":"10m0s"`) {
		t.Errorf("log line %s: want \"timeout\":\"10m0s\"", b)
	}
}

func TestNeedEndpoints(t *testing.T) {
	if err := (&EtcdFlags{}).NeedEndpoints(); err != nil {
		t.Errorf("no etcd flag: %v", err)
	}
	if err := (&EtcdFlags{Endpoints: "x:1", CA: "ca.pem"}).NeedEndpoints(); err != nil {
		t.Errorf("with endpoints: %v", err)
	}
	err := (&EtcdFlags{CA: "ca.pem", User: "u"}).NeedEndpoints()
	if err == nil || !strings.Contains(err.Error(), "--etcd-ca, --etcd-user: need --etcd-endpoints") {
		t.Errorf("TLS and user flags without endpoints: %v", err)
	}
}
