// Command tether-controlplane watches the Tether registry in etcd and serves it to Envoy over
// xDS. With no --etcd-endpoints it runs its own embedded etcd.
package main

import (
	"context"
	"crypto/tls"
	"crypto/x509"
	"errors"
	"flag"
	"fmt"
	"io"
	"math"
	"net/netip"
	"os"
	"os/signal"
	"path/filepath"
	"strconv"
	"strings"
	"syscall"
	"time"

	"github.com/tetherlb/tether/controlplane"
	"github.com/tetherlb/tether/internal/cli"
	"github.com/tetherlb/tether/internal/ctl"
	"github.com/tetherlb/tether/internal/etcdconn"
	"github.com/tetherlb/tether/internal/version"
)

func main() {
	os.Exit(run(os.Args[1:], os.LookupEnv, os.Stderr))
}

// options are the parsed command line.
type options struct {
	cfg                    controlplane.Config
	logLevel, logFormat    string
	xdsCert, xdsKey, xdsCA string
	memory                 memoryPolicy
}

func parse(args []string, lookup func(string) (string, bool), stderr io.Writer) (*options, error) {
	fs := flag.NewFlagSet("tether-controlplane", flag.ContinueOnError)
	fs.SetOutput(stderr)
	fs.Usage = func() {
		fmt.Fprint(stderr, `Usage:
  tether-controlplane [flags]                     run the control plane
  tether-controlplane status [flags]              print the registry (services, instances, drains)
  tether-controlplane drain SERVICE/ID [flags]    drain one instance (--label k=v for a selection, --undo, --wait)
  tether-controlplane drains [SERVICE] [flags]    list the drains
  tether-controlplane service put SERVICE FILE|-  validate, then write a service configuration (get, delete)
  tether-controlplane --version                   print the version
Each command takes -h.

Flags:
`)
		fs.PrintDefaults()
	}
	o := &options{cfg: controlplane.DefaultConfig()}
	c := &o.cfg
	var etcd etcdconn.Flags
	etcd.Register(fs, "")
	var listenPort uint
	var adminHosts string
	fs.StringVar(&c.DataDir, "data-dir", c.DataDir, "data directory of the embedded etcd (used when --etcd-endpoints is empty)")
	stateFileSet := false
	fs.Func("state-file", "`file` where the control plane keeps what it served (instances, endpoints every Envoy knows, Envoys), read back at a restart so that a lease storm or a server joined while it was down costs no session; \"\" for none (default <data-dir>/controlplane-state.json)", func(v string) error {
		c.StateFile, stateFileSet = v, true
		return nil
	})
	fs.StringVar(&c.EmbeddedClientURL, "embedded-client-url", c.EmbeddedClientURL, "client URL the embedded etcd serves (agents and etcdctl connect here)")
	fs.StringVar(&c.EmbeddedPeerURL, "embedded-peer-url", c.EmbeddedPeerURL, "peer URL of the embedded etcd")
	fs.StringVar(&c.Prefix, "prefix", c.Prefix, "etcd key prefix of the registry")
	fs.StringVar(&c.XDSAddr, "xds-addr", c.XDSAddr, "listen address of the xDS (ADS) gRPC server")
	fs.StringVar(&c.AdminAddr, "admin-addr", c.AdminAddr, "listen address of the admin HTTP server (/metrics, /healthz, /readyz, /debug/config)")
	fs.StringVar(&adminHosts, "admin-hosts", "", "comma-separated host names (or IPs) the admin server answers besides loopback and its own IP, e.g. tether.example.com")
	fs.UintVar(&listenPort, "envoy-listen-port", uint(c.ListenPort), "port of the HTTP listener given to Envoy")
	fs.DurationVar(&c.CoalesceQuiet, "coalesce-quiet", c.CoalesceQuiet, "a change this long after the last push is pushed at once; changes within this window of a push are batched until quiet this long")
	fs.DurationVar(&c.CoalesceMax, "coalesce-max", c.CoalesceMax, "a batched change is pushed at the latest this long after the first of its batch")
	fs.DurationVar(&c.PublishSettle, "publish-settle", c.PublishSettle, "a new endpoint is served as DRAINING until every Envoy has acknowledged it; an Envoy that has not answered after this long stops holding it back and is reported as lagging")
	fs.Func("max-inflight-bytes", "bytes of xDS responses sent and not yet acknowledged, all Envoys together, e.g. 64MiB (default); past it Envoys' updates wait their turn and go out built from the newest state, so that a burst of changes is sent in waves rather than held in memory for every Envoy at once; 0 sets no bound", func(v string) error {
		n, err := parseBytes(v)
		if err != nil {
			return err
		}
		c.MaxInflightBytes = n
		if n == 0 {
			c.MaxInflightBytes = -1 // no bound
		}
		return nil
	})
	fs.IntVar(&c.InitialSyncs, "initial-syncs", c.InitialSyncs, "Envoys' first configurations in flight at once (sent, not yet acknowledged); the rest wait their turn, so that a restart under many Envoys does not hold all their configurations in memory at once")
	fs.Float64Var(&c.HoldShare, "hold-share", c.HoldShare, "when more than this share of a service's instances leave the registry within --hold-window, keep serving them for --hold-grace (negative disables)")
	fs.DurationVar(&c.HoldGrace, "hold-grace", c.HoldGrace, "how long a mass disappearance is held back")
	fs.DurationVar(&c.HoldWindow, "hold-window", c.HoldWindow, "removals of one service within this long of the first count together against --hold-share (about the agents' --ttl)")
	fs.DurationVar(&c.VanishGrace, "vanish-grace", c.VanishGrace, "an instance that leaves the registry without draining (a lost lease, an agent restarting) stays served as DRAINING this long, so that its sessions keep their server while its agent comes back (negative disables)")
	fs.DurationVar(&c.StaleAfter, "stale-after", c.StaleAfter, "a replica that has not confirmed etcd's revision for this long fails /readyz and closes its xDS streams once, so that Envoys move to a replica that follows etcd (negative disables)")
	fs.BoolVar(&c.AllowLoopback, "allow-loopback-backends", false, "accept instances registered on loopback addresses (127.0.0.1, ::1): only for a demo or tests with Envoy and the backends on one host")
	fs.Func("deny-backend-cidr", "refuse instances whose address is in this CIDR (repeatable, or comma-separated), e.g. the gateway hosts' own network, so that Envoy is never pointed at them", func(v string) error {
		for _, f := range strings.Split(v, ",") {
			p, err := netip.ParsePrefix(strings.TrimSpace(f))
			if err != nil {
				return fmt.Errorf("%q is not a CIDR such as 10.0.0.0/24 or fd00::/64", f)
			}
			c.DenyBackendCIDRs = append(c.DenyBackendCIDRs, p.Masked())
		}
		return nil
	})
	fs.IntVar(&c.MaxServices, "max-services", c.MaxServices, "services served at most; past it the newest services (by etcd create revision) are left out and reported")
	fs.IntVar(&c.MaxInstancesPerService, "max-instances-per-service", c.MaxInstancesPerService, "instances of one service served at most; past it the newest are left out and reported")
	fs.IntVar(&c.MaxConnsPerPeer, "max-conns-per-peer", c.MaxConnsPerPeer, "xDS connections open at once from one IP address; more are closed as they arrive (an Envoy holds one)")
	fs.IntVar(&c.MaxStreamsPerConn, "max-streams-per-conn", c.MaxStreamsPerConn, "xDS streams at once on one connection; more wait (an Envoy opens one with ADS, four without)")
	fs.StringVar(&o.xdsCert, "xds-tls-cert", "", "certificate file to serve xDS over TLS (with --xds-tls-key)")
	fs.StringVar(&o.xdsKey, "xds-tls-key", "", "private key file to serve xDS over TLS")
	fs.StringVar(&o.xdsCA, "xds-client-ca", "", "CA file: require Envoys to present a client certificate it signs (mutual TLS)")
	fs.Func("memory-limit", "Go's soft memory limit: auto (default: 90% of a container's memory limit, else the live heap x1.25 and at least 300MiB, so that a burst of changes is collected rather than held), off (Go's default: twice the live heap), or a size such as 1GiB; GOMEMLIMIT is obeyed in auto", func(v string) error {
		p, err := parseMemoryPolicy(v)
		o.memory = p
		return err
	})
	fs.StringVar(&o.logLevel, "log-level", "info", "log level: debug, info, warn, error")
	fs.StringVar(&o.logFormat, "log-format", "", "log format: json or console (default: console on a terminal, else json)")
	if err := fs.Parse(args); err != nil {
		return nil, err
	}
	if fs.NArg() > 0 {
		return nil, fmt.Errorf("unexpected argument %q: tether-controlplane takes only flags (see -h)", fs.Arg(0))
	}
	if err := cli.BindEnv(fs, lookup); err != nil {
		return nil, err
	}
	c.ListenPort = uint32(min(listenPort, math.MaxUint32))
	for _, h := range strings.Split(adminHosts, ",") {
		if h = strings.TrimSpace(h); h != "" {
			c.AdminHosts = append(c.AdminHosts, h)
		}
	}
	var etcdErr error
	if etcdErr = etcd.NeedEndpoints(); etcdErr == nil && etcd.Endpoints != "" {
		c.Etcd, etcdErr = etcd.ClientConfig(lookup)
	}
	if !stateFileSet && etcd.Endpoints == "" {
		// The embedded etcd's directory is Tether's own; beside an external etcd no directory
		// is, and the working directory may not be writable (a container).
		c.StateFile = filepath.Join(c.DataDir, "controlplane-state.json")
	}
	var tlsErr error
	c.XDSTLS, tlsErr = xdsTLS(o.xdsCert, o.xdsKey, o.xdsCA)
	if err := errors.Join(etcdErr, tlsErr, c.Validate()); err != nil {
		return nil, err
	}
	return o, nil
}

