// Package bench is Tether's load harness. It starts a real embedded etcd, runs the control
// plane as a child process against it, writes a registry of N instances across S services,
// connects E simulated Envoys (internal/xdsclient, state-of-the-world and delta ADS) and
// runs a timed scenario of instance changes (load updates, state flips, registrations,
// lease expiries). It measures propagation latency from the etcd write returning to each
// Envoy holding the change, the raw etcd write-to-watch floor, the control plane's CPU and
// peak memory, bytes sent per change per Envoy, pushes per second and the time for a new
// Envoy to receive the full configuration.
//
// Method notes (also in docs/performance.md):
//   - A change is "held" by an Envoy when the ClusterLoadAssignment it received for the
//     service shows the changed instance's endpoint with the health and weight that
//     translate.TranslateService predicts (or shows it present/absent for a registration
//     or an expiry). Each change is made visible: a load change moves the weight across the
//     quantization step, a state flip moves available <-> full (HEALTHY <-> DRAINING).
//   - At most one change per service is in flight, so that a prediction cannot be
//     overtaken by a later change to the same service.
//   - A lease expiry is a LeaseRevoke of the instance's own lease: etcd deletes the key
//     through the same path as an expiry, and the revoke's return gives a precise start.
//   - Simulated Envoys share one gRPC connection per ClientsPerConn streams; real Envoys
//     would each have their own.
package bench

import (
	"context"
	"errors"
	"fmt"
	"math/rand/v2"
	"os"
	"path/filepath"
	"slices"
	"strconv"
	"sync"
	"sync/atomic"
	"time"

	resourcev3 "github.com/envoyproxy/go-control-plane/pkg/resource/v3"
	"github.com/rs/zerolog"
	"github.com/shirou/gopsutil/v4/process"
	clientv3 "go.etcd.io/etcd/client/v3"
	"go.etcd.io/etcd/server/v3/embed"
	"google.golang.org/grpc"
	"google.golang.org/grpc/credentials/insecure"

	"github.com/tetherlb/tether/controlplane/translate"
	"github.com/tetherlb/tether/internal/etcdembed"
	"github.com/tetherlb/tether/internal/xdsclient"
)

// VariantBoth, in Config.Variant, runs half the simulated Envoys on each xdsclient variant.
const VariantBoth xdsclient.Variant = "both"

// Config describes one run at one scale. Zero values take the documented defaults.
type Config struct {
	Instances int // N, default 100
	Services  int // S, default N/10 (at least 1)
	Envoys    int // E, default 10; with VariantBoth half are delta, half state-of-the-world
	// Rate is scheduled changes per second (default 200) during Duration (default 30 s).
	Rate     float64
	Duration time.Duration
	Variant  xdsclient.Variant // sotw, delta or both (default)
	// ControlPlaneBin is a built tether-controlplane; empty builds one with the go tool.
	ControlPlaneBin string
	// WorkDir holds etcd's data and the control plane's log; empty uses a temporary
	// directory removed at the end.
	WorkDir string
	// ChangeTimeout bounds the wait for every Envoy to hold one change (default 10 s).
	ChangeTimeout time.Duration
	// ClientsPerConn is how many simulated Envoys share one gRPC connection (default 100).
	ClientsPerConn int
	// LoadProbes is the number of isolated load changes measured after the scenario
	// (default 5).
	LoadProbes int
	// Spaced is the number of single changes made after the scenario, each SpacedGap
	// (default 250 ms, longer than the coalescing window) after the previous one was held by
	// every Envoy, to compare a lone change's propagation with the etcd watch floor
	// (default 50).
	Spaced    int
	SpacedGap time.Duration
	// SpacedKind makes every spaced change of this kind (KindLoad, ...); empty draws them
	// in the scenario's shares.
	SpacedKind string
	// Bursts is the number of bursts made after the scenario, each of BurstSize load changes
	// (default 500), each to another service, written in one etcd transaction so that the
	// control plane receives them at once (see BurstReport).
	Bursts    int
	BurstSize int
	// ControlPlaneArgs are extra flags for the control plane (e.g. --coalesce-max 50ms).
	ControlPlaneArgs []string
	// Seed makes the scenario's random choices repeatable.
	Seed   uint64
	Logger zerolog.Logger
}

