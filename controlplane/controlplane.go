// Package controlplane watches the etcd registry and serves it to Envoy over xDS (ADS, both
// state-of-the-world and delta), with an admin HTTP server for metrics, health and debugging.
package controlplane

import (
	"cmp"
	"context"
	"crypto/tls"
	"errors"
	"fmt"
	"net"
	"net/http"
	"net/netip"
	"path/filepath"
	"strconv"
	"strings"
	"syscall"
	"time"

	clusterservice "github.com/envoyproxy/go-control-plane/envoy/service/cluster/v3"
	discovery "github.com/envoyproxy/go-control-plane/envoy/service/discovery/v3"
	endpointservice "github.com/envoyproxy/go-control-plane/envoy/service/endpoint/v3"
	listenerservice "github.com/envoyproxy/go-control-plane/envoy/service/listener/v3"
	routeservice "github.com/envoyproxy/go-control-plane/envoy/service/route/v3"
	serverv3 "github.com/envoyproxy/go-control-plane/pkg/server/v3"
	"github.com/rs/zerolog"
	clientv3 "go.etcd.io/etcd/client/v3"
	"go.uber.org/zap"
	"golang.org/x/sync/errgroup"
	"google.golang.org/grpc"
	"google.golang.org/grpc/credentials"
	"google.golang.org/grpc/keepalive"

	"github.com/tetherlb/tether/controlplane/admin"
	"github.com/tetherlb/tether/controlplane/translate"
	"github.com/tetherlb/tether/controlplane/xdscache"
	"github.com/tetherlb/tether/internal/etcdconn"
	"github.com/tetherlb/tether/internal/etcdembed"
	"github.com/tetherlb/tether/registry"
)

// Config configures a control plane. The binary starts from DefaultConfig, applies its flags
// and calls Validate once; Start gives the zero fields of a partial Config (tests, the
// simulation, the benchmark) their DefaultConfig values, then validates.
type Config struct {
	// Etcd is the etcd client configuration; with no endpoints an embedded etcd is started.
	Etcd clientv3.Config
	// DataDir holds the embedded etcd's data.
	DataDir string
	// StateFile is where the control plane keeps what it served, read back at its next start
	// (see memory.go); empty: no memory across a restart.
	StateFile string
	// EmbeddedClientURL and EmbeddedPeerURL are the embedded etcd's URLs.
	EmbeddedClientURL, EmbeddedPeerURL string
	// Prefix is the registry's etcd key prefix.
	Prefix string
	// XDSAddr and AdminAddr are the listen addresses of the xDS gRPC and admin HTTP servers.
	XDSAddr, AdminAddr string
	// AdminHosts are the Host names (or IPs) the admin server answers besides loopback and
	// its own listen IP: it refuses any other, so that a page rebinding a DNS name to
	// 127.0.0.1 in a browser on this host cannot read it.
	AdminHosts []string
	// XDSTLS, when set, serves xDS over TLS (require client certificates for mutual TLS).
	XDSTLS *tls.Config
	// ListenPort is the Envoy listener port.
	ListenPort uint32
	// CoalesceQuiet and CoalesceMax bound how registry changes are batched into one push: a
	// change CoalesceQuiet after the last push is pushed at once; later ones wait for
	// CoalesceQuiet of quiet, at most CoalesceMax (see coalescer).
	CoalesceQuiet, CoalesceMax time.Duration
	// PublishSettle bounds how long an Envoy that neither ACKs nor NACKs delays the promotion
	// of a new endpoint from DRAINING (two-phase publication, see phase.go); positive (Start
	// gives a zero the default, as to every field; the flag refuses 0).
	PublishSettle time.Duration
	// InitialSyncs bounds the Envoys' first responses of a type in flight (sent and not yet
	// answered): a restart under a thousand Envoys sends each several megabytes (see
	// xdscache); positive.
	InitialSyncs int
	// MaxInflightBytes bounds the bytes of xDS responses sent and not yet answered, all
	// Envoys together, so that a burst of changes is sent in waves rather than encoded for
	// every Envoy at once (see xdscache/budget.go); 0 takes the default, negative sets none.
	MaxInflightBytes int64
	// HoldShare, HoldWindow and HoldGrace configure the mass-disappearance guard: when more
	// than HoldShare of a service's instances leave the registry within HoldWindow of the
	// first removal (draining ones aside), they stay served for HoldGrace. HoldWindow should
	// be about the agents' lease TTL. HoldShare < 0 disables the guard; 0 takes the default.
	HoldShare  float64
	HoldGrace  time.Duration
	HoldWindow time.Duration
	// VanishGrace keeps an instance that left the registry without draining (a lost lease,
	// an agent restarting) in the configuration as DRAINING for this long, so that a server
	// whose agent comes back at once never leaves Envoy. Negative disables; 0 takes the default.
	VanishGrace time.Duration
	// StaleAfter bounds how long the replica serves without confirming etcd's revision (a
	// linearizable read every StaleAfter/3 whose revision the watch has reached): past it,
	// /readyz fails and the xDS streams are closed once, so that Envoys move to a replica
	// that follows etcd. Negative disables; 0 takes the default.
	StaleAfter time.Duration
	// AllowLoopback accepts instances on loopback addresses. Only for a demo or tests with
	// Envoy and the backends on one host: otherwise a registered 127.0.0.1 makes Envoy
	// connect to itself or to whatever listens on the gateway host.
	AllowLoopback bool
	// DenyBackendCIDRs are ranges no instance is served in (--deny-backend-cidr): the
	// site's own addresses that Envoy must never be pointed at, such as the gateway hosts
	// (Envoy's admin port) or the control plane's network. A denied instance is rejected
	// alone and reported like any rejected key.
	DenyBackendCIDRs []netip.Prefix
	// MaxServices and MaxInstancesPerService bound what is served: past them the newest
	// services, and the newest instances of a service, are left out and reported, so that
	// a registry filled by a holder of agent credentials cannot take the control plane's
	// and every Envoy's memory. Positive.
	MaxServices, MaxInstancesPerService int
	// MaxConnsPerPeer bounds the xDS connections open at once from one IP address: more
	// are closed as they are accepted. Positive.
	MaxConnsPerPeer int
	// MaxStreamsPerConn bounds the streams of one xDS connection (HTTP/2's
	// MAX_CONCURRENT_STREAMS: a client's further streams wait). Positive.
	MaxStreamsPerConn int
	// ShutdownTimeout bounds the graceful stop of the servers.
	ShutdownTimeout time.Duration
	// Logger receives the control plane's logs.
	Logger zerolog.Logger
}

