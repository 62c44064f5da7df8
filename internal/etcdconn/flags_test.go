package etcdconn

import (
	"flag"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"
)

// noEnv is an empty environment.
func noEnv(string) (string, bool) { return "", false }

func TestClientConfig(t *testing.T) {
	dir := t.TempDir()
	pwFile := filepath.Join(dir, "pw")
	if err := os.WriteFile(pwFile, []byte("s3cret\n"), 0o600); err != nil {
		t.Fatal(err)
	}
	e := Flags{Endpoints: "10.0.0.1:2379, https://10.0.0.2:2379", DialTimeout: time.Second, User: "root", PasswordFile: pwFile}
	cfg, err := e.ClientConfig(noEnv)
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
	cfg, err = e.ClientConfig(func(k string) (string, bool) { return "fromenv", k == PasswordEnv })
	if err != nil || cfg.Password != "fromenv" {
		t.Errorf("password from %s: %q, %v", PasswordEnv, cfg.Password, err)
	}
}

func TestClientConfigErrorsNameFlag(t *testing.T) {
	dir := t.TempDir()
	cases := []struct {
		name string
		e    Flags
		want string
	}{
		{"empty endpoints", Flags{Endpoints: " , ", DialTimeout: time.Second}, "--etcd-endpoints"},
		{"bad scheme", Flags{Endpoints: "ftp://x:1", DialTimeout: time.Second}, "--etcd-endpoints"},
		{"zero dial timeout", Flags{Endpoints: "x:1"}, "--etcd-dial-timeout"},
		{"cert without key", Flags{Endpoints: "x:1", DialTimeout: time.Second, Cert: filepath.Join(dir, "c.pem")}, "--etcd-key"},
		{"missing CA", Flags{Endpoints: "x:1", DialTimeout: time.Second, CA: filepath.Join(dir, "nope.pem")}, "--etcd-ca"},
		{"user without password", Flags{Endpoints: "x:1", DialTimeout: time.Second, User: "root"}, "--etcd-password-file"},
		{"password file without user", Flags{Endpoints: "x:1", DialTimeout: time.Second, PasswordFile: "p"}, "--etcd-user"},
		{"TLS with http://", Flags{Endpoints: "x:1,http://y:2", DialTimeout: time.Second, CA: filepath.Join(dir, "ca.pem")}, `"http://y:2" is plaintext`},
		{"TLS with unix://", Flags{Endpoints: "unix:///run/etcd.sock", DialTimeout: time.Second, Cert: "c", Key: "k"}, "plaintext"},
	}
	for _, c := range cases {
		_, err := c.e.ClientConfig(noEnv)
		if err == nil || !strings.Contains(err.Error(), c.want) {
			t.Errorf("%s: error %v, want one naming %s", c.name, err, c.want)
		}
	}
}

func TestRegisterDefaults(t *testing.T) {
	fs := flag.NewFlagSet("t", flag.ContinueOnError)
	var e Flags
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

func TestNeedEndpoints(t *testing.T) {
	if err := (&Flags{}).NeedEndpoints(); err != nil {
		t.Errorf("no etcd flag: %v", err)
	}
	if err := (&Flags{Endpoints: "x:1", CA: "ca.pem"}).NeedEndpoints(); err != nil {
		t.Errorf("with endpoints: %v", err)
	}
	err := (&Flags{CA: "ca.pem", User: "u"}).NeedEndpoints()
	if err == nil || !strings.Contains(err.Error(), "--etcd-ca, --etcd-user: need --etcd-endpoints") {
		t.Errorf("TLS and user flags without endpoints: %v", err)
	}
}
