package main

import (
	"errors"
	"flag"
	"fmt"
	"io"
	"net/url"

	"github.com/rs/zerolog"
	"github.com/tetherlb/tether/agent"
	"github.com/tetherlb/tether/internal/cli"
	"github.com/tetherlb/tether/internal/etcdconn"
)

// options are the parsed command line: the agent's configuration and the logger settings.
type options struct {
	cfg             agent.Config
	logLevel        string
	logFormat       string
	healthCheckFile string
	wisejVersion    string
	hc              *agent.HealthCheck // the --healthcheck-file, when given
	// derivedSessionsURL is set when --sessions-url was derived (see defaultSessionsURL).
	derivedSessionsURL bool
	// fs is the parsed flag set, for checkEnv.
	fs *flag.FlagSet
	// given holds the flags set on the command line or in the environment, by name, with
	// their values as parsed (for the command line stored with a Windows service).
	given map[string]string
}

// parseFlags reads args and the TETHER_* environment into options. Errors name the flag,
// variable or file field at fault.
func parseFlags(args []string, lookup func(string) (string, bool), stderr io.Writer) (*options, error) {
	o := &options{cfg: agent.DefaultConfig()}
	c := &o.cfg
	var etcd etcdconn.Flags
	fs := flag.NewFlagSet("tether-agent", flag.ContinueOnError)
	fs.SetOutput(stderr)
	fs.Usage = func() {
		fmt.Fprintf(stderr, "Usage: tether-agent --service NAME --port PORT [flags]\n"+
			"       tether-agent service install|uninstall|start|stop ... (Windows service; see tether-agent service)\n"+
			"       tether-agent --version\n\n"+
			"Registers one backend instance in etcd and keeps its state and load up to date.\n"+
			"Every flag can also be set as TETHER_<FLAG> (e.g. TETHER_MAX_SESSIONS); the command line wins.\n\n")
		fs.PrintDefaults()
	}
	etcd.Register(fs, "127.0.0.1:2379")
	fs.StringVar(&c.Prefix, "prefix", c.Prefix, "etcd key prefix")
	fs.StringVar(&c.Service, "service", "", "service name of this instance (required)")
	fs.StringVar(&c.ID, "id", "", "instance id, stable across restarts (default <hostname>-<port>)")
	fs.StringVar(&c.Address, "address", "", "address Envoy connects to: IP, or host name resolved at start (default: the host's primary address)")
	fs.IntVar(&c.Port, "port", 0, "backend port (required)")
	fs.StringVar(&c.Zone, "zone", "", "zone of the instance, e.g. eu-west-1a")
	fs.Var(cli.Labels(c.Labels), "label", "label key=value (repeatable, or comma-separated)")
	fs.StringVar(&c.HealthURL, "health-url", "", "backend health URL; 2xx (Wisej's 202 included) is healthy")
	fs.StringVar(&c.AvailableURL, "available-url", "", "URL where the application may veto new sessions: non-2xx means full")
	fs.StringVar(&o.healthCheckFile, "healthcheck-file", "", "Wisej HealthCheck.json to read thresholds from (flags override it)")
	fs.StringVar(&o.wisejVersion, "wisej-version", agent.WisejAuto, "Wisej generation that wrote --healthcheck-file: 2 (maxMemory in percent), 3 (in MB) or auto (over 100 is MB)")
	fs.IntVar(&c.Thresholds.MaxSessions, "max-sessions", 0, "full at this many sessions (0 = unlimited)")
	fs.Float64Var(&c.Thresholds.MaxCPU, "max-cpu", 0, "full over this CPU percent (0 = unlimited)")
	fs.Float64Var(&c.Thresholds.MaxMemory, "max-memory", 0, "full over this memory percent (0 = unlimited)")
	fs.Float64Var(&c.Thresholds.MaxMemoryMB, "max-memory-mb", 0, "full over this much memory in MiB (0 = unlimited)")
	fs.StringVar(&c.SessionsURL, "sessions-url", "", `URL answering {"sessions": N}, or Prometheus text with --sessions-metric`)
	fs.StringVar(&c.SessionsMetric, "sessions-metric", "", "Prometheus metric at --sessions-url whose samples sum to the session count")
	fs.StringVar(&c.LoadSource, "load-source", "", "CPU and memory of: host, process (--pid) or cgroup (--cgroup) (default host, process when --pid is set)")
	fs.IntVar(&c.PID, "pid", 0, "backend process id, for --load-source=process")
	fs.StringVar(&c.CgroupDir, "cgroup", c.CgroupDir, "cgroup v2 directory, for --load-source=cgroup (the container's own by default)")
	fs.DurationVar(&c.TTL, "ttl", c.TTL, "lease TTL: a dead agent's instance disappears after it")
	fs.DurationVar(&c.Interval, "interval", c.Interval, "sampling and probing period")
	fs.DurationVar(&c.Heartbeat, "heartbeat", c.Heartbeat, "longest time between two writes of an unchanged instance")
	fs.DurationVar(&c.DrainTimeout, "drain-timeout", c.DrainTimeout, "longest wait for sessions to end on shutdown")
	fs.DurationVar(&c.DrainSettle, "drain-settle", c.DrainSettle, "wait after publishing draining before a sample may find no session left (Envoy gets the push meanwhile)")
	fs.DurationVar(&c.ProbeTimeout, "probe-timeout", c.ProbeTimeout, "timeout of each HTTP probe")
	fs.StringVar(&c.MetricsAddr, "metrics-addr", c.MetricsAddr, "address of /metrics and /healthz: host:port, or auto (127.0.0.1, first free port from 18100; also host:auto); empty disables")
	fs.StringVar(&o.logLevel, "log-level", "info", "debug, info, warn or error")
	fs.StringVar(&o.logFormat, "log-format", "", "json or console (default console on a terminal, else json)")

	if err := fs.Parse(args); err != nil {
		return nil, err
	}
	if fs.NArg() > 0 {
		return nil, fmt.Errorf("unexpected argument %q: flags are --name=value", fs.Arg(0))
	}
	if err := cli.BindEnv(fs, lookup); err != nil {
		return nil, err
	}
	o.fs = fs
	etcdCfg, err := etcd.ClientConfig(lookup)
	if err != nil {
		return nil, err
	}
	c.Etcd = etcdCfg
	set := map[string]bool{}
	o.given = map[string]string{}
	fs.Visit(func(f *flag.Flag) { set[f.Name], o.given[f.Name] = true, f.Value.String() })
	if c.LoadSource == "" {
		c.LoadSource = agent.LoadHost
		if c.PID > 0 {
			c.LoadSource = agent.LoadProcess
		}
	}
	if o.healthCheckFile != "" {
		hc, err := agent.LoadHealthCheck(o.healthCheckFile, o.wisejVersion)
		if err != nil {
			return nil, err
		}
		th := hc.Thresholds()
		if !set["max-sessions"] {
			c.Thresholds.MaxSessions = th.MaxSessions
		}
		if !set["max-cpu"] {
			c.Thresholds.MaxCPU = th.MaxCPU
		}
		if !set["max-memory"] {
			c.Thresholds.MaxMemory = th.MaxMemory
		}
		if !set["max-memory-mb"] {
			c.Thresholds.MaxMemoryMB = th.MaxMemoryMB
		}
		o.hc = &hc
	}
	if c.SessionsURL == "" && c.Thresholds.MaxSessions > 0 {
		c.SessionsURL = defaultSessionsURL(c.HealthURL, c.Port)
		o.derivedSessionsURL = true
	}
	if err := c.Validate(); err != nil {
		return nil, err
	}
	return o, nil
}