// Defaults of Config.
const (
	// DefaultXDSAddr is loopback: xDS hands the whole configuration to, and keeps streams
	// for, anyone who reaches it, so a start without flags (the quick start, Envoy on the
	// same host) exposes nothing and needs no warning. Envoys on other hosts take an
	// explicit --xds-addr (with TLS, or a warning at start); the container image sets
	// TETHER_XDS_ADDR=:18000, since loopback in a container reaches no Envoy.
	DefaultXDSAddr    = "127.0.0.1:18000"
	DefaultHoldWindow = 10 * time.Second // the agents' default --ttl
	// DefaultMaxServices and DefaultMaxInstancesPerService are far above Tether's use (tens
	// of services of a few to a few dozen servers; performance.md measures 1,000 services
	// and 1,000 Envoys) and far below harm: at the bounds a registry is 2,000 clusters and
	// route entries and at most 2 million endpoints, where one service of 1,000 instances
	// is a 100 KiB assignment per Envoy, while an agent's credentials otherwise allow
	// without end, each service adding a cluster to every Envoy's configuration.
	DefaultMaxServices            = 2000
	DefaultMaxInstancesPerService = 1000
)

// DefaultConfig is the control plane's default configuration: embedded etcd in tether-data,
// the default addresses and timings. The binary's flags show and override it; Start also
// gives the zero fields of a partial Config these values.
func DefaultConfig() Config {
	return Config{
		DataDir:                "tether-data",
		EmbeddedClientURL:      "http://127.0.0.1:2379",
		EmbeddedPeerURL:        "http://127.0.0.1:2380",
		Prefix:                 registry.DefaultPrefix,
		XDSAddr:                DefaultXDSAddr,
		AdminAddr:              "127.0.0.1:18001",
		ListenPort:             translate.DefaultListenPort,
		CoalesceQuiet:          5 * time.Millisecond,
		CoalesceMax:            50 * time.Millisecond,
		PublishSettle:          DefaultPublishSettle,
		InitialSyncs:           xdscache.DefaultMaxInitialSyncs,
		MaxInflightBytes:       xdscache.DefaultMaxInflightBytes,
		HoldShare:              0.5,
		HoldGrace:              30 * time.Second,
		HoldWindow:             DefaultHoldWindow,
		VanishGrace:            DefaultVanishGrace,
		StaleAfter:             DefaultStaleAfter,
		MaxServices:            DefaultMaxServices,
		MaxInstancesPerService: DefaultMaxInstancesPerService,
		MaxConnsPerPeer:        DefaultMaxConnsPerPeer,
		MaxStreamsPerConn:      DefaultMaxStreamsPerConn,
		ShutdownTimeout:        10 * time.Second,
	}
}

