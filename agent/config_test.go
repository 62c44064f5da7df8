package agent

import (
	"slices"
	"strings"
	"testing"
	"time"

	"github.com/tetherlb/tether/registry"
)

func validConfig() Config {
	return Config{
		Prefix: "/tether", Service: "app", Port: 5000, LoadSource: LoadHost,
		TTL: 10 * time.Second, Interval: 2 * time.Second, Heartbeat: 30 * time.Second,
		DrainTimeout: time.Minute, ProbeTimeout: time.Second, MetricsAddr: "127.0.0.1:9100",
		SessionsURL: "http://127.0.0.1:5000/sessions",
	}
}

func TestValidateNamesFlag(t *testing.T) {
	if cfg := validConfig(); cfg.Validate() != nil {
		t.Fatalf("valid config rejected: %v", cfg.Validate())
	}
	cases := []struct {
		flag string
		edit func(*Config)
	}{
		{"--service", func(c *Config) { c.Service = "" }},
		{"--service", func(c *Config) { c.Service = "App_1" }},
		{"--id", func(c *Config) { c.ID = "bad id" }},
		{"--port", func(c *Config) { c.Port = 70000 }},
		{"--port", func(c *Config) { c.Port = 0 }},
		{"--port", func(c *Config) { c.Port = 65536 }},
		{"--address", func(c *Config) { c.Address = "no spaces.example" }},
		{"--prefix", func(c *Config) { c.Prefix = "tether" }},
		{"--max-cpu", func(c *Config) { c.Thresholds.MaxCPU = 101 }},
		{"--max-memory", func(c *Config) { c.Thresholds.MaxMemory = -1 }},
		{"--max-memory-mb", func(c *Config) { c.Thresholds.MaxMemoryMB = -5 }},
		{"--max-sessions", func(c *Config) { c.Thresholds.MaxSessions = -1 }},
		{"--max-sessions", func(c *Config) { c.Thresholds.MaxSessions = 10; c.SessionsURL = "" }},
		{"--health-url", func(c *Config) { c.HealthURL = "127.0.0.1:5000/healthcheck" }},
		{"--sessions-metric", func(c *Config) { c.SessionsURL = ""; c.SessionsMetric = "x" }},
		{"--load-source", func(c *Config) { c.LoadSource = "vm" }},
		{"--load-source=process", func(c *Config) { c.LoadSource = LoadProcess }},
		{"--pid", func(c *Config) { c.PID = -1 }},
		{"--ttl", func(c *Config) { c.TTL = time.Second }},
		{"--ttl", func(c *Config) { c.TTL = time.Hour + time.Second }},
		{"--interval", func(c *Config) { c.Interval = 9 * time.Millisecond }},
		{"--interval", func(c *Config) { c.TTL, c.Interval, c.Heartbeat = time.Hour, time.Hour+time.Millisecond, 2*time.Hour }},
		{"--interval", func(c *Config) { c.Interval = c.TTL }},
		{"--heartbeat", func(c *Config) { c.Heartbeat = c.Interval - time.Millisecond }},
		{"--drain-settle", func(c *Config) { c.DrainSettle = time.Minute + time.Millisecond }},
		{"--probe-timeout", func(c *Config) { c.ProbeTimeout = 0 }},
		{"--ttl", func(c *Config) { c.TTL = 2500 * time.Millisecond }},
		{"--interval", func(c *Config) { c.Interval = 20 * time.Second }},
		{"--heartbeat", func(c *Config) { c.Heartbeat = time.Second }},
		{"--drain-timeout", func(c *Config) { c.DrainTimeout = -time.Second }},
		{"--metrics-addr", func(c *Config) { c.MetricsAddr = "9100" }},
		{"--metrics-addr", func(c *Config) { c.MetricsAddr = "127.0.0.1:next" }},
		{"--drain-settle", func(c *Config) { c.DrainSettle = -time.Second }},
		{"--label", func(c *Config) { c.Labels = map[string]string{"bad key": "v"} }},
		{"--zone", func(c *Config) { c.Zone = "a/b" }},
	}
	// The edges of what is valid.
	for what, edit := range map[string]func(*Config){
		"--port 1":              func(c *Config) { c.Port = 1 },
		"--port 65535":          func(c *Config) { c.Port = 65535 },
		"an https --health-url": func(c *Config) { c.HealthURL = "https://backend.example:5443/healthcheck" },
		"no --max-sessions and no --sessions-url": func(c *Config) { c.SessionsURL = "" },
		"--ttl 2s":                  func(c *Config) { c.TTL, c.Interval = 2*time.Second, time.Second },
		"--ttl 1h":                  func(c *Config) { c.TTL = time.Hour },
		"--interval 10ms":           func(c *Config) { c.Interval = 10 * time.Millisecond },
		"--interval 1h":             func(c *Config) { c.TTL, c.Interval, c.Heartbeat = time.Hour, time.Hour-time.Millisecond, time.Hour },
		"--heartbeat at --interval": func(c *Config) { c.Heartbeat = c.Interval },
		"--drain-timeout 0":         func(c *Config) { c.DrainTimeout = 0 },
		"--drain-settle 0":          func(c *Config) { c.DrainSettle = 0 },
		"--drain-settle 1m":         func(c *Config) { c.DrainSettle = time.Minute },
	} {
		cfg := validConfig()
		edit(&cfg)
		if err := cfg.Validate(); err != nil {
			t.Errorf("%s refused: %v", what, err)
		}
	}
	for _, addr := range []string{MetricsAuto, "0.0.0.0:auto", "[::1]:auto", "127.0.0.1:0"} {
		cfg := validConfig()
		cfg.MetricsAddr = addr
		if err := cfg.Validate(); err != nil {
			t.Errorf("--metrics-addr %s refused: %v", addr, err)
		}
	}
	for _, c := range cases {
		cfg := validConfig()
		c.edit(&cfg)
		// The error names the flag at fault first: "--interval: 2s must be shorter than --ttl
		// 1s" is no error of --ttl.
		err := cfg.Validate()
		if err == nil || !slices.ContainsFunc(strings.Split(err.Error(), "\n"), func(l string) bool { return strings.HasPrefix(l, c.flag+":") }) {
			t.Errorf("error %v, want one of %s", err, c.flag)
		}
	}
}

