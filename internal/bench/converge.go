package bench

import (
	"context"
	"fmt"
	"hash/maphash"
	"maps"
	"strconv"
	"sync"
	"sync/atomic"
	"time"

	endpointv3 "github.com/envoyproxy/go-control-plane/envoy/config/endpoint/v3"
	resourcev3 "github.com/envoyproxy/go-control-plane/pkg/resource/v3"
	"google.golang.org/protobuf/proto"
	"google.golang.org/protobuf/types/known/anypb"

	"github.com/tetherlb/tether/controlplane/translate"
	"github.com/tetherlb/tether/internal/xdsclient"
	"github.com/tetherlb/tether/registry"
)

// convergeTimeout bounds the final check's wait. Removals the control plane's guard holds
// come back after --hold-grace (30 s by default) and new endpoints are promoted within
// --publish-settle (10 s), so every Envoy holds the registry well within it.
const convergeTimeout = 60 * time.Second

// claSigs is what an Envoy sees of a ClusterLoadAssignment: each endpoint "addr:port" with its
// health and weight.
type claSigs map[string]sig

func sigsOf(cla *endpointv3.ClusterLoadAssignment) claSigs {
	out := claSigs{}
	for _, loc := range cla.GetEndpoints() {
		for _, lb := range loc.GetLbEndpoints() {
			sa := lb.GetEndpoint().GetAddress().GetSocketAddress()
			out[sa.GetAddress()+":"+strconv.FormatUint(uint64(sa.GetPortValue()), 10)] = lbSig(lb)
		}
	}
	return out
}

// holdings records, for every simulated Envoy and service, a fingerprint of the last
// assignment the Envoy received, and what each fingerprint holds. A light client keeps no
// resources, and a thousand Envoys' assignments are too many to keep: distinct assignments
// are few (one per change), so each is decoded once, on first sight.
type holdings struct {
	seed    maphash.Seed
	service map[string]int    // cluster name -> service index; read-only after newHoldings
	last    [][]atomic.Uint64 // [Envoy][service] fingerprint; 0: none
	sigs    sync.Map          // fingerprint -> claSigs
}

func newHoldings(clusters []string, envoys int) *holdings {
	h := &holdings{seed: maphash.MakeSeed(), service: make(map[string]int, len(clusters)), last: make([][]atomic.Uint64, envoys)}
	for i, c := range clusters {
		h.service[c] = i
	}
	for i := range h.last {
		h.last[i] = make([]atomic.Uint64, len(clusters))
	}
	return h
}

// record is called by Envoy idx, on its own goroutine, for every response it applied.
func (h *holdings) record(idx int, u xdsclient.Update) {
	if u.TypeURL != resourcev3.EndpointType || idx >= len(h.last) {
		return
	}
	for name, m := range u.Resources {
		s, ok := h.service[name]
		if !ok {
			continue
		}
		fp := h.fingerprint(m)
		if _, seen := h.sigs.Load(fp); !seen {
			h.sigs.Store(fp, sigsOf(claOf(m)))
		}
		h.last[idx][s].Store(fp)
	}
	for _, name := range u.Removed {
		if s, ok := h.service[name]; ok {
			h.last[idx][s].Store(0)
		}
	}
}

func (h *holdings) fingerprint(m proto.Message) uint64 {
	var b []byte
	if a, ok := m.(*anypb.Any); ok {
		b = a.GetValue()
	} else {
		b, _ = proto.MarshalOptions{Deterministic: true}.Marshal(m)
	}
	return maphash.Bytes(h.seed, b) | 1 // never 0, which means none
}

// differing returns, per variant, how many Envoys hold for some service other endpoints than
// want (by service index) calls for.
func (h *holdings) differing(want []claSigs, variantOf func(int) int, variants int) []int {
	out := make([]int, variants)
	same := map[[2]uint64]bool{} // (service, fingerprint) -> holds want
	for e := range h.last {
		for s := range want {
			fp := h.last[e][s].Load()
			k := [2]uint64{uint64(s), fp}
			ok, known := same[k]
			if !known {
				got, _ := h.sigs.Load(fp)
				g, _ := got.(claSigs)
				ok = fp != 0 && maps.Equal(g, want[s])
				same[k] = ok
			}
			if !ok {
				out[variantOf(e)]++
				break
			}
		}
	}
	return out
}

// converge waits, once every change was made, until every simulated Envoy holds the endpoints
// the registry calls for, as the control plane's translation computes them. Missed counts
// changes that came later than the change timeout; this counts Envoys that never came to hold
// the registry, which a lost change would leave behind.
func (h *harness) converge(ctx context.Context, rep *Report) error {
	want := make([]claSigs, len(h.svcs))
	for i, s := range h.svcs {
		svc := &registry.Service{Name: s.name, Config: s.cfg, Configured: true, Instances: s.instances()}
		want[i] = sigsOf(translate.TranslateService(svc, translate.Options{}).Endpoints)
	}
	variantOf := func(e int) int { return h.envoys[e].variant }
	start := time.Now()
	tick := time.NewTicker(250 * time.Millisecond)
	defer tick.Stop()
	for {
		differ := h.holds.differing(want, variantOf, len(h.variants))
		total := 0
		for _, n := range differ {
			total += n
		}
		if total == 0 || time.Since(start) > convergeTimeout {
			rep.SettledSeconds = time.Since(start).Seconds()
			for v, n := range differ {
				rep.Variants[v].Diverged = n
			}
			if total > 0 {
				h.log.Warn().Int("envoys", total).Dur("after", convergeTimeout).Msg("simulated Envoys do not hold the registry's endpoints")
			} else {
				h.log.Info().Dur("took", time.Since(start)).Msg("every simulated Envoy holds the registry's endpoints")
			}
			return nil
		}
		select {
		case <-ctx.Done():
			return fmt.Errorf("final check: %w", ctx.Err())
		case <-tick.C:
		}
	}
}
