package controlplane

import (
	"maps"
	"reflect"

	"github.com/rs/zerolog"

	"github.com/tetherlb/tether/registry"
)

// drainApplier applies the operators' drains (registry.DrainService) to each state before
// translation, keeping the drained copy of a service while neither the service nor its
// drains change: the translation cache re-translates a service only when its pointer changes.
// Its zero value is ready; only the publish loop uses it.
type drainApplier struct {
	memo map[string]drainMemo
	// log and onCount (both optional) report drains as they take and leave instances: a log
	// line when an instance is drained or no longer is, and the number drained after each apply.
	log     zerolog.Logger
	onCount func(int)
	marked  map[string]map[string]registry.DrainMark // service -> instance -> drain, as last applied
}

type drainMemo struct {
	in     *registry.Service
	drains map[string]registry.Drain
	out    *registry.Service
}

// apply returns st with its drains applied; st itself when it has none.
func (a *drainApplier) apply(st *registry.State) *registry.State {
	out := a.drain(st)
	a.report()
	return out
}

func (a *drainApplier) drain(st *registry.State) *registry.State {
	if st == nil || len(st.Drains) == 0 {
		a.memo = nil
		return st
	}
	next := make(map[string]drainMemo, len(st.Drains))
	var out *registry.State
	for name, drains := range st.Drains {
		svc := st.Services[name]
		if svc == nil {
			continue
		}
		m, ok := a.memo[name]
		if !ok || m.in != svc || !reflect.DeepEqual(m.drains, drains) {
			m = drainMemo{in: svc, drains: drains, out: registry.DrainService(svc, drains)}
		}
		next[name] = m
		if m.out == svc {
			continue
		}
		if out == nil {
			c := *st
			c.Services = maps.Clone(st.Services)
			out = &c
		}
		out.Services[name] = m.out
	}
	a.memo = next
	if out == nil {
		return st
	}
	return out
}

// report logs the instances drained or released since the last apply and counts those
// drained; it costs the drained instances, which are few.
func (a *drainApplier) report() {
	now := make(map[string]map[string]registry.DrainMark, len(a.memo))
	n := 0
	for name, m := range a.memo {
		if len(m.out.Drained) > 0 {
			now[name] = m.out.Drained
			n += len(m.out.Drained)
		}
	}
	for name, marks := range now {
		was := a.marked[name]
		for id, mark := range marks {
			if old, ok := was[id]; !ok || old.Name != mark.Name {
				a.log.Info().Str("service", name).Str("instance", id).Str("drain", mark.Name).
					Msg("operator drain applied: the instance takes no new sessions")
			}
		}
	}
	for name, was := range a.marked {
		for id, mark := range was {
			if _, ok := now[name][id]; !ok {
				a.log.Info().Str("service", name).Str("instance", id).Str("drain", mark.Name).
					Msg("operator drain no longer applies to the instance (undone, or the instance left)")
			}
		}
	}
	a.marked = now
	if a.onCount != nil {
		a.onCount(n)
	}
}
