// Package overview is the operator's view of the registry: services, their instances with
// load against thresholds, drains and rejected keys, sorted for display, and its rendering as
// text. `tether-controlplane status` and `drains` print it; the control plane's web monitor
// serves it, extended with what Envoy was given.
package overview

import (
	"maps"
	"slices"
	"strings"

	"github.com/tetherlb/tether/registry"
)

// Overview is the registry at one etcd revision, sorted for display.
type Overview struct {
	Revision int64      `json:"revision"`
	Summary  Summary    `json:"summary"`
	Services []Service  `json:"services"`
	Rejected []Rejected `json:"rejected"`
	// Drains are the operators' drains, sorted by service and name.
	Drains []Drain `json:"drains"`
}

// Summary counts instances by state, and their sessions.
type Summary struct {
	Services  int `json:"services"`
	Instances int `json:"instances"`
	Available int `json:"available"`
	Full      int `json:"full"`
	Draining  int `json:"draining"`
	Unhealthy int `json:"unhealthy"`
	Sessions  int `json:"sessions"`
	// SessionsUnknown counts instances whose agents did not measure their sessions.
	SessionsUnknown int `json:"sessionsUnknown"`
	// Drained counts instances selected by an operator's drain (whatever their state).
	Drained int `json:"drained"`
}

// Service is one service and its instances, sorted by ID.
type Service struct {
	Name string `json:"name"`
	// Configured is true when an operator wrote the service's configuration key.
	Configured bool                  `json:"configured"`
	Domains    []string              `json:"domains"`
	PathPrefix string                `json:"pathPrefix"`
	Affinity   registry.AffinityMode `json:"affinity"`
	Instances  []Instance            `json:"instances"`
}

// Instance is an instance as its agent wrote it (the etcd value's fields, inlined in JSON),
// plus what Envoy was given for it when known.
type Instance struct {
	registry.Instance
	// Envoy is the endpoint served to Envoy; nil when the instance is not in the published
	// configuration, or when the overview was read from etcd directly.
	Envoy *Endpoint `json:"envoy,omitempty"`
	// Drain is the operator's drain that selects the instance (name, since when); nil when
	// none does.
	Drain *registry.DrainMark `json:"drain,omitempty"`
}

// Drain is one operator's drain with what it selects now.
type Drain struct {
	Service string `json:"service"`
	Name    string `json:"name"`
	registry.Drain
	// Matched are the IDs of the registered instances it selects, sorted.
	Matched []string `json:"matched"`
	// Sessions is the sum of the matched instances' sessions.
	Sessions int `json:"sessions"`
	// SessionsUnknown are the matched instances whose agents did not measure their sessions
	// (no --sessions-url, or a failing probe), sorted: while any is listed, Sessions is no
	// count of what is left and nothing may call the drain's servers safe to stop.
	SessionsUnknown []string `json:"sessionsUnknown"`
}

// Endpoint is what Envoy was given for an instance.
type Endpoint struct {
	// Weight is the endpoint's load_balancing_weight (0 when none was set).
	Weight uint32 `json:"weight"`
	// Health is the EDS health status: HEALTHY, DRAINING, UNHEALTHY, ...
	Health string `json:"health"`
	// FirstPhase: a new endpoint (or one back from unhealthy) served as DRAINING until every
	// connected Envoy has acknowledged it (two-phase publication).
	FirstPhase bool `json:"firstPhase"`
	// KnownBy of Envoys (every connected Envoy) hold the endpoint, reachable by session.
	KnownBy int `json:"knownBy"`
	Envoys  int `json:"envoys"`
}

// Rejected is a registry key whose value failed decoding or validation.
type Rejected struct {
	Key   string `json:"key"`
	Error string `json:"error"`
}

// FromState builds the overview of st; a nil st gives an empty overview.
func FromState(st *registry.State) Overview {
	ov := Overview{Services: []Service{}, Rejected: []Rejected{}, Drains: []Drain{}}
	if st == nil {
		return ov
	}
	ov.Revision = st.Revision
	for _, s := range st.Services {
		if s == nil {
			continue
		}
		svc := Service{
			Name: s.Name, Configured: s.Configured, Domains: slices.Clone(s.Config.Domains),
			PathPrefix: s.Config.PathPrefix, Affinity: s.Config.Affinity.Mode,
			Instances: make([]Instance, 0, len(s.Instances)),
		}
		if svc.Domains == nil {
			svc.Domains = []string{}
		}
		for id, in := range s.Instances {
			oi := Instance{Instance: in}
			if m, ok := s.Drained[id]; ok {
				oi.Drain = &m
				ov.Summary.Drained++
			}
			svc.Instances = append(svc.Instances, oi)
			ov.Summary.Instances++
			ov.Summary.Sessions += in.Load.Sessions
			if !in.Load.SessionsKnown() {
				ov.Summary.SessionsUnknown++
			}
			switch in.State {
			case registry.StateAvailable:
				ov.Summary.Available++
			case registry.StateFull:
				ov.Summary.Full++
			case registry.StateDraining:
				ov.Summary.Draining++
			case registry.StateUnhealthy:
				ov.Summary.Unhealthy++
			}
		}
		slices.SortFunc(svc.Instances, func(a, b Instance) int { return strings.Compare(a.ID, b.ID) })
		ov.Services = append(ov.Services, svc)
	}
	slices.SortFunc(ov.Services, func(a, b Service) int { return strings.Compare(a.Name, b.Name) })
	ov.Summary.Services = len(ov.Services)
	for k, e := range st.Rejected {
		ov.Rejected = append(ov.Rejected, Rejected{Key: k, Error: e})
	}
	slices.SortFunc(ov.Rejected, func(a, b Rejected) int { return strings.Compare(a.Key, b.Key) })
	ov.Drains = drains(st)
	return ov
}

// drains lists st's drains with the instances each selects now.
func drains(st *registry.State) []Drain {
	out := []Drain{}
	for _, svcName := range slices.Sorted(maps.Keys(st.Drains)) {
		for _, name := range slices.Sorted(maps.Keys(st.Drains[svcName])) {
			d := Drain{Service: svcName, Name: name, Drain: st.Drains[svcName][name], Matched: []string{}, SessionsUnknown: []string{}}
			if s := st.Services[svcName]; s != nil {
				for id, in := range s.Instances {
					if d.Matches(&in) {
						d.Matched = append(d.Matched, id)
						d.Sessions += in.Load.Sessions
						if !in.Load.SessionsKnown() {
							d.SessionsUnknown = append(d.SessionsUnknown, id)
						}
					}
				}
			}
			slices.Sort(d.Matched)
			slices.Sort(d.SessionsUnknown)
			out = append(out, d)
		}
	}
	return out
}