// xdsTLS builds the xDS server's TLS configuration, or nil for plaintext.
func xdsTLS(certFile, keyFile, caFile string) (*tls.Config, error) {
	if certFile == "" && keyFile == "" {
		if caFile != "" {
			return nil, errors.New("--xds-client-ca needs --xds-tls-cert and --xds-tls-key")
		}
		return nil, nil
	}
	if certFile == "" || keyFile == "" {
		return nil, errors.New("--xds-tls-cert and --xds-tls-key: give both or neither")
	}
	cert, err := tls.LoadX509KeyPair(certFile, keyFile)
	if err != nil {
		return nil, fmt.Errorf("--xds-tls-cert/--xds-tls-key: %w", err)
	}
	tc := &tls.Config{Certificates: []tls.Certificate{cert}, MinVersion: tls.VersionTLS12}
	if caFile != "" {
		pem, err := os.ReadFile(caFile)
		if err != nil {
			return nil, fmt.Errorf("--xds-client-ca: %w", err)
		}
		pool := x509.NewCertPool()
		if !pool.AppendCertsFromPEM(pem) {
			return nil, fmt.Errorf("--xds-client-ca: %s holds no PEM certificate", caFile)
		}
		tc.ClientCAs = pool
		tc.ClientAuth = tls.RequireAndVerifyClientCert
	}
	return tc, nil
}

