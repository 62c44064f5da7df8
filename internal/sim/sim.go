// Package sim is Tether's simulation: it runs the real product (an embedded etcd, one or two
// real control planes, real agent processes) against simulated app servers, simulated Envoys
// (the project's xDS client with a model of Envoy's routing, envoymodel.go) and simulated
// users with cookie jars, injects faults from a seeded schedule, and checks on every request
// and at the end that every user keeps their server (the invariants, check.go).
//
// A run is reproducible in its schedule: the seed fixes every fault's time, kind and target
// choice, and running the seed again replays it. The processes and the network are real, so
// the interleaving of events is not: a violation prints the seed, the schedule and the
// events that led to it, and a seed that found a defect finds it again in most runs.
package sim

import (
	"context"
	"errors"
	"fmt"
	"io"
	"maps"
	"math/rand/v2"
	"net"
	"net/http"
	"os"
	"path/filepath"
	"slices"
	"strconv"
	"strings"
	"sync"
	"time"

	"github.com/rs/zerolog"
	clientv3 "go.etcd.io/etcd/client/v3"
	"go.uber.org/zap"

	"github.com/tetherlb/tether/controlplane"
	"github.com/tetherlb/tether/internal/mutation"
	"github.com/tetherlb/tether/internal/netcut"
	"github.com/tetherlb/tether/internal/xdsclient"
	"github.com/tetherlb/tether/registry"
)

// Options configure one run. Zero values take the defaults.
type Options struct {
	Seed int64
	// Duration is the faulted phase; the run then stops injecting, lets the system settle and
	// checks convergence.
	Duration time.Duration
	// Users, Servers and Envoys are the simulated users, the app's first servers and the
	// Envoys of the gateway group.
	Users, Servers, Envoys int
	// AgentBin is the tether-agent binary (see BuildAgent); empty builds one.
	AgentBin string
	// Mutations are switched on for the run (internal/mutation; only with the simmutate tag).
	Mutations []string
	// Faults, when set, restricts the schedule to these fault kinds.
	Faults []string
	// Log receives events as they happen; nil discards them.
	Log io.Writer
	// EnvoyBin, when set, runs a real Envoy in the gateway group beside the modelled ones
	// (realenvoy.go); a share of the requests go through it.
	EnvoyBin string
	// NoVanishGrace runs the control planes without --vanish-grace, so that the removal
	// guard alone stands between a storm and the users (the guard's mutation test).
	NoVanishGrace bool
}

func (o *Options) defaults() {
	if o.Duration <= 0 {
		o.Duration = 12 * time.Second
	}
	if o.Users <= 0 {
		o.Users = 24
	}
	if o.Servers <= 0 {
		o.Servers = 4
	}
	if o.Envoys <= 0 {
		o.Envoys = 3
	}
}

// The control planes' timings, shortened with the agents' (agents.go): the guard's window is
// the agents' TTL, as the flags' documentation asks.
const (
	cpHoldWindow    = agentTTL
	cpHoldGrace     = 3 * time.Second
	cpPublishSettle = 2 * time.Second
	settleBound     = cpHoldGrace + cpPublishSettle + 3*time.Second // invariant 5's bound
)

// The services: "app" is unconfigured (the README's zero-configuration start: cookie
// affinity, every domain), "shop" is configured, strict, on its own domain.
const (
	svcApp  = "app"
	svcShop = "shop"
	svcTypo = "ap"
	shopDom = "shop.test"
)

const (
	shopConfig = `{"domains":["shop.test"],"affinity":{"mode":"cookie","strict":true}}`
	// badShopConfig is an operator's invalid edit of it (an lbPolicy Tether does not know).
	badShopConfig = `{"domains":["shop.test"],"affinity":{"mode":"cookie","strict":true},"lbPolicy":"fastest"}`
)

