package bench

import (
	"context"
	"errors"
	"fmt"
	"maps"
	"math/rand/v2"
	"slices"
	"sync"
	"sync/atomic"
	"time"

	clientv3 "go.etcd.io/etcd/client/v3"

	"github.com/tetherlb/tether/controlplane/translate"
	"github.com/tetherlb/tether/registry"
)

// Change kinds and their share of the scenario, in percent.
const (
	KindLoad     = "load"
	KindState    = "state"
	KindRegister = "register"
	KindExpire   = "expire"
)

type kindShare struct {
	kind  string
	share int
}

var kindShares = []kindShare{{KindLoad, 70}, {KindState, 16}, {KindRegister, 7}, {KindExpire, 7}}

// loadLevels are session counts (of maxSessions 1000) a load change picks from; they lie
// far enough apart to cross any reasonable weight quantization.
var loadLevels = []int{0, 150, 400, 650, 900}

const maxSessions = 1000

// svcState is the harness's own record of one service. Only the goroutine that holds busy
// reads or changes insts.
type svcState struct {
	name  string
	cfg   registry.ServiceConfig
	busy  atomic.Bool
	insts map[string]*instState
}

type instState struct {
	inst  registry.Instance
	lease clientv3.LeaseID
}

func serviceName(i int) string { return fmt.Sprintf("svc-%05d", i) }

// newInstance returns the instance with sequence number n: a unique address, port 8080.
func newInstance(n int64) registry.Instance {
	now := time.Now().UTC()
	return registry.Instance{
		ID:         fmt.Sprintf("i-%07d", n),
		Address:    fmt.Sprintf("10.%d.%d.%d", (n>>16)&255, (n>>8)&255, n&255),
		Port:       8080,
		Zone:       "zone-a",
		Thresholds: registry.Thresholds{MaxSessions: maxSessions, MaxCPU: 90},
		Load:       registry.Load{Sessions: loadLevels[n%int64(len(loadLevels))], CPU: 10},
		State:      registry.StateAvailable,
		UpdatedAt:  now,
		Agent:      registry.AgentInfo{Version: "bench", StartedAt: now},
	}
}

// seed writes S service configurations and N instances, each under a lease of its own as
// an agent would.
func (h *harness) seed(ctx context.Context) error {
	h.svcs = make([]*svcState, h.cfg.Services)
	for i := range h.svcs {
		name := serviceName(i)
		cfg := registry.DefaultServiceConfig(name)
		cfg.Domains = []string{name + ".bench.test"}
		h.svcs[i] = &svcState{name: name, cfg: cfg, insts: map[string]*instState{}}
	}
	jobs := make(chan int)
	errc := make(chan error, seedWorkers)
	var mu sync.Mutex
	var wg sync.WaitGroup
	for range seedWorkers {
		wg.Add(1)
		go func() {
			defer wg.Done()
			for i := range jobs {
				var err error
				if i < 0 {
					s := h.svcs[-i-1]
					err = registry.PutServiceConfig(ctx, h.cli, registry.DefaultPrefix, s.name, s.cfg)
				} else {
					s := h.svcs[i%len(h.svcs)]
					var st *instState
					st, err = h.register(ctx, s.name, newInstance(h.nextID.Add(1)))
					if err == nil {
						mu.Lock()
						s.insts[st.inst.ID] = st
						mu.Unlock()
					}
				}
				if err != nil {
					errc <- err
					return
				}
			}
		}()
	}
	var err error
feed:
	for i := -len(h.svcs); i < h.cfg.Instances; i++ {
		select {
		case jobs <- i:
		case err = <-errc:
			break feed
		case <-ctx.Done():
			err = ctx.Err()
			break feed
		}
	}
	close(jobs)
	wg.Wait()
	if err == nil {
		select {
		case err = <-errc:
		default:
		}
	}
	if err != nil {
		return fmt.Errorf("seed registry: %w", err)
	}
	return nil
}

// register grants a lease and creates the instance under it.
func (h *harness) register(ctx context.Context, service string, inst registry.Instance) (*instState, error) {
	lease, err := h.cli.Grant(ctx, leaseTTL)
	if err != nil {
		return nil, fmt.Errorf("grant lease: %w", err)
	}
	if err := registry.CreateInstance(ctx, h.cli, registry.DefaultPrefix, service, inst, lease.ID); err != nil {
		return nil, err
	}
	return &instState{inst: inst, lease: lease.ID}, nil
}

// expected returns what an Envoy should see of inst in s once insts is the service's
// instance set, as the control plane's own translation computes it.
func (s *svcState) expected(insts map[string]registry.Instance, inst registry.Instance) sig {
	svc := &registry.Service{Name: s.name, Config: s.cfg, Configured: true, Instances: insts}
	sr := translate.TranslateService(svc, translate.Options{})
	return sigOf(sr.Endpoints, inst.Address, uint32(inst.Port))
}

