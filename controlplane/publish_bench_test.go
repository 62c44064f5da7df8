package controlplane

import (
	"fmt"
	"maps"
	"testing"
	"time"

	"github.com/rs/zerolog"

	"github.com/tetherlb/tether/controlplane/translate"
	"github.com/tetherlb/tether/registry"
)

// benchState returns a registry state of services x perService available instances.
func benchState(services, perService int) *registry.State {
	st := &registry.State{Revision: 1, Services: make(map[string]*registry.Service, services)}
	for s := range services {
		name := fmt.Sprintf("svc-%04d", s)
		cfg := registry.DefaultServiceConfig(name)
		cfg.Domains = []string{name + ".example.com"}
		svc := &registry.Service{Name: name, Config: cfg, Instances: make(map[string]registry.Instance, perService)}
		for i := range perService {
			id := fmt.Sprintf("%s-%d", name, i)
			svc.Instances[id] = registry.Instance{ID: id, Address: fmt.Sprintf("10.%d.%d.%d", s/250, s%250, i+1), Port: 5000,
				State: registry.StateAvailable, Thresholds: registry.Thresholds{MaxSessions: 1000}, Load: registry.Load{Sessions: 10 * i}}
		}
		st.Services[name] = svc
	}
	return st
}

// withLoad returns st at revision rev with one instance's sessions set, copy-on-write as the
// registry does: one new service pointer, the others shared.
func withLoad(st *registry.State, rev int64, service, id string, sessions int) *registry.State {
	next := *st
	next.Revision = rev
	next.Services = maps.Clone(st.Services)
	svc := *st.Services[service]
	svc.Instances = maps.Clone(svc.Instances)
	in := svc.Instances[id]
	in.Load.Sessions = sessions
	svc.Instances[id] = in
	next.Services[service] = &svc
	return &next
}

// BenchmarkPublishLoadChange is the publisher's work for one load change, as wired in
// production (guard, drains, two-phase publication, translation, the xDS cache with its
// validation and marshalling), with no Envoy connected: what a push costs before any send.
// It should not grow with services beyond a map walk.
func BenchmarkPublishLoadChange(b *testing.B) {
	for _, services := range []int{100, 1000} {
		b.Run(fmt.Sprintf("services=%d", services), func(b *testing.B) {
			m := newMetrics()
			in := newAnswers()
			cache := newXDSCache(zerolog.Nop(), m, in, 0, 0, 0)
			ph := newPhaser(zerolog.Nop(), m, time.Second, cache, in, nil)
			guard := newRemovalGuard(0.5, 30*time.Second, 10*time.Second, zerolog.Nop(), nil)
			p := newPublisher(zerolog.Nop(), m, cache, ph, translate.Options{ListenPort: 10000}, time.Millisecond, time.Millisecond, guard)
			st := benchState(services, 5)
			p.offer(st)
			if !p.publishLatest() {
				b.Fatal("first state not published")
			}
			b.ReportAllocs()
			b.ResetTimer()
			for i := range b.N {
				st = withLoad(st, int64(i+2), "svc-0000", "svc-0000-0", i%2*500)
				p.offer(st)
				if !p.publishLatest() {
					b.Fatal("load change not published")
				}
			}
		})
	}
}