// Sim is one run.
type Sim struct {
	opts  Options
	dir   string
	start time.Time

	etcd         *etcdCluster
	etcdEndpoint string          // every member, comma-separated, for the agents and drain
	cuts         []*netcut.Proxy // the last replica's way to each member, when there are two replicas
	etcdFault    sync.Mutex      // held while a member is down
	cli          *clientv3.Client

	cpMu sync.Mutex
	cps  []*cpSlot

	envoys []*envoy
	// late are the Envoys of a late-join run not joined yet (see setUp), and joinAfter when
	// the next may join: right after a server is added.
	lateMu    sync.Mutex
	late      []*envoy
	joinAfter time.Time
	lateRng   *rand.Rand // draws each join's delay after its server's start
	real      *realEnvoy
	listen    int // the Envoys' listener port (the real Envoy binds it)
	http      *http.Client
	ctx       context.Context // the Envoys' lifetime; teardown cancels it
	cancel    context.CancelFunc
	wg        sync.WaitGroup

	mu       sync.Mutex
	servers  map[string]*server // by ID, every server ever started
	agents   map[string]*agentProc
	version  int // the app's current version label
	nextID   int
	events   []event
	faults   map[string]int
	viol     []Violation
	stats    Stats
	schedule []scheduled

	lastStorm, lastCPRestart time.Time // for classify
}

type cpSlot struct {
	addr   string
	cp     *controlplane.ControlPlane
	cancel context.CancelFunc
}

// Stats counts what the users saw.
type Stats struct {
	Requests, Sessions, Kept      int
	LostDied, LostStopped, Errors int
	Refused                       int // first requests refused (overload reply or the app's 503)
}

// Violation is a broken invariant.
type Violation struct {
	Invariant int
	// Kind names the likely cause in a few words (the same for every violation of one
	// defect), so that the table can count defects rather than requests.
	Kind  string
	At    time.Duration
	What  string
	Trace []string
}

// Result is one run's outcome.
type Result struct {
	Seed       int64
	Topology   string // etcd members and control-plane replicas
	Faults     map[string]int
	Stats      Stats
	Violations []Violation
	Schedule   []string
	Dir        string
}

// Run runs one simulation.
func Run(ctx context.Context, opts Options) (res Result, err error) {
	opts.defaults()
	if len(opts.Mutations) > 0 && !mutation.Set(opts.Mutations...) {
		return Result{}, errors.New("mutations need a binary built with -tags simmutate")
	}
	defer mutation.Set()
	s := &Sim{opts: opts, servers: map[string]*server{}, agents: map[string]*agentProc{}, faults: map[string]int{}, version: 1}
	if s.dir, err = os.MkdirTemp("", "tether-sim-"); err != nil {
		return Result{}, err
	}
	defer func() {
		if len(res.Violations) == 0 {
			_ = os.RemoveAll(s.dir)
			return
		}
		// Kept for its logs; etcd's data (a 64 MB WAL a member) would fill a soak's disk.
		members, _ := filepath.Glob(filepath.Join(s.dir, "etcd-*"))
		for _, m := range members {
			_ = os.RemoveAll(m)
		}
	}()
	if s.opts.AgentBin == "" {
		if s.opts.AgentBin, err = BuildAgent(ctx, s.dir); err != nil {
			return Result{}, err
		}
	}
	s.http = &http.Client{Timeout: 5 * time.Second, Transport: &http.Transport{MaxIdleConnsPerHost: 32}}
	defer s.http.CloseIdleConnections()
	s.ctx, s.cancel = context.WithCancel(ctx)
	defer s.teardown()
	if err := s.setUp(ctx); err != nil {
		return Result{}, err
	}
	s.run(ctx)
	s.mu.Lock()
	defer s.mu.Unlock()
	topo := topologyOf(opts.Seed)
	res = Result{Seed: opts.Seed, Topology: fmt.Sprintf("etcd x%d, cp x%d", topo.members, topo.replicas), Faults: s.faults, Stats: s.stats, Violations: s.viol, Dir: s.dir}
	for _, f := range s.schedule {
		res.Schedule = append(res.Schedule, f.String())
	}
	return res, ctx.Err()
}

// topology is a run's etcd members and control-plane replicas, drawn from its seed: most runs
// have one of each, a third two replicas with the Envoys split between them, a third three
// etcd members.
type topology struct{ members, replicas int }

func topologyOf(seed int64) topology {
	rng := rand.New(rand.NewPCG(uint64(seed), 3))
	t := topology{members: 1, replicas: 1}
	if rng.IntN(3) == 0 {
		t.replicas = 2
	}
	if rng.IntN(3) == 0 {
		t.members = 3
	}
	return t
}

func freePort() (int, error) {
	l, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		return 0, err
	}
	defer l.Close()
	return l.Addr().(*net.TCPAddr).Port, nil
}