func (c *Config) withDefaults() error {
	orDefault(&c.Instances, 100)
	orDefault(&c.Services, max(c.Instances/10, 1))
	if c.Services > c.Instances {
		return fmt.Errorf("services (%d) must not outnumber instances (%d)", c.Services, c.Instances)
	}
	orDefault(&c.Envoys, 10)
	orDefault(&c.Rate, 200)
	orDefault(&c.Duration, 30*time.Second)
	switch c.Variant {
	case "":
		c.Variant = VariantBoth
	case xdsclient.SotW, xdsclient.Delta, VariantBoth:
	default:
		return fmt.Errorf("variant %q: want sotw, delta or both", c.Variant)
	}
	orDefault(&c.ChangeTimeout, 10*time.Second)
	orDefault(&c.ClientsPerConn, 100)
	orDefault(&c.LoadProbes, 5)
	orDefault(&c.Spaced, 50)
	orDefault(&c.SpacedGap, 250*time.Millisecond)
	orDefault(&c.BurstSize, 500)
	if c.SpacedKind != "" && !slices.ContainsFunc(kindShares, func(k kindShare) bool { return k.kind == c.SpacedKind }) {
		return fmt.Errorf("spaced kind %q: want %s, %s, %s or %s", c.SpacedKind, KindLoad, KindState, KindRegister, KindExpire)
	}
	return nil
}

// orDefault sets *v to d unless *v is positive.
func orDefault[T int | float64 | time.Duration](v *T, d T) {
	if *v <= 0 {
		*v = d
	}
}

// Limits of the phases outside the scenario.
const (
	seedWorkers    = 32
	changeWorkers  = 256
	readyTimeout   = 3 * time.Minute
	connectTimeout = 5 * time.Minute
	leaseTTL       = 3600 // seconds: no lease expires on its own during a run
)

// harness is one run.
type harness struct {
	cfg      Config
	log      zerolog.Logger
	etcd     *etcdembed.Server
	cli      *clientv3.Client
	cp       *ControlPlane
	svcs     []*svcState
	nextID   atomic.Int64
	variants []xdsclient.Variant
	envoys   []*simEnvoy
	conns    []*grpc.ClientConn
	obs      *observer
	holds    *holdings      // what every Envoy holds, for the final check
	wg       sync.WaitGroup // simulated Envoy streams
}

// simEnvoy is one simulated Envoy with its byte counter.
type simEnvoy struct {
	c       *xdsclient.Client
	idx     int
	variant int // index into harness.variants
	bytes   atomic.Int64
	failed  atomic.Bool
}

// Run runs the harness once at one scale and returns its report.
func Run(ctx context.Context, cfg Config) (rep *Report, err error) {
	if err := cfg.withDefaults(); err != nil {
		return nil, err
	}
	h := &harness{cfg: cfg, log: cfg.Logger, obs: newObserver()}
	h.variants = []xdsclient.Variant{cfg.Variant}
	if cfg.Variant == VariantBoth {
		h.variants = []xdsclient.Variant{xdsclient.Delta, xdsclient.SotW}
	}
	dir := cfg.WorkDir
	if dir != "" {
		// A registry left by an earlier run would be seeded on top of: refuse it.
		if _, err := os.Stat(filepath.Join(dir, "etcd")); err == nil {
			return nil, fmt.Errorf("work dir %s already holds etcd data from an earlier run: give an empty or new directory", dir)
		}
	} else {
		if dir, err = os.MkdirTemp("", "tether-bench-"); err != nil {
			return nil, fmt.Errorf("work dir: %w", err)
		}
		defer os.RemoveAll(dir)
	}
	ctx, cancel := context.WithCancel(ctx)
	defer cancel()
	defer func() {
		if cerr := h.close(cancel); cerr != nil && err == nil {
			err = cerr
		}
	}()
	return h.run(ctx, dir)
}

