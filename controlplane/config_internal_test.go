package controlplane

import (
	"crypto/tls"
	"net"
	"reflect"
	"strings"
	"testing"
	"time"

	"github.com/tetherlb/tether/registry"
)

// A partial Config gets DefaultConfig's value in each zero field, and in each negative one
// that has no meaning; the negatives the flags document (disable, no bound) stay.
func TestConfigDefaults(t *testing.T) {
	// A default is a value, never the zero that asks for one.
	d := DefaultConfig()
	for name, v := range map[string]float64{"ListenPort": float64(d.ListenPort), "CoalesceQuiet": float64(d.CoalesceQuiet),
		"CoalesceMax": float64(d.CoalesceMax), "PublishSettle": float64(d.PublishSettle), "InitialSyncs": float64(d.InitialSyncs),
		"MaxInflightBytes": float64(d.MaxInflightBytes), "HoldShare": d.HoldShare, "HoldGrace": float64(d.HoldGrace),
		"HoldWindow": float64(d.HoldWindow), "VanishGrace": float64(d.VanishGrace), "StaleAfter": float64(d.StaleAfter),
		"MaxServices": float64(d.MaxServices), "MaxInstancesPerService": float64(d.MaxInstancesPerService),
		"MaxConnsPerPeer": float64(d.MaxConnsPerPeer), "MaxStreamsPerConn": float64(d.MaxStreamsPerConn),
		"ShutdownTimeout": float64(d.ShutdownTimeout)} {
		if v <= 0 {
			t.Errorf("DefaultConfig().%s = %v, want positive", name, v)
		}
	}
	var zero Config
	zero.withDefaults()
	if d := DefaultConfig(); !reflect.DeepEqual(zero, d) {
		t.Errorf("zero Config with defaults:\n%+v\nwant DefaultConfig:\n%+v", zero, d)
	}

	neg := Config{CoalesceQuiet: -1, CoalesceMax: -1, PublishSettle: -1, HoldGrace: -1, HoldWindow: -1, ShutdownTimeout: -1,
		InitialSyncs: -1, MaxServices: -1, MaxInstancesPerService: -1, MaxConnsPerPeer: -1, MaxStreamsPerConn: -1,
		VanishGrace: -1, StaleAfter: -1, HoldShare: -1, MaxInflightBytes: -1, Prefix: "/custom/"}
	neg.withDefaults()
	want := DefaultConfig()
	want.VanishGrace, want.StaleAfter, want.HoldShare, want.MaxInflightBytes, want.Prefix = -1, -1, -1, -1, "/custom"
	if !reflect.DeepEqual(neg, want) {
		t.Errorf("negative Config with defaults:\n%+v\nwant:\n%+v", neg, want)
	}

	// Values given are kept, the smallest ones included.
	set := Config{Prefix: "/p", XDSAddr: "a:1", AdminAddr: "b:2", EmbeddedClientURL: "c", EmbeddedPeerURL: "d", DataDir: "e",
		ListenPort: 1, CoalesceQuiet: 1, CoalesceMax: 1, PublishSettle: 1, HoldGrace: 1, HoldWindow: 1, ShutdownTimeout: 1,
		InitialSyncs: 1, MaxServices: 1, MaxInstancesPerService: 1, MaxConnsPerPeer: 1, MaxStreamsPerConn: 1,
		VanishGrace: 1, StaleAfter: 1, HoldShare: 0.01, MaxInflightBytes: 1}
	kept := set
	kept.withDefaults()
	if !reflect.DeepEqual(kept, set) {
		t.Errorf("set Config changed by the defaults:\n%+v\nwant:\n%+v", kept, set)
	}
	// A prefix the registry refuses is left for Validate to name.
	bad := Config{Prefix: "tether"}
	bad.withDefaults()
	if bad.Prefix != "tether" || bad.Validate() == nil {
		t.Errorf("prefix without a slash: %q, %v", bad.Prefix, bad.Validate())
	}
}