func (s *svcState) instances() map[string]registry.Instance {
	out := make(map[string]registry.Instance, len(s.insts))
	for id, st := range s.insts {
		out[id] = st.inst
	}
	return out
}

// outcome is what one change produced.
type outcome struct {
	kind  string
	tw    time.Time // the etcd write was issued
	t0    time.Time // the etcd write returned
	seen  []time.Time
	floor time.Time
}

// errInvisible means the drawn change would not be visible to an Envoy; it is skipped.
var errInvisible = errors.New("change not visible in the endpoints")

// change makes one change of kind to s (which the caller holds busy), waits until every
// Envoy holds it or the change timeout passes, and returns what was seen.
func (h *harness) change(ctx context.Context, s *svcState, kind string, rng *rand.Rand) (*outcome, error) {
	cur := s.instances()
	ids := slices.Sorted(maps.Keys(cur))
	if len(ids) == 0 || (kind == KindExpire && len(ids) < 2) {
		kind = KindRegister
	}
	var (
		target registry.Instance
		want   sig
		write  func() error
		commit func()
	)
	switch kind {
	case KindLoad, KindState:
		st := s.insts[ids[rng.IntN(len(ids))]]
		before := s.expected(cur, st.inst)
		next := st.inst
		next.UpdatedAt = time.Now().UTC()
		if kind == KindState {
			next.State, next.Reason = registry.StateFull, "sessions over maxSessions"
			if st.inst.State == registry.StateFull {
				next.State, next.Reason = registry.StateAvailable, ""
			}
			cur[next.ID] = next
			want = s.expected(cur, next)
		} else {
			for _, j := range rng.Perm(len(loadLevels)) {
				next.Load.Sessions = loadLevels[j]
				cur[next.ID] = next
				if want = s.expected(cur, next); want != before {
					break
				}
			}
		}
		if want == before {
			return nil, errInvisible
		}
		target = next
		write = func() error {
			return registry.UpdateInstance(ctx, h.cli, registry.DefaultPrefix, s.name, next, st.lease)
		}
		commit = func() { st.inst = next }
	case KindRegister:
		target = newInstance(h.nextID.Add(1))
		cur[target.ID] = target
		want = s.expected(cur, target)
		lease, err := h.cli.Grant(ctx, leaseTTL)
		if err != nil {
			return nil, fmt.Errorf("grant lease: %w", err)
		}
		write = func() error {
			return registry.CreateInstance(ctx, h.cli, registry.DefaultPrefix, s.name, target, lease.ID)
		}
		commit = func() { s.insts[target.ID] = &instState{inst: target, lease: lease.ID} }
	case KindExpire:
		st := s.insts[ids[rng.IntN(len(ids))]]
		target = st.inst
		want = sig{}
		write = func() error {
			if _, err := h.cli.Revoke(ctx, st.lease); err != nil {
				return fmt.Errorf("revoke lease of %s: %w", st.inst.ID, err)
			}
			return nil
		}
		commit = func() { delete(s.insts, target.ID) }
	}
	p := h.obs.add(translate.ClusterName(s.name), registry.InstanceKey(registry.DefaultPrefix, s.name, target.ID),
		target.Address, uint32(target.Port), want)
	tw := time.Now()
	if err := write(); err != nil {
		h.obs.remove(p)
		return nil, err
	}
	t0 := time.Now()
	commit()
	t := time.NewTimer(h.cfg.ChangeTimeout)
	defer t.Stop()
	// Every Envoy, then the harness's own watch: a fast control plane can beat the latter.
wait:
	for _, ch := range []chan struct{}{p.done, p.floorSeen} {
		select {
		case <-ch:
		case <-t.C:
			break wait
		case <-ctx.Done():
			break wait
		}
	}
	seen, floor := h.obs.remove(p)
	return &outcome{kind: kind, tw: tw, t0: t0, seen: seen, floor: floor}, nil
}

// results accumulates outcomes.
type results struct {
	mu      sync.Mutex
	lat     [][]time.Duration // per variant
	missed  []int
	floor   []time.Duration
	write   []time.Duration
	floorNo int
	kinds   map[string]int
	skipped int
	// unseenExpiries are lease expiries no Envoy held in time, counted apart from missed: the
	// control plane's mass-disappearance guard holds removals in a storm on purpose.
	unseenExpiries []int // per variant, Envoys of those changes
	unseenExpiry   int   // changes
}

