// Package agent is tether-agent: it registers one backend instance in etcd under a lease,
// samples its load, evaluates Wisej-style thresholds with hysteresis, probes the backend's
// health, publishes the instance's state when it changes meaningfully, and drains on shutdown.
package agent

import (
	"errors"
	"fmt"
	"net"
	"net/url"
	"strconv"
	"strings"
	"time"

	"github.com/tetherlb/tether/internal/version"
	"github.com/tetherlb/tether/registry"
	clientv3 "go.etcd.io/etcd/client/v3"
)

// Version is the agent's version, written into every instance value: Tether's release
// version, stamped with -ldflags "-X github.com/tetherlb/tether/internal/version.Version=1.2.3".
var Version = version.Version

// Load sources for CPU and memory.
const (
	LoadHost    = "host"    // the whole host (or VM).
	LoadProcess = "process" // one process, --pid, in percent of the host.
	LoadCgroup  = "cgroup"  // a cgroup v2 directory, normally the container's own.
)

// Config is everything Run needs. Zero durations are not defaults: start from DefaultConfig,
// whose values the binary's flags show and override.
type Config struct {
	Etcd    clientv3.Config
	Prefix  string
	Service string
	// ID is the instance ID; empty means <hostname>-<port>, stable across restarts.
	ID string
	// Address is an IP or a host name resolved at start; empty means the host's primary address.
	Address string
	Port    int
	Zone    string
	Labels  map[string]string

	// HealthURL is probed every Interval; a 2xx answer (Wisej's 202 included) is healthy.
	HealthURL string
	// AvailableURL, when set, lets the application veto new sessions: non-2xx means full.
	AvailableURL string
	// SessionsURL answers {"sessions": N}, or Prometheus text when SessionsMetric is set.
	SessionsURL    string
	SessionsMetric string
	// ProbeTimeout bounds each HTTP probe.
	ProbeTimeout time.Duration

	Thresholds registry.Thresholds

	// LoadSource is LoadHost, LoadProcess (with PID) or LoadCgroup (with CgroupDir).
	LoadSource string
	PID        int
	CgroupDir  string

	TTL          time.Duration // lease TTL
	Interval     time.Duration // sampling period
	Heartbeat    time.Duration // longest time between two writes
	DrainTimeout time.Duration // longest wait for sessions to end on shutdown
	// DrainSettle is the wait between publishing "draining" and the sample that may find no
	// session left: the control plane's coalescing window plus Envoy applying the push.
	DrainSettle time.Duration
	// MetricsAddr serves /metrics and /healthz: host:port, or MetricsAuto ("auto", or
	// "host:auto") for the first free port from MetricsPortFirst; empty disables it.
	MetricsAddr string
	// StopNow tells the operator, in the draining log line, how to end the drain's wait at
	// once; empty means a second signal. A Windows service cannot take a second stop.
	StopNow string
}

// DefaultConfig is the agent's default configuration; Etcd, Service and Port are the
// caller's to set.
func DefaultConfig() Config {
	return Config{
		Prefix:       registry.DefaultPrefix,
		Labels:       map[string]string{},
		ProbeTimeout: 2 * time.Second,
		CgroupDir:    "/sys/fs/cgroup",
		TTL:          10 * time.Second,
		Interval:     2 * time.Second,
		Heartbeat:    30 * time.Second,
		DrainTimeout: 10 * time.Minute,
		DrainSettle:  time.Second,
		MetricsAddr:  MetricsAuto,
	}
}

// The automatic metrics port: the first free one of MetricsPortCount ports from
// MetricsPortFirst. The range sits beside Tether's own ports (18000 xDS, 18001 admin), below
// the ephemeral ranges of Linux and Windows, and away from 9100-9999, where Prometheus
// exporters register their defaults (node_exporter has 9100, windows_exporter 9182): agents
// of several apps on one host take 18100, 18101, ... and each publishes its address in the
// registry's "agent" field.
const (
	MetricsAuto      = "auto"
	MetricsPortFirst = 18100
	MetricsPortCount = 100
)

// metricsListenAddrs returns the addresses to try in order for addr (see Config.MetricsAddr).
func metricsListenAddrs(addr string) ([]string, error) {
	if addr == MetricsAuto {
		addr = "127.0.0.1:" + MetricsAuto
	}
	host, port, err := net.SplitHostPort(addr)
	if err != nil {
		return nil, fmt.Errorf("%q must be host:port, host:auto or auto, e.g. 127.0.0.1:18100, or empty to disable", addr)
	}
	if port != MetricsAuto {
		if n, err := strconv.Atoi(port); err != nil || n < 0 || n > 65535 {
			return nil, fmt.Errorf("%q: port %q must be 0-65535 or auto", addr, port)
		}
		return []string{addr}, nil
	}
	out := make([]string, MetricsPortCount)
	for i := range out {
		out[i] = net.JoinHostPort(host, strconv.Itoa(MetricsPortFirst+i))
	}
	return out, nil
}