func (h *harness) run(ctx context.Context, dir string) (*Report, error) {
	cfg := h.cfg
	rep := &Report{Instances: cfg.Instances, Services: cfg.Services, Envoys: cfg.Envoys, Rate: cfg.Rate, Changes: map[string]int{},
		ControlPlaneArgs: cfg.ControlPlaneArgs}
	if err := h.startEtcd(ctx, dir); err != nil {
		return nil, err
	}
	bin := cfg.ControlPlaneBin
	if bin == "" {
		var err error
		if bin, err = BuildControlPlane(ctx, dir); err != nil {
			return nil, err
		}
	}
	start := time.Now()
	if err := h.seed(ctx); err != nil {
		return nil, err
	}
	rep.SeedSeconds = time.Since(start).Seconds()
	h.log.Info().Int("instances", cfg.Instances).Int("services", cfg.Services).Dur("took", time.Since(start)).Msg("registry written")

	start = time.Now()
	// Every simulated Envoy is on loopback, ClientsPerConn to a connection, and a run may be
	// larger than the registry bounds: the control plane's bounds are raised to fit the run
	// (ControlPlaneArgs come later and win).
	conns := (cfg.Envoys + cfg.ClientsPerConn - 1) / cfg.ClientsPerConn
	cpArgs := append([]string{"--max-conns-per-peer", strconv.Itoa(conns + 16), "--max-streams-per-conn", strconv.Itoa(cfg.ClientsPerConn + 16),
		"--max-services", strconv.Itoa(cfg.Services + 1), "--max-instances-per-service", strconv.Itoa(cfg.Instances + 1)}, cfg.ControlPlaneArgs...)
	cp, err := StartControlPlane(ctx, bin, h.etcd.Endpoints, filepath.Join(dir, "controlplane.log"), cpArgs)
	if err != nil {
		return nil, err
	}
	h.cp = cp
	rep.ControlPlaneReadySeconds = time.Since(start).Seconds()

	start = time.Now()
	if err := h.connect(ctx); err != nil {
		return nil, err
	}
	rep.ConnectSeconds = time.Since(start).Seconds()
	h.log.Info().Int("envoys", cfg.Envoys).Dur("took", time.Since(start)).Msg("simulated Envoys hold the full configuration")
	u, err := h.cp.Usage(ctx)
	if err != nil {
		return nil, err
	}
	rep.ConnectPeakRSSBytes = u.PeakRSS
	reset := h.cp.resetPeakRSS()
	if reset != nil {
		h.log.Warn().Err(reset).Msg("the scenario's peak memory is not told apart from the connection's")
	}

	wctx, wcancel := context.WithCancel(ctx)
	watchDone, err := h.watchFloor(wctx)
	if err != nil {
		wcancel()
		return nil, err
	}
	defer func() { wcancel(); <-watchDone }()
	if err := h.scenario(ctx, rep); err != nil {
		return nil, err
	}
	if reset == nil {
		if u, err = h.cp.Usage(ctx); err != nil {
			return nil, err
		}
		rep.ScenarioPeakRSSBytes = u.PeakRSS
	}
	if err := h.bursts(ctx, rep); err != nil {
		return nil, err
	}
	if err := h.loadProbes(ctx, rep); err != nil {
		return nil, err
	}
	if err := h.spaced(ctx, rep); err != nil {
		return nil, err
	}
	if err := h.converge(ctx, rep); err != nil {
		return nil, err
	}
	for i, v := range h.variants {
		d, err := h.firstConfig(ctx, v, i)
		if err != nil {
			return nil, err
		}
		rep.Variants[i].FirstConfigMs = float64(d.Microseconds()) / 1000
	}
	if u, err = h.cp.Usage(ctx); err != nil {
		return nil, err
	}
	rep.ControlPlanePeakRSSBytes = max(u.PeakRSS, rep.ConnectPeakRSSBytes)
	for _, e := range h.envoys {
		if e.failed.Load() {
			rep.Variants[e.variant].StreamErrors++
		}
	}
	return rep, nil
}

func (h *harness) startEtcd(ctx context.Context, dir string) error {
	client, err := FreeAddr()
	if err != nil {
		return err
	}
	peer, err := FreeAddr()
	if err != nil {
		return err
	}
	e, err := etcdembed.Start(ctx, etcdembed.Config{
		Dir: filepath.Join(dir, "etcd"), ClientURL: "http://" + client, PeerURL: "http://" + peer,
		// etcd logs its own shutdown as errors; failures reach the harness as API errors.
		LogLevel:  "fatal",
		Configure: func(c *embed.Config) { c.MaxTxnOps = maxBurstTxnOps },
	})
	if err != nil {
		return err
	}
	h.etcd = e
	cli, err := clientv3.New(clientv3.Config{Endpoints: e.Endpoints, DialTimeout: 5 * time.Second})
	if err != nil {
		return fmt.Errorf("etcd client: %w", err)
	}
	h.cli = cli
	return nil
}