// withDefaults gives the zero fields of a partial Config their DefaultConfig values (and a
// negative where the flag's help says so), so that a caller names only what it changes.
func (c *Config) withDefaults() {
	d := DefaultConfig()
	c.Prefix = cmp.Or(c.Prefix, d.Prefix)
	c.XDSAddr = cmp.Or(c.XDSAddr, d.XDSAddr)
	c.AdminAddr = cmp.Or(c.AdminAddr, d.AdminAddr)
	c.EmbeddedClientURL = cmp.Or(c.EmbeddedClientURL, d.EmbeddedClientURL)
	c.EmbeddedPeerURL = cmp.Or(c.EmbeddedPeerURL, d.EmbeddedPeerURL)
	c.DataDir = cmp.Or(c.DataDir, d.DataDir)
	c.ListenPort = cmp.Or(c.ListenPort, d.ListenPort)
	if p, err := registry.NormalizePrefix(c.Prefix); err == nil {
		c.Prefix = p
	}
	for _, f := range []struct{ v, def *time.Duration }{{&c.CoalesceQuiet, &d.CoalesceQuiet}, {&c.CoalesceMax, &d.CoalesceMax},
		{&c.PublishSettle, &d.PublishSettle}, {&c.HoldGrace, &d.HoldGrace}, {&c.HoldWindow, &d.HoldWindow}, {&c.ShutdownTimeout, &d.ShutdownTimeout}} {
		if *f.v <= 0 {
			*f.v = *f.def
		}
	}
	// Negative is meaningful for these (off, or no bound): only zero takes the default.
	c.VanishGrace = cmp.Or(c.VanishGrace, d.VanishGrace)
	c.StaleAfter = cmp.Or(c.StaleAfter, d.StaleAfter)
	c.HoldShare = cmp.Or(c.HoldShare, d.HoldShare)
	c.MaxInflightBytes = cmp.Or(c.MaxInflightBytes, d.MaxInflightBytes)
	for _, f := range []struct{ v, def *int }{{&c.InitialSyncs, &d.InitialSyncs}, {&c.MaxServices, &d.MaxServices},
		{&c.MaxInstancesPerService, &d.MaxInstancesPerService}, {&c.MaxConnsPerPeer, &d.MaxConnsPerPeer}, {&c.MaxStreamsPerConn, &d.MaxStreamsPerConn}} {
		if *f.v <= 0 {
			*f.v = *f.def
		}
	}
}