func (r *results) add(o *outcome, envoys []*simEnvoy) {
	r.mu.Lock()
	defer r.mu.Unlock()
	r.kinds[o.kind]++
	if o.kind == KindExpire && !slices.ContainsFunc(o.seen, func(at time.Time) bool { return !at.IsZero() }) {
		r.unseenExpiry++
		for i := range o.seen {
			r.unseenExpiries[envoys[i].variant]++
		}
		o.seen = nil
	}
	for i, at := range o.seen {
		v := envoys[i].variant
		if at.IsZero() {
			r.missed[v]++
			continue
		}
		r.lat[v] = append(r.lat[v], max(at.Sub(o.t0), 0))
	}
	r.write = append(r.write, o.t0.Sub(o.tw))
	if o.floor.IsZero() {
		r.floorNo++
	} else {
		r.floor = append(r.floor, o.floor.Sub(o.tw))
	}
}

func (r *results) skip() {
	r.mu.Lock()
	r.skipped++
	r.mu.Unlock()
}

// watchFloor runs the harness's plain etcd watch on the instances, from the current
// revision, until ctx ends; every change the harness makes from then on gets its floor.
func (h *harness) watchFloor(ctx context.Context) (<-chan struct{}, error) {
	get, err := h.cli.Get(ctx, registry.InstancesPrefix(registry.DefaultPrefix), clientv3.WithCountOnly())
	if err != nil {
		return nil, fmt.Errorf("etcd revision: %w", err)
	}
	rev := get.Header.Revision
	done := make(chan struct{})
	wch := h.cli.Watch(clientv3.WithRequireLeader(ctx), registry.InstancesPrefix(registry.DefaultPrefix),
		clientv3.WithPrefix(), clientv3.WithRev(rev+1))
	go func() {
		defer close(done)
		for resp := range wch {
			at := time.Now()
			for _, ev := range resp.Events {
				h.obs.onWatch(string(ev.Kv.Key), at)
			}
		}
	}()
	return done, nil
}

// pick draws a service with no change in flight and marks it busy, or returns nil.
func (h *harness) pick(rng *rand.Rand) *svcState {
	for range 16 {
		s := h.svcs[rng.IntN(len(h.svcs))]
		if s.busy.CompareAndSwap(false, true) {
			return s
		}
	}
	return nil
}

func drawKind(rng *rand.Rand) string {
	n := rng.IntN(100)
	for _, k := range kindShares {
		if n < k.share {
			return k.kind
		}
		n -= k.share
	}
	return KindLoad
}

// scenario runs changes at the configured rate for the configured duration.
func (h *harness) scenario(ctx context.Context, rep *Report) error {
	cfg := h.cfg
	res := &results{lat: make([][]time.Duration, len(h.variants)), missed: make([]int, len(h.variants)),
		unseenExpiries: make([]int, len(h.variants)), kinds: map[string]int{}}
	m0, err := h.cp.metrics(ctx)
	if err != nil {
		return err
	}
	u0, err := h.cp.Usage(ctx)
	if err != nil {
		return err
	}
	bytes0 := h.bytesByVariant()
	self0 := cpuSelf()
	start := time.Now()

	rng := h.newRand(0)
	total := int(cfg.Rate * cfg.Duration.Seconds())
	tick := time.NewTicker(time.Duration(float64(time.Second) / cfg.Rate))
	sem := make(chan struct{}, changeWorkers)
	var wg sync.WaitGroup
	var firstErr atomic.Pointer[error]
	for i := 0; i < total && ctx.Err() == nil && firstErr.Load() == nil; i++ {
		select {
		case <-ctx.Done():
		case <-tick.C:
		}
		s := h.pick(rng)
		if s == nil {
			res.skip()
			continue
		}
		select {
		case sem <- struct{}{}:
		default:
			s.busy.Store(false)
			res.skip()
			continue
		}
		kind, crng := drawKind(rng), h.newRand(uint64(i)+1)
		wg.Add(1)
		go func() {
			defer wg.Done()
			defer func() { s.busy.Store(false); <-sem }()
			o, err := h.change(ctx, s, kind, crng)
			switch {
			case errors.Is(err, errInvisible):
				res.skip()
			case err != nil:
				firstErr.CompareAndSwap(nil, &err)
			default:
				res.add(o, h.envoys)
			}
		}()
	}
	tick.Stop()
	wg.Wait()
	if p := firstErr.Load(); p != nil {
		return fmt.Errorf("scenario: %w", *p)
	}
	if err := ctx.Err(); err != nil {
		return fmt.Errorf("scenario: %w", err)
	}
	wall := time.Since(start).Seconds()
	u1, err := h.cp.Usage(ctx)
	if err != nil {
		return err
	}
	m1, err := h.cp.metrics(ctx)
	if err != nil {
		return err
	}
	bytes1 := h.bytesByVariant()

	rep.DurationSeconds = wall
	rep.Changes = res.kinds
	rep.Skipped = res.skipped
	rep.EtcdFloor = Summarize(res.floor)
	rep.FloorMissed = res.floorNo
	rep.EtcdWrite = Summarize(res.write)
	rep.ControlPlaneCPUSeconds = u1.CPUSeconds - u0.CPUSeconds
	rep.ControlPlaneCores = rep.ControlPlaneCPUSeconds / wall
	rep.HarnessCores = (cpuSelf() - self0) / wall
	rep.PushesPerSecond = (m1["tether_snapshots_total"] - m0["tether_snapshots_total"]) / wall
	rep.TranslateMeanMs = meanDelta(m0, m1, "tether_translate_duration_seconds")
	rep.EventToPushMeanMs = meanDelta(m0, m1, "tether_event_to_push_seconds")
	rep.ResponsesPerSecond = (m1["tether_xds_responses_total"] - m0["tether_xds_responses_total"]) / wall
	// An expiry no Envoy held is the guard's doing only as far as the guard counts removals
	// it held; any beyond that are missed.
	rep.GuardHeldRemovals = int(m1["tether_mass_removals_total"] - m0["tether_mass_removals_total"])
	rep.HeldExpiries = min(res.unseenExpiry, rep.GuardHeldRemovals)
	changes := 0
	for _, n := range res.kinds {
		changes += n
	}
	for i, v := range h.variants {
		vr := VariantReport{Variant: v, Envoys: h.envoysOf(i), Propagation: Summarize(res.lat[i]), Missed: res.missed[i]}
		if rep.HeldExpiries < res.unseenExpiry {
			vr.Missed += res.unseenExpiries[i]
		}
		if rep.EtcdFloor.P50 > 0 {
			vr.FloorRatioP50 = vr.Propagation.P50 / rep.EtcdFloor.P50
		}
		if rep.EtcdFloor.P99 > 0 {
			vr.FloorRatioP99 = vr.Propagation.P99 / rep.EtcdFloor.P99
		}
		if changes > 0 && vr.Envoys > 0 {
			vr.BytesPerChangePerEnvoy = float64(bytes1[i]-bytes0[i]) / float64(changes) / float64(vr.Envoys)
		}
		rep.Variants = append(rep.Variants, vr)
	}
	return nil
}