func TestDefaultID(t *testing.T) {
	for _, c := range []struct{ host, want string }{
		{"web-01", "web-01-5000"},
		{"WEB01.corp.example.com", "web01-5000"},
		{"my_host", "my_host-5000"},
		{"host(1)", "host-1-5000"},
		// The edges of each kept range, and the characters just outside them.
		{"a`z{0/9:", "a-z-0-9-5000"},
		{"`az09{", "az09-5000"},
	} {
		got, err := DefaultID(c.host, 5000)
		if err != nil || got != c.want {
			t.Errorf("DefaultID(%q) = %q, %v; want %q", c.host, got, err, c.want)
		}
		if err := registry.ValidateInstanceID(got); err != nil {
			t.Errorf("DefaultID(%q) is not a valid id: %v", c.host, err)
		}
	}
	if _, err := DefaultID("---", 5000); err == nil || !strings.Contains(err.Error(), "--id") {
		t.Errorf("unusable host name: %v", err)
	}
}

// TestMetricsListenAddrs: "auto" listens on loopback only (/metrics must not be reachable from
// the network unless asked for, docs/security.md), on the range from its first port; a host
// given with auto is kept; a fixed port is tried alone.
func TestMetricsListenAddrs(t *testing.T) {
	for _, c := range []struct{ in, first, last string }{
		{MetricsAuto, "127.0.0.1:18100", "127.0.0.1:18199"},
		{"0.0.0.0:auto", "0.0.0.0:18100", "0.0.0.0:18199"},
		{"[::1]:auto", "[::1]:18100", "[::1]:18199"},
	} {
		got, err := metricsListenAddrs(c.in)
		if err != nil || len(got) != MetricsPortCount || got[0] != c.first || got[len(got)-1] != c.last {
			t.Errorf("%s: %d addresses from %v to %v (err %v), want %d from %s to %s", c.in, len(got), first(got), last(got), err, MetricsPortCount, c.first, c.last)
		}
	}
	for _, fixed := range []string{"127.0.0.1:9100", "127.0.0.1:65535"} {
		if got, err := metricsListenAddrs(fixed); err != nil || len(got) != 1 || got[0] != fixed {
			t.Errorf("a fixed port: %v %v", got, err)
		}
	}
	if got, err := metricsListenAddrs("127.0.0.1:65536"); err == nil {
		t.Errorf("port 65536: %v, want an error", got)
	}
}

func first(s []string) string {
	if len(s) == 0 {
		return ""
	}
	return s[0]
}

func last(s []string) string {
	if len(s) == 0 {
		return ""
	}
	return s[len(s)-1]
}

// TestValidHostName: --address takes a DNS name of letters, digits and inner hyphens, at
// most 63 bytes a label and 253 in all; every character next to those ranges is refused.
func TestValidHostName(t *testing.T) {
	l63 := strings.Repeat("a", 63)
	for _, ok := range []string{"a", "z", "A", "Z", "0", "9", "backend-1.example", "a.example.", l63 + ".example",
		l63 + "." + l63 + "." + l63 + "." + strings.Repeat("d", 61)} {
		if !validHostName(ok) {
			t.Errorf("%q (%d bytes) refused", ok, len(ok))
		}
	}
	for _, bad := range []string{"", l63 + "." + l63 + "." + l63 + "." + strings.Repeat("d", 62), "a..b", l63 + "a.example",
		"-a", "a-", "a_b", "a b", "é", "a`", "a{", "a@", "a[", "a/", "a:"} {
		if validHostName(bad) {
			t.Errorf("%q (%d bytes) accepted", bad, len(bad))
		}
	}
}