func (s *Sim) setUp(ctx context.Context) error {
	topo := topologyOf(s.opts.Seed)
	e, err := startEtcd(ctx, s.dir, topo.members)
	if err != nil {
		return err
	}
	s.etcd, s.etcdEndpoint = e, strings.Join(e.endpoints(), ",")
	// The run's own etcd client logs nothing: revoking a lease an agent just replaced is
	// routine here.
	s.cli, err = clientv3.New(clientv3.Config{Endpoints: e.endpoints(), DialTimeout: 2 * time.Second, Logger: zap.NewNop()})
	if err != nil {
		return err
	}
	if _, err := s.cli.Put(ctx, registry.ServiceKey(registry.DefaultPrefix, svcShop), shopConfig); err != nil {
		return fmt.Errorf("put shop config: %w", err)
	}
	rng := rand.New(rand.NewPCG(uint64(s.opts.Seed), 1))
	for range topo.replicas {
		p, err := freePort()
		if err != nil {
			return err
		}
		s.cps = append(s.cps, &cpSlot{addr: "127.0.0.1:" + strconv.Itoa(p)})
	}
	if topo.replicas == 2 {
		for _, ep := range e.endpoints() {
			p, err := netcut.New(ep)
			if err != nil {
				return err
			}
			s.cuts = append(s.cuts, p)
		}
	}
	if s.listen, err = freePort(); err != nil {
		return err
	}
	for i := range s.cps {
		if err := s.startCP(ctx, i); err != nil {
			return err
		}
	}
	s.start = time.Now()
	for i := 0; i < s.opts.Servers; i++ {
		if _, err := s.addServer(svcApp, s.version, rng.IntN(4) != 0); err != nil {
			return err
		}
	}
	for i := 0; i < 2; i++ {
		if _, err := s.addServer(svcShop, 1, true); err != nil {
			return err
		}
	}
	// A late-join run (half of them, by seed): the group has a single Envoy, whose control
	// plane may serve a new server at once (the single-Envoy rule of two-phase publication),
	// and the others join while it runs, right after a server is added: a new Envoy placing
	// users on a server the first does not hold yet would break invariant 1.
	lrng := rand.New(rand.NewPCG(uint64(s.opts.Seed), 6))
	late := s.opts.Envoys > 1 && lrng.IntN(2) == 0
	for i := 0; i < s.opts.Envoys; i++ {
		v := xdsclient.Delta
		if rng.IntN(2) == 0 {
			v = xdsclient.SotW
		}
		e := newEnvoy(fmt.Sprintf("envoy-%d", i), "gw", v, i%len(s.cps))
		s.envoys = append(s.envoys, e)
		if i > 0 && late {
			s.late = append(s.late, e)
			continue
		}
		s.startEnvoy(e)
	}
	if late {
		s.joinAfter = time.Now().Add(time.Duration(lrng.Int64N(int64(s.opts.Duration / 2))))
		s.lateRng = lrng
		s.event(nil, "the gateway group starts with one Envoy; the others join later, each right after a server is added")
	}
	if s.opts.EnvoyBin != "" {
		if s.real, err = s.startRealEnvoy(s.listen); err != nil {
			return err
		}
	}
	s.schedule = makeSchedule(s.opts.Seed, s.opts.Duration, s.opts.Faults, topo)
	return s.waitReady(ctx)
}

// waitReady waits until every Envoy routes to every server registered so far.
func (s *Sim) waitReady(ctx context.Context) error {
	deadline := time.Now().Add(20 * time.Second)
	for {
		want := 0
		s.mu.Lock()
		for _, srv := range s.servers {
			if srv.service == svcApp {
				want++
			}
		}
		s.mu.Unlock()
		ok := true
		for _, e := range s.joinedEnvoys() {
			t, err := e.tables()
			if err != nil || t == nil || t.routes == nil {
				ok = false
				break
			}
			healthy := 0
			for _, h := range t.hosts["tether_app"] {
				if h.health.String() == "HEALTHY" {
					healthy++
				}
			}
			if healthy < want {
				ok = false
			}
		}
		if ok && s.real != nil {
			ok = s.realReady(ctx)
		}
		if ok {
			return nil
		}
		if time.Now().After(deadline) {
			return errors.New("the Envoys did not get every server within 20s")
		}
		select {
		case <-ctx.Done():
			return ctx.Err()
		case <-time.After(50 * time.Millisecond):
		}
	}
}