// thresholdFlags are the flags of the registry's threshold fields.
var thresholdFlags = map[string]string{
	"maxSessions": "--max-sessions", "maxCPU": "--max-cpu", "maxMemory": "--max-memory", "maxMemoryMB": "--max-memory-mb",
}

// Validate checks the configuration without I/O; errors name the flag at fault.
func (c *Config) Validate() error {
	var errs []error
	add := func(format string, a ...any) { errs = append(errs, fmt.Errorf(format, a...)) }
	if _, err := registry.NormalizePrefix(c.Prefix); err != nil {
		add("--prefix: %v", err)
	}
	if c.Service == "" {
		add("--service: required, the service this instance belongs to, e.g. --service app")
	} else if err := registry.ValidateServiceName(c.Service); err != nil {
		add("--service: %v", err)
	}
	if c.ID != "" {
		if err := registry.ValidateInstanceID(c.ID); err != nil {
			add("--id: %v", err)
		}
	}
	if c.Address != "" && net.ParseIP(c.Address) == nil && !validHostName(c.Address) {
		add("--address: %q is neither an IP address nor a host name", c.Address)
	}
	if c.Port < 1 || c.Port > 65535 {
		add("--port: %d must be the backend's port, 1-65535", c.Port)
	}
	if err := registry.ValidateZone(c.Zone); err != nil {
		add("--zone: %v", err)
	}
	if err := registry.ValidateLabels(c.Labels); err != nil {
		add("--label: %v", err)
	}
	for flagName, u := range map[string]string{"--health-url": c.HealthURL, "--available-url": c.AvailableURL, "--sessions-url": c.SessionsURL} {
		if u == "" {
			continue
		}
		if pu, err := url.Parse(u); err != nil || (pu.Scheme != "http" && pu.Scheme != "https") || pu.Host == "" {
			add("%s: %q must be an absolute http(s) URL, e.g. http://127.0.0.1:5000/healthcheck", flagName, u)
		}
	}
	if c.SessionsMetric != "" && c.SessionsURL == "" {
		add("--sessions-metric: needs --sessions-url, the Prometheus endpoint to read it from")
	}
	if err := c.Thresholds.Validate(func(field string) string { return thresholdFlags[field] }); err != nil {
		errs = append(errs, err)
	}
	if c.Thresholds.MaxSessions > 0 && c.SessionsURL == "" {
		add("--max-sessions: needs --sessions-url to count sessions")
	}
	switch c.LoadSource {
	case LoadHost:
	case LoadProcess:
		if c.PID <= 0 {
			add("--load-source=process: needs --pid, the backend's process id")
		}
	case LoadCgroup:
		if c.CgroupDir == "" {
			add("--load-source=cgroup: needs --cgroup, e.g. /sys/fs/cgroup")
		}
	default:
		add("--load-source: %q is not one of host, process, cgroup", c.LoadSource)
	}
	if c.PID < 0 {
		add("--pid: %d must be a process id", c.PID)
	}
	if c.TTL < 2*time.Second || c.TTL > time.Hour {
		add("--ttl: %s must be between 2s and 1h (etcd leases have whole seconds)", c.TTL)
	} else if c.TTL%time.Second != 0 {
		add("--ttl: %s must be a whole number of seconds", c.TTL)
	}
	if c.Interval < 10*time.Millisecond || c.Interval > time.Hour {
		add("--interval: %s must be between 10ms and 1h", c.Interval)
	} else if c.Interval >= c.TTL {
		add("--interval: %s must be shorter than --ttl %s", c.Interval, c.TTL)
	}
	if c.Heartbeat < c.Interval {
		add("--heartbeat: %s must be at least --interval %s", c.Heartbeat, c.Interval)
	}
	if c.DrainTimeout < 0 {
		add("--drain-timeout: %s must be 0 (no wait) or more", c.DrainTimeout)
	}
	if c.DrainSettle < 0 || c.DrainSettle > time.Minute {
		add("--drain-settle: %s must be between 0 and 1m", c.DrainSettle)
	}
	if c.ProbeTimeout <= 0 {
		add("--probe-timeout: %s must be positive", c.ProbeTimeout)
	}
	if c.MetricsAddr != "" {
		if _, err := metricsListenAddrs(c.MetricsAddr); err != nil {
			add("--metrics-addr: %v", err)
		}
	}
	return errors.Join(errs...)
}

func validHostName(s string) bool {
	if len(s) == 0 || len(s) > 253 {
		return false
	}
	for _, label := range strings.Split(strings.TrimSuffix(s, "."), ".") {
		if label == "" || len(label) > 63 || label[0] == '-' || label[len(label)-1] == '-' {
			return false
		}
		for _, r := range label {
			if (r < 'a' || r > 'z') && (r < 'A' || r > 'Z') && (r < '0' || r > '9') && r != '-' {
				return false
			}
		}
	}
	return true
}
