package translate

import (
	"fmt"
	"testing"

	"github.com/tetherlb/tether/registry"
)

// bigState has services×perService instances: a mix of affinity modes, states and loads.
func bigState(services, perService int) *registry.State {
	modes := []registry.AffinityMode{registry.AffinityCookie, registry.AffinityHeader, registry.AffinitySourceIP, registry.AffinityNone}
	states := []registry.InstanceState{registry.StateAvailable, registry.StateAvailable, registry.StateAvailable, registry.StateFull, registry.StateDraining}
	st := &registry.State{Revision: 1, Services: map[string]*registry.Service{}}
	for s := range services {
		name := fmt.Sprintf("svc-%04d", s)
		cfg := registry.DefaultServiceConfig(name)
		cfg.Affinity.Mode = modes[s%len(modes)]
		cfg.Domains = []string{fmt.Sprintf("app%d.example.com", s%50)}
		cfg.PathPrefix = fmt.Sprintf("/s%d/", s)
		svc := &registry.Service{Name: name, Config: cfg, Configured: true, Instances: map[string]registry.Instance{}, Revision: 1}
		for i := range perService {
			id := fmt.Sprintf("i%02d", i)
			svc.Instances[id] = registry.Instance{
				ID: id, Address: fmt.Sprintf("10.%d.%d.%d", s/250, s%250, i+1), Port: 5000, Zone: fmt.Sprintf("zone-%d", i%3),
				Thresholds: registry.Thresholds{MaxSessions: 500, MaxCPU: 85, MaxMemory: 70},
				Load:       registry.Load{Sessions: (s*7 + i*31) % 500, CPU: float64((s + i*13) % 85), Memory: 40},
				State:      states[(s+i)%len(states)],
			}
		}
		st.Services[name] = svc
	}
	return st
}

func BenchmarkTranslate10k(b *testing.B) {
	st := bigState(1000, 10)
	res := Translate(st, Options{})
	if len(res.Clusters) != 1000 || len(res.Problems) != 0 {
		b.Fatalf("%d clusters, problems %v", len(res.Clusters), res.Problems)
	}
	b.ReportAllocs()
	for b.Loop() {
		Translate(st, Options{})
	}
}

func BenchmarkCacheOneInstanceChange(b *testing.B) {
	st := bigState(1000, 10)
	c := NewCache(Options{})
	c.Translate(st)
	// Two successive States that differ in one instance's load, as the watcher hands them out.
	next := func(prev *registry.State, sessions int) *registry.State {
		out := &registry.State{Revision: prev.Revision + 1, Services: make(map[string]*registry.Service, len(prev.Services))}
		for k, v := range prev.Services {
			out.Services[k] = v
		}
		old := prev.Services["svc-0042"]
		svc := *old
		svc.Instances = make(map[string]registry.Instance, len(old.Instances))
		for id, in := range old.Instances {
			svc.Instances[id] = in
		}
		in := svc.Instances["i03"]
		in.Load.Sessions = sessions
		svc.Instances["i03"] = in
		svc.Revision = out.Revision
		out.Services["svc-0042"] = &svc
		return out
	}
	a, z := next(st, 10), next(st, 400)
	b.ReportAllocs()
	i := 0
	for b.Loop() {
		if i%2 == 0 {
			c.Translate(a)
		} else {
			c.Translate(z)
		}
		i++
	}
}