// Validate refuses exactly what is out of range, at each bound, naming the flag.
func TestConfigValidateBounds(t *testing.T) {
	if err := (&Config{}).Validate(); err == nil {
		t.Error("an empty Config (no defaults) validated")
	}
	d := DefaultConfig()
	if err := d.Validate(); err != nil {
		t.Fatalf("DefaultConfig: %v", err)
	}
	cases := []struct {
		name string
		set  func(*Config)
		want string // "" when valid
	}{
		{"listen port 1", func(c *Config) { c.ListenPort = 1 }, ""},
		{"listen port 65535", func(c *Config) { c.ListenPort = 65535 }, ""},
		{"listen port 0", func(c *Config) { c.ListenPort = 0 }, "--envoy-listen-port"},
		{"listen port 65536", func(c *Config) { c.ListenPort = 65536 }, "--envoy-listen-port"},
		{"coalesce quiet 0", func(c *Config) { c.CoalesceQuiet = 0 }, "--coalesce-quiet"},
		{"coalesce max 0", func(c *Config) { c.CoalesceMax = 0 }, "--coalesce-quiet and --coalesce-max must be positive"},
		{"coalesce 1ns", func(c *Config) { c.CoalesceQuiet, c.CoalesceMax = 1, 1 }, ""},
		{"coalesce max just below quiet", func(c *Config) { c.CoalesceQuiet, c.CoalesceMax = 10*time.Millisecond, 10*time.Millisecond-1 }, "--coalesce-max (9.999999ms) must not be shorter"},
		{"publish settle 1ns", func(c *Config) { c.PublishSettle = 1 }, ""},
		{"publish settle 0", func(c *Config) { c.PublishSettle = 0 }, "--publish-settle"},
		{"initial syncs 1", func(c *Config) { c.InitialSyncs = 1 }, ""},
		{"initial syncs 0", func(c *Config) { c.InitialSyncs = 0 }, "--initial-syncs"},
		{"conns and streams 1", func(c *Config) { c.MaxConnsPerPeer, c.MaxStreamsPerConn = 1, 1 }, ""},
		{"conns per peer 0", func(c *Config) { c.MaxConnsPerPeer = 0 }, "--max-conns-per-peer"},
		{"streams per conn 0", func(c *Config) { c.MaxStreamsPerConn = 0 }, "--max-streams-per-conn"},
		{"services and instances 1", func(c *Config) { c.MaxServices, c.MaxInstancesPerService = 1, 1 }, ""},
		{"services 0", func(c *Config) { c.MaxServices = 0 }, "--max-services"},
		{"instances per service 0", func(c *Config) { c.MaxInstancesPerService = 0 }, "--max-instances-per-service"},
		{"hold share 1", func(c *Config) { c.HoldShare = 1 }, ""},
		{"hold share negative", func(c *Config) { c.HoldShare = -1 }, ""},
		{"hold share just over 1", func(c *Config) { c.HoldShare = 1.0000001 }, "--hold-share"},
		{"prefix", func(c *Config) { c.Prefix = "tether" }, "--prefix"},
		{"admin hosts", func(c *Config) {
			c.AdminHosts = []string{"tether.example.com", "10.0.0.1", "[fd00::1]", "fd00::2", "Admin-1.Example."}
		}, ""},
		{"admin host with a scheme", func(c *Config) { c.AdminHosts = []string{"localhost", "http://x"} }, `--admin-hosts: "http://x"`},
		{"admin host with a port", func(c *Config) { c.AdminHosts = []string{"x:80"} }, "--admin-hosts"},
		{"xds port 0 and 65535", func(c *Config) { c.XDSAddr, c.AdminAddr = ":0", "127.0.0.1:65535" }, ""},
		{"xds port 65536", func(c *Config) { c.XDSAddr = ":65536" }, "--xds-addr"},
		{"admin port -1", func(c *Config) { c.AdminAddr = "127.0.0.1:-1" }, "--admin-addr"},
		{"admin port a name", func(c *Config) { c.AdminAddr = "127.0.0.1:http" }, `--admin-addr: "127.0.0.1:http": port "http" must be a number`},
		{"xds without a port", func(c *Config) { c.XDSAddr = "127.0.0.1" }, `--xds-addr: "127.0.0.1" is not host:port`},
	}
	for _, tc := range cases {
		c := DefaultConfig()
		tc.set(&c)
		err := c.Validate()
		switch {
		case tc.want == "" && err != nil:
			t.Errorf("%s: %v", tc.name, err)
		case tc.want != "" && (err == nil || !strings.Contains(err.Error(), tc.want)):
			t.Errorf("%s: %v, want an error with %q", tc.name, err, tc.want)
		}
	}
	// Every error is reported, not the first alone.
	c := DefaultConfig()
	c.ListenPort, c.PublishSettle, c.HoldShare = 0, 0, 2
	if err := c.Validate(); err == nil || strings.Count(err.Error(), "\n") != 2 {
		t.Errorf("three errors: %v", err)
	}
}

func TestConfigHelpers(t *testing.T) {
	cfg := Config{HoldWindow: 10 * time.Second, HoldGrace: 30 * time.Second, VanishGrace: 5 * time.Second}
	if got := restartLookback(cfg); got != 80*time.Second {
		t.Errorf("restartLookback = %s, want 30s heartbeat + 2*10s window + 30s grace", got)
	}
	cfg.VanishGrace = 40 * time.Second
	if got := restartLookback(cfg); got != 90*time.Second {
		t.Errorf("restartLookback with a longer vanish grace = %s", got)
	}
	for _, tc := range []struct{ stale, want time.Duration }{{15 * time.Second, 5 * time.Second}, {1, 0},
		{3, 1}, {0, registry.DefaultProgressInterval}, {-1, registry.DefaultProgressInterval}} {
		if got := progressInterval(tc.stale); got != tc.want {
			t.Errorf("progressInterval(%s) = %s, want %s", tc.stale, got, tc.want)
		}
	}
	for k, want := range map[registry.KeyKind]string{registry.KeyService: "service", registry.KeyInstance: "instance",
		registry.KeyDrain: "drain", registry.KeyKind(99): "unknown"} {
		if got := kindLabel(k); got != want {
			t.Errorf("kindLabel(%v) = %q, want %q", k, got, want)
		}
	}
	for _, tc := range []struct {
		tls  *tls.Config
		addr net.Addr
		want bool
	}{{nil, &net.TCPAddr{IP: net.IPv4(10, 0, 0, 1), Port: 18000}, true}, {nil, &net.TCPAddr{IP: net.IPv4zero, Port: 18000}, true},
		{nil, &net.TCPAddr{IP: net.IPv6loopback, Port: 18000}, false}, {&tls.Config{}, &net.TCPAddr{IP: net.IPv4(10, 0, 0, 1), Port: 18000}, false},
		{&tls.Config{}, &net.TCPAddr{IP: net.IPv4(127, 0, 0, 1), Port: 18000}, false}} {
		if got := plaintextBeyondLoopback(tc.tls, tc.addr); got != tc.want {
			t.Errorf("plaintextBeyondLoopback(TLS %v, %v) = %v", tc.tls != nil, tc.addr, got)
		}
	}
	if groupName("") != DefaultGroup || groupName("edge") != "edge" {
		t.Errorf("groupName: %q, %q", groupName(""), groupName("edge"))
	}
}
