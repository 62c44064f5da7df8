package bench

import (
	"context"
	"encoding/json"
	"fmt"
	"maps"
	"math/rand/v2"
	"slices"
	"time"

	clientv3 "go.etcd.io/etcd/client/v3"

	"github.com/tetherlb/tether/controlplane/translate"
	"github.com/tetherlb/tether/registry"
)

// BurstReport is one burst: Config.BurstSize load changes, each to another service, written
// in one etcd transaction, so that the control plane's watch delivers them in one response.
type BurstReport struct {
	Changes int `json:"changes"`
	// Propagation is, per (change, Envoy), from the transaction returning to the Envoy
	// holding the change; AllHeldMs until the last Envoy held the last change.
	Propagation Latency `json:"propagation"`
	AllHeldMs   float64 `json:"allHeldMs"`
	// Missed counts (change, Envoy) pairs not held within Config.ChangeTimeout x 6.
	Missed int `json:"missed"`
}

// maxBurstTxnOps is the embedded etcd's bound on operations in one transaction (etcd's
// default is 128): a burst is one transaction.
const maxBurstTxnOps = 4096

// bursts makes Config.Bursts bursts, one after another, each after every Envoy held the one
// before and a second of quiet. The peak RSS of the control plane over them is
// Report.BurstPeakRSSBytes.
func (h *harness) bursts(ctx context.Context, rep *Report) error {
	if h.cfg.Bursts <= 0 {
		return nil
	}
	reset := h.cp.resetPeakRSS()
	rng := h.newRand(1 << 60)
	for b := range h.cfg.Bursts {
		t := time.NewTimer(time.Second)
		select {
		case <-ctx.Done():
			t.Stop()
			return fmt.Errorf("burst: %w", ctx.Err())
		case <-t.C:
		}
		type change struct {
			s    *svcState
			st   *instState
			next registry.Instance
			p    *pending
		}
		var changes []change
		var ops []clientv3.Op
		for _, i := range rng.Perm(len(h.svcs)) {
			if len(changes) == min(h.cfg.BurstSize, maxBurstTxnOps) {
				break
			}
			s := h.svcs[i]
			if !s.busy.CompareAndSwap(false, true) {
				continue
			}
			st, next, want, ok := s.nextLoad(rng)
			if !ok {
				s.busy.Store(false)
				continue
			}
			val, err := json.Marshal(next)
			if err != nil {
				s.busy.Store(false)
				return fmt.Errorf("burst: encode %s: %w", next.ID, err)
			}
			key := registry.InstanceKey(registry.DefaultPrefix, s.name, next.ID)
			ops = append(ops, clientv3.OpPut(key, string(val), clientv3.WithLease(st.lease)))
			p := h.obs.add(translate.ClusterName(s.name), key, next.Address, uint32(next.Port), want)
			changes = append(changes, change{s: s, st: st, next: next, p: p})
		}
		done := func() {
			for _, c := range changes {
				h.obs.remove(c.p)
				c.s.busy.Store(false)
			}
		}
		if _, err := h.cli.Txn(ctx).Then(ops...).Commit(); err != nil {
			done()
			return fmt.Errorf("burst %d: write %d changes in one transaction: %w", b, len(ops), err)
		}
		t0 := time.Now()
		for _, c := range changes {
			c.st.inst = c.next
		}
		timeout := time.NewTimer(6 * h.cfg.ChangeTimeout)
	wait:
		for _, c := range changes {
			select {
			case <-c.p.done:
			case <-timeout.C:
				break wait
			case <-ctx.Done():
				break wait
			}
		}
		timeout.Stop()
		br := BurstReport{Changes: len(changes)}
		var lat []time.Duration
		var last time.Duration
		for _, c := range changes {
			seen, _ := h.obs.remove(c.p)
			for _, at := range seen {
				if at.IsZero() {
					br.Missed++
					continue
				}
				d := max(at.Sub(t0), 0)
				lat = append(lat, d)
				last = max(last, d)
			}
		}
		done()
		br.Propagation = Summarize(lat)
		br.AllHeldMs = float64(last.Microseconds()) / 1000
		rep.Bursts = append(rep.Bursts, br)
		h.log.Info().Int("burst", b).Int("changes", br.Changes).Float64("allHeldMs", br.AllHeldMs).Int("missed", br.Missed).Msg("burst held")
	}
	if reset == nil {
		u, err := h.cp.Usage(ctx)
		if err != nil {
			return err
		}
		rep.BurstPeakRSSBytes = u.PeakRSS
	}
	return nil
}

// nextLoad draws a load change of one of s's instances that an Envoy can see (its weight
// crosses the quantization step): the instance, its next state and what an Envoy will hold.
// The caller holds s busy.
func (s *svcState) nextLoad(rng *rand.Rand) (*instState, registry.Instance, sig, bool) {
	cur := s.instances()
	if len(cur) == 0 {
		return nil, registry.Instance{}, sig{}, false
	}
	ids := slices.Sorted(maps.Keys(cur))
	st := s.insts[ids[rng.IntN(len(ids))]]
	before := s.expected(cur, st.inst)
	next := st.inst
	next.UpdatedAt = time.Now().UTC()
	for j := range len(loadLevels) {
		next.Load.Sessions = loadLevels[(j+rng.IntN(len(loadLevels)))%len(loadLevels)]
		cur[next.ID] = next
		if want := s.expected(cur, next); want != before {
			return st, next, want, true
		}
	}
	return nil, registry.Instance{}, sig{}, false
}