func run(args []string, lookup func(string) (string, bool), stderr *os.File) int {
	if version.Requested(args) {
		version.Print(os.Stdout, "tether-controlplane")
		return 0
	}
	if len(args) > 0 {
		// The operator's commands; without one the binary runs the control plane.
		if sub, ok := ctl.Commands[args[0]]; ok {
			ctx, stop := signal.NotifyContext(context.Background(), os.Interrupt, syscall.SIGTERM)
			defer stop()
			return sub(ctx, args[1:], lookup, os.Stdout, stderr)
		}
	}
	o, err := parse(args, lookup, stderr)
	if errors.Is(err, flag.ErrHelp) {
		return 0
	}
	if err != nil {
		fmt.Fprintf(stderr, "tether-controlplane: %v\n", err)
		return 2
	}
	log, err := cli.NewLogger(o.logLevel, o.logFormat, stderr)
	if err != nil {
		fmt.Fprintf(stderr, "tether-controlplane: %v\n", err)
		return 2
	}
	o.cfg.Logger = log
	follow := setMemoryLimit(log, nil, o.memory)
	ctx, stop := signal.NotifyContext(context.Background(), os.Interrupt, syscall.SIGTERM)
	defer stop()
	if follow != nil {
		go follow(ctx)
	}
	start := time.Now()
	if err := controlplane.Run(ctx, o.cfg); err != nil {
		log.Error().Err(err).Msg("control plane stopped")
		return 1
	}
	log.Info().Dur("uptime", time.Since(start).Round(time.Millisecond)).Msg("control plane stopped cleanly")
	return 0
}

// parseBytes reads a size in bytes, with an optional KiB, MiB or GiB suffix.
func parseBytes(v string) (int64, error) {
	num, mult := strings.TrimSpace(v), int64(1)
	for _, u := range []struct {
		suffix string
		mult   int64
	}{{"KiB", 1 << 10}, {"MiB", 1 << 20}, {"GiB", 1 << 30}} {
		if n, ok := strings.CutSuffix(num, u.suffix); ok {
			num, mult = strings.TrimSpace(n), u.mult
			break
		}
	}
	n, err := strconv.ParseInt(num, 10, 64)
	if err != nil || n < 0 || n > (1<<50)/mult {
		return 0, fmt.Errorf("%q is not a size such as 64MiB, 65536 or 0", v)
	}
	return n * mult, nil
}