// Validate checks a whole configuration (DefaultConfig with the flags applied) without I/O and
// returns every error, each naming the flag at fault. Start validates after withDefaults.
func (c *Config) Validate() error {
	var errs []error
	add := func(format string, a ...any) { errs = append(errs, fmt.Errorf(format, a...)) }
	if _, err := registry.NormalizePrefix(c.Prefix); err != nil {
		add("--prefix: %w", err)
	}
	for _, a := range []struct{ flag, v string }{{"--xds-addr", c.XDSAddr}, {"--admin-addr", c.AdminAddr}} {
		if err := checkListenAddr(a.v); err != nil {
			add("%s: %w", a.flag, err)
		}
	}
	for _, h := range c.AdminHosts {
		if _, err := netip.ParseAddr(strings.Trim(h, "[]")); err != nil && strings.Trim(strings.ToLower(h), "abcdefghijklmnopqrstuvwxyz0123456789.-") != "" {
			add("--admin-hosts: %q must be a host name or an IP, without scheme or port", h)
		}
	}
	if c.ListenPort < 1 || c.ListenPort > 65535 {
		add("--envoy-listen-port: %d is not a port; use 1-65535, e.g. 10000", c.ListenPort)
	}
	if c.CoalesceQuiet <= 0 || c.CoalesceMax <= 0 {
		add("--coalesce-quiet and --coalesce-max must be positive, e.g. 5ms and 50ms")
	} else if c.CoalesceMax < c.CoalesceQuiet {
		add("--coalesce-max (%s) must not be shorter than --coalesce-quiet (%s)", c.CoalesceMax, c.CoalesceQuiet)
	}
	if c.PublishSettle <= 0 {
		add("--publish-settle must be positive, e.g. 10s")
	}
	if c.InitialSyncs <= 0 {
		add("--initial-syncs must be positive, e.g. 8")
	}
	if c.MaxConnsPerPeer <= 0 || c.MaxStreamsPerConn <= 0 {
		add("--max-conns-per-peer and --max-streams-per-conn must be positive, e.g. 64 and 16")
	}
	if c.MaxServices <= 0 || c.MaxInstancesPerService <= 0 {
		add("--max-services and --max-instances-per-service must be positive, e.g. 2000 and 1000")
	}
	if c.HoldShare > 1 {
		add("--hold-share: %g must be between 0 and 1 (a share of a service's instances), or negative to disable", c.HoldShare)
	}
	return errors.Join(errs...)
}

// checkListenAddr checks a listen address's form, before the embedded etcd starts: host:port
// (host may be empty for every interface) with a port of 0-65535.
func checkListenAddr(addr string) error {
	_, port, err := net.SplitHostPort(addr)
	if err != nil {
		return fmt.Errorf("%q is not host:port, e.g. 127.0.0.1:18001 or :18000", addr)
	}
	if n, err := strconv.Atoi(port); err != nil || n < 0 || n > 65535 {
		return fmt.Errorf("%q: port %q must be a number, 0-65535", addr, port)
	}
	return nil
}

// ControlPlane is a running control plane.
type ControlPlane struct {
	cfg      Config
	log      zerolog.Logger
	m        *metrics
	embedded *etcdembed.Server
	cli      *clientv3.Client
	watcher  *registry.Watcher
	pub      *publisher
	phase    *phaser
	xds      *xdscache.Cache
	cutter   *streamCutter
	grpc     *grpc.Server
	admin    *http.Server
	xdsLn    net.Listener
	adminLn  net.Listener

	cancel context.CancelFunc
	g      *errgroup.Group
	err    error // the group's first error, set before done is closed
	done   chan struct{}
}

// Run starts a control plane and blocks until ctx ends and it has shut down.
func Run(ctx context.Context, cfg Config) error {
	cp, err := Start(ctx, cfg)
	if err != nil {
		return err
	}
	return cp.Wait()
}