// connect opens the simulated Envoys and waits until every one holds the full configuration.
func (h *harness) connect(ctx context.Context) error {
	clusters := make([]string, len(h.svcs))
	for i, s := range h.svcs {
		clusters[i] = translate.ClusterName(s.name)
	}
	h.holds = newHoldings(clusters, h.cfg.Envoys)
	for i := range h.cfg.Envoys {
		if i%h.cfg.ClientsPerConn == 0 {
			conn, err := dial(h.cp.XDSAddr)
			if err != nil {
				return err
			}
			h.conns = append(h.conns, conn)
		}
		v := i % len(h.variants)
		e := &simEnvoy{idx: i, variant: v,
			c: xdsclient.New(h.variants[v], fmt.Sprintf("bench-envoy-%05d", i), "")}
		e.c.Light = true
		e.c.OnUpdate = func(u xdsclient.Update) {
			e.bytes.Add(int64(u.Bytes))
			h.obs.onUpdate(e.idx, u)
			h.holds.record(e.idx, u)
		}
		h.envoys = append(h.envoys, e)
		conn := h.conns[len(h.conns)-1]
		h.wg.Add(1)
		go func() {
			defer h.wg.Done()
			// Run always ends with an error; only one before our cancel is a failure.
			if err := e.c.Run(ctx, conn); ctx.Err() == nil {
				e.failed.Store(true)
				h.log.Warn().Err(err).Int("envoy", e.idx).Msg("simulated Envoy stream failed")
			}
		}()
	}
	h.obs.setClients(len(h.envoys))
	deadline := time.Now().Add(connectTimeout)
	tick := time.NewTicker(50 * time.Millisecond)
	defer tick.Stop()
	for {
		synced := 0
		for _, e := range h.envoys {
			if e.failed.Load() {
				return fmt.Errorf("simulated Envoy %d: stream failed while connecting (see the log)", e.idx)
			}
			if h.complete(e.c) {
				synced++
			}
		}
		if synced == len(h.envoys) {
			return nil
		}
		if time.Now().After(deadline) {
			return fmt.Errorf("only %d of %d simulated Envoys hold the full configuration after %s", synced, len(h.envoys), connectTimeout)
		}
		select {
		case <-ctx.Done():
			return fmt.Errorf("connect: %w", ctx.Err())
		case <-tick.C:
		}
	}
}

// complete reports whether c holds every service's cluster and endpoints, the listener and
// the route configuration.
func (h *harness) complete(c *xdsclient.Client) bool {
	return c.Count(resourcev3.ClusterType) >= h.cfg.Services && c.Count(resourcev3.EndpointType) >= h.cfg.Services &&
		c.Count(resourcev3.ListenerType) >= 1 && c.Count(resourcev3.RouteType) >= 1
}

func dial(addr string) (*grpc.ClientConn, error) {
	conn, err := grpc.NewClient("passthrough:///"+addr,
		grpc.WithTransportCredentials(insecure.NewCredentials()),
		grpc.WithDefaultCallOptions(grpc.MaxCallRecvMsgSize(256<<20)),
		grpc.WithInitialWindowSize(8<<20), grpc.WithInitialConnWindowSize(64<<20))
	if err != nil {
		return nil, fmt.Errorf("dial xDS %s: %w", addr, err)
	}
	return conn, nil
}

// firstConfig connects one more Envoy of variant and times how long it takes to hold the
// full configuration.
func (h *harness) firstConfig(ctx context.Context, variant xdsclient.Variant, vi int) (time.Duration, error) {
	conn, err := dial(h.cp.XDSAddr)
	if err != nil {
		return 0, err
	}
	defer conn.Close()
	c := xdsclient.New(variant, "bench-new-"+string(variant), "")
	c.Light = true
	done := make(chan time.Time, 1)
	c.OnUpdate = func(u xdsclient.Update) {
		if h.complete(c) {
			select {
			case done <- u.At:
			default:
			}
		}
	}
	ctx, cancel := context.WithTimeout(ctx, connectTimeout)
	defer cancel()
	start := time.Now()
	errc, stopped := make(chan error, 1), make(chan struct{})
	go func() { defer close(stopped); errc <- c.Run(ctx, conn) }()
	defer func() { cancel(); <-stopped }()
	select {
	case at := <-done:
		return at.Sub(start), nil
	case err := <-errc:
		return 0, fmt.Errorf("new %s Envoy: %w", variant, err)
	case <-ctx.Done():
		return 0, fmt.Errorf("new %s Envoy did not get the full configuration within %s", variant, connectTimeout)
	}
}

// close stops the Envoys, the control plane and etcd.
func (h *harness) close(cancel context.CancelFunc) error {
	cancel()
	var errs []error
	h.wg.Wait()
	for _, c := range h.conns {
		c.Close()
	}
	if h.cp != nil {
		errs = append(errs, h.cp.Stop())
	}
	if h.cli != nil {
		h.cli.Close()
	}
	if h.etcd != nil {
		h.etcd.Close()
	}
	return errors.Join(errs...)
}

// cpuSelf is the harness process's CPU time so far, in seconds (user and system; through
// gopsutil, so that the harness builds on Windows too).
func cpuSelf() float64 {
	p, err := process.NewProcess(int32(os.Getpid()))
	if err != nil {
		return 0
	}
	t, err := p.Times()
	if err != nil {
		return 0
	}
	return t.User + t.System
}

// newRand returns a random source for stream i of the run.
func (h *harness) newRand(i uint64) *rand.Rand {
	return rand.New(rand.NewPCG(h.cfg.Seed, i))
}