// realReady says whether the real Envoy forwards a first request of app to a server.
func (s *Sim) realReady(ctx context.Context) bool {
	resp, err := s.real.serve(ctx, s.http, request{method: http.MethodGet, host: "app.test", path: "/ready-check", header: http.Header{}})
	return err == nil && resp.upstream != ""
}

func (s *Sim) startCP(ctx context.Context, i int) error {
	slot := s.cps[i]
	logf, err := os.OpenFile(filepath.Join(s.dir, fmt.Sprintf("controlplane-%d.log", i)), os.O_CREATE|os.O_APPEND|os.O_WRONLY, 0o600)
	if err != nil {
		return err
	}
	eps := s.etcd.endpoints()
	if i == len(s.cps)-1 && len(s.cuts) > 0 {
		eps = eps[:0:0]
		for _, p := range s.cuts {
			eps = append(eps, p.URL())
		}
	}
	cfg := controlplane.Config{
		Etcd:    clientv3.Config{Endpoints: eps, DialTimeout: 2 * time.Second},
		XDSAddr: slot.addr, AdminAddr: "127.0.0.1:0",
		HoldWindow: cpHoldWindow, HoldGrace: cpHoldGrace, PublishSettle: cpPublishSettle,
		AllowLoopback: true, ShutdownTimeout: 2 * time.Second,
		// As the binary keeps it in its data directory: what it served, read back at a restart.
		StateFile: filepath.Join(s.dir, fmt.Sprintf("controlplane-%d-state.json", i)),
		Logger:    zerolog.New(logf).Level(zerolog.InfoLevel).With().Timestamp().Logger(),
	}
	if s.opts.NoVanishGrace {
		cfg.VanishGrace = -1
	}
	var cp *controlplane.ControlPlane
	for attempt := 0; ; attempt++ {
		cctx, cancel := context.WithCancel(context.Background())
		cp, err = controlplane.Start(cctx, cfg)
		if err == nil {
			slot.cp, slot.cancel = cp, cancel
			break
		}
		cancel()
		if attempt == 20 || ctx.Err() != nil {
			return fmt.Errorf("start control plane %d: %w", i, err)
		}
		time.Sleep(100 * time.Millisecond) // the address may still be held by the last one
	}
	select {
	case <-cp.Ready():
	case <-time.After(10 * time.Second):
		return fmt.Errorf("control plane %d not ready after 10s", i)
	}
	return nil
}

func (s *Sim) stopCP(i int) {
	s.cpMu.Lock()
	slot := s.cps[i]
	s.cpMu.Unlock()
	if slot.cancel != nil {
		slot.cancel()
		_ = slot.cp.Wait()
		slot.cancel = nil
	}
}

func (s *Sim) cpAddr(i int) string {
	s.cpMu.Lock()
	defer s.cpMu.Unlock()
	return s.cps[i].addr
}

// addServer starts a server of service with its agent.
func (s *Sim) addServer(service string, version int, withSessions bool) (*server, error) {
	s.mu.Lock()
	s.nextID++
	n := s.nextID
	s.mu.Unlock()
	id := fmt.Sprintf("%s-%d", service, n)
	srv, err := startServer(id, service, version, 6+int((uint64(s.opts.Seed)+uint64(n)*7)%5))
	if err != nil {
		return nil, err
	}
	a, err := s.startAgent(srv, withSessions)
	if err != nil {
		srv.stop(true)
		return nil, err
	}
	s.locked(func() { s.servers[id], s.agents[id] = srv, a })
	s.event([]string{id}, "server %s (%s v%d, capacity %d, sessions-url %v) and its agent start on %s", id, service, version, srv.capacity, withSessions, srv.addr())
	s.joinLate(false)
	return srv, nil
}

// startEnvoy starts e's stream, once.
func (s *Sim) startEnvoy(e *envoy) {
	if !e.joined.CompareAndSwap(false, true) {
		return
	}
	s.event(nil, "%s joins the gateway group", e.name)
	s.wg.Add(1)
	go func() {
		defer s.wg.Done()
		e.run(s.ctx, s.cpAddr)
	}()
}