// Start starts the control plane: the embedded etcd when no endpoints are configured, the
// registry watch, the xDS and admin servers. It returns once every listener is bound; the
// control plane shuts down when ctx ends (see Wait).
func Start(ctx context.Context, cfg Config) (*ControlPlane, error) {
	cfg.withDefaults()
	if err := cfg.Validate(); err != nil {
		return nil, err
	}
	ctx, cancel := context.WithCancel(ctx)
	// The first component to fail cancels ctx, which stops the others.
	g, ctx := errgroup.WithContext(ctx)
	cp := &ControlPlane{cfg: cfg, log: cfg.Logger, m: newMetrics(), cancel: cancel, g: g, done: make(chan struct{})}
	ok := false
	defer func() {
		if !ok {
			cancel()
			// Nothing serves the listeners yet: close them here, or a failed bind of the
			// second would leave the first bound.
			for _, ln := range []net.Listener{cp.xdsLn, cp.adminLn} {
				if ln != nil {
					ln.Close()
				}
			}
			cp.closeAll()
		}
	}()

	if len(cfg.Etcd.Endpoints) == 0 {
		dir, err := filepath.Abs(cfg.DataDir)
		if err != nil {
			return nil, fmt.Errorf("--data-dir %q: %w", cfg.DataDir, err)
		}
		cp.log.Info().Str("dataDir", dir).Str("clientURL", cfg.EmbeddedClientURL).Msg("no --etcd-endpoints: starting embedded etcd")
		e, err := etcdembed.Start(ctx, etcdembed.Config{Dir: dir, ClientURL: cfg.EmbeddedClientURL, PeerURL: cfg.EmbeddedPeerURL})
		if errors.Is(err, syscall.EADDRINUSE) {
			return nil, fmt.Errorf("%w (is another etcd already on %s? pass --etcd-endpoints to use it)", err, cfg.EmbeddedClientURL)
		}
		if err != nil {
			return nil, err
		}
		cp.embedded = e
		cfg.Etcd.Endpoints = e.Endpoints
	}
	cfg.Etcd.DialTimeout = cmp.Or(cfg.Etcd.DialTimeout, 5*time.Second)
	cfg.Etcd.Context = ctx
	cfg.Etcd.Logger = cmp.Or(cfg.Etcd.Logger, zap.NewNop()) // etcd client retries are reported by the watcher
	// With --etcd-user the client authenticates at once: wait for etcd as without a user.
	cli, err := etcdconn.Dial(ctx, cfg.Etcd, func(err error, wait time.Duration) {
		cp.log.Warn().Err(err).Strs("endpoints", cfg.Etcd.Endpoints).Dur("retryIn", wait).Msg("etcd not reachable yet")
	})
	if err != nil {
		return nil, fmt.Errorf("etcd client for %v: %w", cfg.Etcd.Endpoints, err)
	}
	cp.cli = cli

	if cp.xdsLn, err = net.Listen("tcp", cfg.XDSAddr); err != nil {
		return nil, fmt.Errorf("--xds-addr %s: %w", cfg.XDSAddr, err)
	}
	cp.xdsLn = newPeerLimiter(cp.xdsLn, cfg.MaxConnsPerPeer, cp.log.With().Str("component", "xds").Logger(),
		func() { cp.m.refused.WithLabelValues(RefusePeerConns).Inc() })
	if plaintextBeyondLoopback(cfg.XDSTLS, cp.xdsLn.Addr()) {
		cp.log.Warn().Str("xds", cp.xdsLn.Addr().String()).
			Msg("xDS is served in plaintext beyond loopback: anyone who reaches this port can read the whole configuration and open streams; pass --xds-tls-cert/--xds-tls-key (and --xds-client-ca) or listen on 127.0.0.1")
	}

	// Dependencies run one way: the cache tells in of answers and closes, the phaser reads
	// the cache and in, the publisher feeds both and publishes the phaser's promotions.
	in := newAnswers()
	cache := newXDSCache(cp.log, cp.m, in, cfg.InitialSyncs, cfg.MaxServices, cfg.MaxInflightBytes)
	cp.m.budget(cache.Budget)
	link := newReplicaLink(cli, cfg.Prefix, cp.xdsLn.Addr(), cfg.PublishSettle, cfg.StaleAfter, cp.log.With().Str("component", "replicas").Logger(), in.signal)
	phase := newPhaser(cp.log.With().Str("component", "phase").Logger(), cp.m, cfg.PublishSettle, cache, in, link)
	cp.phase, cp.xds = phase, cache
	guard := newRemovalGuard(cfg.HoldShare, cfg.HoldGrace, cfg.HoldWindow, cp.log.With().Str("component", "guard").Logger(),
		func(svc string, n int) { cp.m.massRemovals.WithLabelValues(svc).Add(float64(n)) })
	guard.lookback = restartLookback(cfg)
	cp.pub = newPublisher(cp.log, cp.m, cache, phase, translate.Options{ListenPort: cfg.ListenPort, PublishSettle: cfg.PublishSettle}, cfg.CoalesceQuiet, cfg.CoalesceMax, guard)
	cp.pub.limits = registryLimits{prefix: cfg.Prefix, services: cfg.MaxServices, perService: cfg.MaxInstancesPerService}
	if cfg.VanishGrace > 0 {
		cp.pub.vanish = newVanishGrace(cfg.VanishGrace)
		cp.pub.vanish.lookback = restartLookback(cfg)
	}
	if m := readMemory(cfg.StateFile, cfg.Prefix, cp.log.With().Str("component", "memory").Logger()); m != nil {
		phase.recall(m, time.Now())
		cp.pub.recall = m
	}
	cp.watcher = registry.NewWatcher(cli, registry.WatchOptions{
		Prefix: cfg.Prefix,
		Logger: cp.log.With().Str("component", "registry").Logger(),
		OnReject: func(key string, _ error) {
			kind, _, _, _ := registry.ParseKey(cfg.Prefix, key)
			cp.m.rejected.WithLabelValues(kindLabel(kind)).Inc()
		},
		OnEvent:          func(n int) { cp.m.etcdEvents.Add(float64(n)) },
		AllowLoopback:    cfg.AllowLoopback,
		DenyCIDRs:        cfg.DenyBackendCIDRs,
		ProgressInterval: progressInterval(cfg.StaleAfter),
	})

	var opts []grpc.ServerOption
	if cfg.XDSTLS != nil {
		opts = append(opts, grpc.Creds(credentials.NewTLS(cfg.XDSTLS)))
	}
	cp.cutter = newStreamCutter()
	opts = append(opts,
		grpc.StreamInterceptor(cp.cutter.intercept),
		grpc.MaxConcurrentStreams(uint32(min(cfg.MaxStreamsPerConn, 1<<20))),
		// gRPC also sets TCP_USER_TIMEOUT to Timeout: a busy Envoy reading a large initial
		// configuration slowly must not be cut off, so it is generous.
		grpc.KeepaliveParams(keepalive.ServerParameters{Time: 30 * time.Second, Timeout: 30 * time.Second}),
		grpc.KeepaliveEnforcementPolicy(keepalive.EnforcementPolicy{MinTime: 10 * time.Second, PermitWithoutStream: true}),
	)
	cp.grpc = grpc.NewServer(opts...)
	xds := serverv3.NewServer(ctx, cache, cache.Callbacks(nil))
	discovery.RegisterAggregatedDiscoveryServiceServer(cp.grpc, xds)
	clusterservice.RegisterClusterDiscoveryServiceServer(cp.grpc, xds)
	endpointservice.RegisterEndpointDiscoveryServiceServer(cp.grpc, xds)
	listenerservice.RegisterListenerDiscoveryServiceServer(cp.grpc, xds)
	routeservice.RegisterRouteDiscoveryServiceServer(cp.grpc, xds)

	if cp.adminLn, err = net.Listen("tcp", cfg.AdminAddr); err != nil {
		return nil, fmt.Errorf("--admin-addr %s: %w", cfg.AdminAddr, err)
	}
	cp.admin = &http.Server{ReadHeaderTimeout: 10 * time.Second}
	cp.admin.Handler = admin.Handler(adminSource{cp}, admin.Options{Metrics: cp.m.reg, Hosts: cfg.AdminHosts, Addr: cp.adminLn.Addr(),
		StaleAfter: cfg.StaleAfter, MinEnvoyVersion: MinEnvoyVersion}, cp.admin.RegisterOnShutdown)

	cp.goRun("registry watch", func() error {
		return cp.watcher.Run(ctx, cp.pub.offer)
	})
	cp.goRun("publisher", func() error { cp.pub.run(ctx); return nil })
	cp.goRun("two-phase publication", func() error { phase.run(ctx); return nil })
	cp.goRun("replica reports", func() error { phase.link.run(ctx); return nil })
	cp.goRun("etcd confirmation", func() error { cp.watchConfirmation(ctx); return nil })
	if cfg.StateFile != "" {
		cp.goRun("state file", func() error { cp.keepMemory(ctx); return nil })
	}
	cp.goRun("xDS server", func() error {
		if err := cp.grpc.Serve(cp.xdsLn); err != nil && !errors.Is(err, grpc.ErrServerStopped) {
			return fmt.Errorf("xDS server: %w", err)
		}
		return nil
	})
	cp.goRun("admin server", func() error {
		if err := cp.admin.Serve(cp.adminLn); err != nil && !errors.Is(err, http.ErrServerClosed) {
			return fmt.Errorf("admin server: %w", err)
		}
		return nil
	})
	if cp.embedded != nil {
		cp.goRun("embedded etcd", func() error {
			select {
			case err := <-cp.embedded.Err():
				if err != nil {
					return fmt.Errorf("embedded etcd: %w", err)
				}
			case <-ctx.Done():
			}
			return nil
		})
	}
	go func() {
		<-ctx.Done()
		cp.shutdown()
		cp.err = cp.g.Wait()
		cp.closeAll()
		close(cp.done)
	}()
	ok = true
	cp.log.Info().Str("xds", cp.xdsLn.Addr().String()).Str("admin", cp.adminLn.Addr().String()).
		Str("prefix", cfg.Prefix).Strs("etcd", cfg.Etcd.Endpoints).Uint32("envoyListenPort", cfg.ListenPort).
		Msg("control plane started")
	return cp, nil
}

