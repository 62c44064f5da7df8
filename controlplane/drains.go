package controlplane

import (
	"maps"
	"reflect"

	"github.com/tetherlb/tether/registry"
)

// drainApplier applies the operators' drains (registry.DrainService) to each state before
// translation, keeping the drained copy of a service while neither the service nor its
// drains change: the translation cache re-translates a service only when its pointer changes.
// Its zero value is ready; only the publish loop uses it.
type drainApplier struct {
	memo map[string]drainMemo
}

type drainMemo struct {
	in     *registry.Service
	drains map[string]registry.Drain
	out    *registry.Service
}

// apply returns st with its drains applied; st itself when it has none.
func (a *drainApplier) apply(st *registry.State) *registry.State {
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