// joinLate lets the next late Envoy join once its time has come, shortly after the server
// just started has registered (100-600 ms, drawn: the agent's registration and the push of
// the server come within it, sometimes before and sometimes after the join); with all, it
// starts every late Envoy at once.
func (s *Sim) joinLate(all bool) {
	s.lateMu.Lock()
	defer s.lateMu.Unlock()
	if all {
		for _, e := range s.envoys {
			if !e.joined.Load() {
				s.startEnvoy(e)
			}
		}
		s.late = nil
		return
	}
	if len(s.late) == 0 || !time.Now().After(s.joinAfter) {
		return
	}
	e := s.late[0]
	s.late = s.late[1:]
	s.joinAfter = time.Now().Add(time.Second)
	d := 100*time.Millisecond + time.Duration(s.lateRng.Int64N(int64(500*time.Millisecond)))
	go func() {
		select {
		case <-s.ctx.Done():
			return
		case <-time.After(d):
		}
		s.lateMu.Lock()
		defer s.lateMu.Unlock()
		s.startEnvoy(e) // nothing when joinLate(all) started it: no wait group is added late
	}()
}

// joinedEnvoys are the Envoys whose streams run.
func (s *Sim) joinedEnvoys() []*envoy {
	out := make([]*envoy, 0, len(s.envoys))
	for _, e := range s.envoys {
		if e.joined.Load() {
			out = append(out, e)
		}
	}
	return out
}

// locked runs f under s.mu.
func (s *Sim) locked(f func()) {
	s.mu.Lock()
	defer s.mu.Unlock()
	f()
}

// event records what happened; subjects (server IDs, user names) let a trace pick it.
type event struct {
	at       time.Duration
	subjects []string
	what     string
}

func (s *Sim) event(subjects []string, format string, args ...any) {
	ev := event{at: time.Since(s.start), subjects: subjects, what: fmt.Sprintf(format, args...)}
	s.locked(func() { s.events = append(s.events, ev) })
	if s.opts.Log != nil {
		fmt.Fprintf(s.opts.Log, "%8.3fs %s\n", ev.at.Seconds(), ev.what)
	}
}

// violate records a broken invariant with the events that concern its subjects.
func (s *Sim) violate(inv int, kind string, subjects []string, from time.Time, format string, args ...any) {
	what := fmt.Sprintf(format, args...)
	s.event(subjects, "VIOLATION of invariant %d (%s): %s", inv, kind, what)
	s.mu.Lock()
	defer s.mu.Unlock()
	v := Violation{Invariant: inv, Kind: kind, At: time.Since(s.start), What: what}
	want := map[string]bool{}
	for _, x := range subjects {
		want[x] = true
	}
	// The trace: what happened to the subjects, and the faults that touch every server since
	// from (less recentCause, so that a fault that set the stage shows), never the other
	// violations.
	since := from.Add(-recentCause).Sub(s.start)
	for _, ev := range s.events {
		match := len(ev.subjects) == 0 && ev.at >= since
		for _, x := range ev.subjects {
			match = match || want[x]
		}
		for _, x := range ev.subjects {
			// Another user's doings are not this one's trace.
			match = match && (want[x] || !strings.HasPrefix(x, "user-"))
		}
		if match && !strings.HasPrefix(ev.what, "VIOLATION") {
			v.Trace = append(v.Trace, fmt.Sprintf("%8.3fs %s", ev.at.Seconds(), ev.what))
		}
	}
	const maxTrace = 40
	if len(v.Trace) > maxTrace {
		v.Trace = append([]string{fmt.Sprintf("(%d earlier events)", len(v.Trace)-maxTrace)}, v.Trace[len(v.Trace)-maxTrace:]...)
	}
	s.viol = append(s.viol, v)
}

func (s *Sim) teardown() {
	s.cancel()
	s.wg.Wait()
	if s.real != nil {
		s.real.stop()
	}
	s.mu.Lock()
	agents, servers := slices.Collect(maps.Values(s.agents)), slices.Collect(maps.Values(s.servers))
	s.mu.Unlock()
	for _, a := range agents {
		if a.running() {
			a.kill()
		}
	}
	for _, srv := range servers {
		srv.stop(true)
	}
	for i := range s.cps {
		s.stopCP(i)
	}
	if s.cli != nil {
		_ = s.cli.Close()
	}
	for _, p := range s.cuts {
		p.Close()
	}
	if s.etcd != nil {
		s.etcd.stop()
	}
}