// agentHeartbeat is the agents' default --heartbeat, their longest time between two writes.
const agentHeartbeat = 30 * time.Second

// restartLookback is how old (by its updatedAt) the last value of an instance deleted before
// this control plane started may be for the guard and the vanish grace to count it: the
// delete came at most a heartbeat plus a lease TTL (about --hold-window) after that write,
// and a running guard would hold it at most --hold-window plus --hold-grace after the delete.
func restartLookback(cfg Config) time.Duration {
	return agentHeartbeat + 2*cfg.HoldWindow + max(cfg.HoldGrace, cfg.VanishGrace)
}

// progressInterval is how often the watcher reads etcd's revision: three reads within the
// stale bound, so that one slow read does not step the replica down.
func progressInterval(staleAfter time.Duration) time.Duration {
	if staleAfter <= 0 {
		return registry.DefaultProgressInterval
	}
	return staleAfter / 3
}

// plaintextBeyondLoopback reports whether xDS is served without TLS to other hosts.
func plaintextBeyondLoopback(tlsCfg *tls.Config, a net.Addr) bool {
	return tlsCfg == nil && !loopback(a)
}

// loopback reports whether a listener's address is reachable from this host only.
func loopback(a net.Addr) bool {
	t, ok := a.(*net.TCPAddr)
	return ok && t.IP.IsLoopback()
}