// loadProbes makes isolated load changes, one at a time after a quiet pause, and records
// the bytes each Envoy received for one of them.
func (h *harness) loadProbes(ctx context.Context, rep *Report) error {
	settle := func() error {
		t := time.NewTimer(500 * time.Millisecond)
		defer t.Stop()
		select {
		case <-ctx.Done():
			return fmt.Errorf("load probes: %w", ctx.Err())
		case <-t.C:
			return nil
		}
	}
	sums := make([]float64, len(h.variants))
	probes := 0
	rng := h.newRand(1 << 62)
	for i := 0; probes < h.cfg.LoadProbes && i < 4*h.cfg.LoadProbes; i++ {
		if err := settle(); err != nil {
			return err
		}
		s := h.svcs[i%len(h.svcs)]
		s.busy.Store(true)
		before := h.bytesByVariant()
		o, err := h.change(ctx, s, KindLoad, rng)
		if err == nil {
			err = settle() // let any later push for the same change arrive
		}
		after := h.bytesByVariant()
		s.busy.Store(false)
		if errors.Is(err, errInvisible) {
			continue
		}
		if err != nil {
			return fmt.Errorf("load probe: %w", err)
		}
		for _, at := range o.seen {
			if at.IsZero() {
				return fmt.Errorf("load probe on %s: not every Envoy saw it within %s", s.name, h.cfg.ChangeTimeout)
			}
		}
		for v := range h.variants {
			sums[v] += float64(after[v]-before[v]) / float64(h.envoysOf(v))
		}
		probes++
	}
	if probes == 0 {
		return errors.New("load probes: no visible load change could be made")
	}
	for v := range h.variants {
		rep.Variants[v].LoadChangeBytesPerEnvoy = sums[v] / float64(probes)
	}
	return nil
}

func (h *harness) bytesByVariant() []int64 {
	out := make([]int64, len(h.variants))
	for _, e := range h.envoys {
		out[e.variant] += e.bytes.Load()
	}
	return out
}

func (h *harness) envoysOf(v int) int {
	n := 0
	for _, e := range h.envoys {
		if e.variant == v {
			n++
		}
	}
	return n
}

// meanDelta is the mean, in ms, of a histogram (in seconds) over the observations made
// between two scrapes.
func meanDelta(m0, m1 map[string]float64, name string) float64 {
	if n := m1[name+"_count"] - m0[name+"_count"]; n > 0 {
		return (m1[name+"_sum"] - m0[name+"_sum"]) / n * 1000
	}
	return 0
}