// checkEnv refuses TETHER_* variables of environ that set nothing (a misspelt name).
func (o *options) checkEnv(environ []string) error {
	return cli.UnknownEnv(o.fs, environ, etcdconn.PasswordEnv)
}

// defaultSessionsURL is where sessions are counted when --max-sessions is set without
// --sessions-url: /sessions on the health URL's host, else on 127.0.0.1:<port>.
func defaultSessionsURL(healthURL string, port int) string {
	if u, err := url.Parse(healthURL); err == nil && u.Host != "" && (u.Scheme == "http" || u.Scheme == "https") {
		return (&url.URL{Scheme: u.Scheme, Host: u.Host, Path: "/sessions"}).String()
	}
	return fmt.Sprintf("http://127.0.0.1:%d/sessions", port)
}

// logDefaults tells the operator about derived settings and what the agent did with the
// HealthCheck.json.
func (o *options) logDefaults(log zerolog.Logger) {
	if o.derivedSessionsURL {
		log.Info().Str("sessionsUrl", o.cfg.SessionsURL).Msg("--max-sessions without --sessions-url: counting sessions here")
	}
	if o.hc == nil {
		return
	}
	hc := *o.hc
	if hc.MemoryAmbiguous && hc.Enabled {
		log.Warn().Float64("maxMemory", hc.MaxMemory).Str("file", o.healthCheckFile).
			Msg("HealthCheck.json maxMemory read as a percentage (Wisej 2); Wisej 3 means MB: pass --wisej-version 3 (or 2 to silence this)")
	}
	if !hc.Enabled {
		log.Info().Str("file", o.healthCheckFile).Msg(`HealthCheck.json has "enabled": false: its thresholds are ignored`)
	}
	log.Info().Int("returnCode", hc.ReturnCode).Int("retryAfterSeconds", hc.RetryAfterMinutes*60).Str("returnUrl", hc.ReturnURL).
		Msg("HealthCheck.json overload answer: in Tether it is the service's \"overload\" setting in etcd, not the agent's")
}

// isHelp reports a -h/--help request.
func isHelp(err error) bool { return errors.Is(err, flag.ErrHelp) }