// kindLabels are tether_registry_rejected_entries_total's labels by key kind; "unknown" for
// any other.
var kindLabels = map[registry.KeyKind]string{registry.KeyService: "service", registry.KeyInstance: "instance", registry.KeyDrain: "drain"}

func kindLabel(k registry.KeyKind) string { return cmp.Or(kindLabels[k], "unknown") }

// goRun runs f in the control plane's group; an error from it stops the whole control plane.
func (cp *ControlPlane) goRun(name string, f func() error) {
	cp.g.Go(func() error {
		err := f()
		if err != nil {
			cp.log.Error().Err(err).Str("component", name).Msg("stopping the control plane")
		}
		return err
	})
}

func (cp *ControlPlane) shutdown() {
	cp.log.Info().Msg("shutting down")
	stopped := make(chan struct{})
	go func() { cp.grpc.GracefulStop(); close(stopped) }()
	t := time.NewTimer(cp.cfg.ShutdownTimeout)
	defer t.Stop()
	select {
	case <-stopped:
	case <-t.C:
		cp.grpc.Stop()
	}
	ctx, cancel := context.WithTimeout(context.Background(), cp.cfg.ShutdownTimeout)
	defer cancel()
	if err := cp.admin.Shutdown(ctx); err != nil {
		cp.admin.Close()
	}
}

// closeAll closes the etcd client and the embedded etcd; the servers close their listeners.
func (cp *ControlPlane) closeAll() {
	if cp.cli != nil {
		cp.cli.Close()
	}
	if cp.embedded != nil {
		cp.embedded.Close()
	}
}

// Wait blocks until the control plane has shut down and returns the error that stopped it,
// or nil when its context ended.
func (cp *ControlPlane) Wait() error {
	<-cp.done
	return cp.err
}

// Stop shuts the control plane down and waits for it.
func (cp *ControlPlane) Stop() error {
	cp.cancel()
	return cp.Wait()
}

// Ready is closed once the first full registry list is translated and published.
func (cp *ControlPlane) Ready() <-chan struct{} { return cp.pub.readyCh }

// XDSAddr is the bound xDS address.
func (cp *ControlPlane) XDSAddr() string { return cp.xdsLn.Addr().String() }

// AdminAddr is the bound admin address.
func (cp *ControlPlane) AdminAddr() string { return cp.adminLn.Addr().String() }

// Clients returns the connected Envoy streams.
func (cp *ControlPlane) Clients() []xdscache.ClientInfo { return cp.xds.Streams() }
