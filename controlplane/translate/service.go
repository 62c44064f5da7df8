package translate

import (
	"fmt"
	"net"
	"slices"
	"strings"
	"time"

	clusterv3 "github.com/envoyproxy/go-control-plane/envoy/config/cluster/v3"
	corev3 "github.com/envoyproxy/go-control-plane/envoy/config/core/v3"
	endpointv3 "github.com/envoyproxy/go-control-plane/envoy/config/endpoint/v3"
	routev3 "github.com/envoyproxy/go-control-plane/envoy/config/route/v3"

	"github.com/tetherlb/tether/registry"
)

// ServiceResources is what one service contributes. TranslateService depends only on the
// service and opts, so callers can cache it per *registry.Service pointer.
type ServiceResources struct {
	Name      string
	Cluster   *clusterv3.Cluster // nil when the service is left out (see Problems)
	Endpoints *endpointv3.ClusterLoadAssignment
	// Routes of the service in match order; Assemble puts them in the virtual host of each
	// of Domains.
	Routes []*routev3.Route
	// Domains are the service's domains, lower-cased and sorted.
	Domains    []string
	PathPrefix string
	// Available is the number of instances served HEALTHY: offered new sessions.
	Available int
	// Starting is the number of instances in their first phase that will be offered new
	// sessions once promoted.
	Starting int
	// Configured and Created rank the service's claim to its domains and path (see
	// Assemble): from registry.Service.
	Configured bool
	Created    int64
	// Problems found in this service: the service itself left out (Cluster nil) or some
	// of its instances left out.
	Problems []Problem
}

// TranslateService translates one service: its cluster, endpoints and routes. A service whose configuration fails validation, or whose generated resources
// would fail Envoy's validation, is left out with a Problem so that it cannot make Envoy
// reject the configuration of every other service.
func TranslateService(svc *registry.Service, opts Options) *ServiceResources {
	if svc == nil {
		return &ServiceResources{Problems: []Problem{{Message: "nil service left out"}}}
	}
	if svc.ConfigError != "" {
		return &ServiceResources{Name: svc.Name, Problems: []Problem{{svc.Name, "service left out: " + svc.ConfigError +
			"; no valid earlier version of its configuration is in etcd's history, and its defaults would change its cookie and domains"}}}
	}
	sr, err := translateService(svc, opts.withDefaults())
	if err != nil {
		return &ServiceResources{
			Name:     svc.Name,
			Problems: append(sr.Problems, Problem{svc.Name, "service left out: " + err.Error()}),
		}
	}
	return sr
}

func translateService(svc *registry.Service, opts Options) (*ServiceResources, error) {
	cfg := svc.Config
	sr := &ServiceResources{Name: svc.Name, PathPrefix: cfg.PathPrefix, Configured: svc.Configured, Created: svc.Created}
	if err := registry.ValidateServiceName(svc.Name); err != nil {
		return sr, err
	}
	if err := cfg.Validate(); err != nil {
		return sr, fmt.Errorf("configuration: %w", err)
	}
	for _, d := range cfg.Domains {
		sr.Domains = append(sr.Domains, strings.ToLower(d))
	}
	slices.Sort(sr.Domains)
	sr.Domains = slices.Compact(sr.Domains)

	insts := usableInstances(svc, sr)
	for _, in := range insts {
		switch {
		case healthStatus(in, cfg) == corev3.HealthStatus_HEALTHY:
			sr.Available++
		case in.FirstPhase && healthStatus(promoted(in), cfg) == corev3.HealthStatus_HEALTHY:
			sr.Starting++
		}
	}
	var p packer
	sr.Endpoints = endpoints(svc.Name, cfg, insts)
	sr.Cluster = cluster(svc.Name, cfg, &p)
	sr.Routes = routes(svc.Name, cfg, newUsers(sr, opts), &p)
	if cfg.LBPolicy == registry.LBRandom && cfg.Weights == registry.WeightsLoad {
		// Served as configured, but said: Envoy's random load balancer ignores endpoint
		// weights (RandomLoadBalancer::peekOrChoose picks uniformly among healthy hosts).
		sr.Problems = append(sr.Problems, Problem{svc.Name,
			`lbPolicy random ignores endpoint weights, so weights "load" has no effect; use least_request or round_robin to spread new sessions by load, or set weights "equal"`})
	}
	if p.err != nil {
		return sr, p.err
	}
	if err := sr.Cluster.ValidateAll(); err != nil {
		return sr, fmt.Errorf("cluster: %w", err)
	}
	if err := sr.Endpoints.ValidateAll(); err != nil {
		return sr, fmt.Errorf("endpoints: %w", err)
	}
	for _, r := range sr.Routes {
		if err := r.ValidateAll(); err != nil {
			return sr, fmt.Errorf("route %s: %w", r.GetName(), err)
		}
	}
	return sr, nil
}

// usableInstances returns the service's instances sorted by ID, leaving out (with a Problem)
// those Envoy could not route to. The watcher only hands out validated instances; this
// guards hand-built States.
func usableInstances(svc *registry.Service, sr *ServiceResources) []registry.Instance {
	ids := make([]string, 0, len(svc.Instances))
	for id := range svc.Instances {
		ids = append(ids, id)
	}
	slices.Sort(ids)
	out := make([]registry.Instance, 0, len(ids))
	for _, id := range ids {
		in := svc.Instances[id]
		if in.ID == "" {
			in.ID = id
		}
		ip := net.ParseIP(in.Address)
		switch {
		case ip == nil || strings.Contains(in.Address, "%"):
			sr.Problems = append(sr.Problems, Problem{svc.Name, fmt.Sprintf("instance %s left out: address %q is not an IP address", id, in.Address)})
		case in.Port < 1 || in.Port > 65535:
			sr.Problems = append(sr.Problems, Problem{svc.Name, fmt.Sprintf("instance %s left out: port %d is not between 1 and 65535", id, in.Port)})
		default:
			out = append(out, in)
		}
	}
	return out
}

// promoted is in after its first phase.
func promoted(in registry.Instance) registry.Instance {
	in.FirstPhase = false
	return in
}

// newUsers says what the service's routes do with a request without a session marker.
func newUsers(sr *ServiceResources, opts Options) placement {
	switch {
	case sr.Available > 0:
		return placement{forward: true}
	case sr.Starting > 0:
		// The wait ends with the first phase, which lasts at most PublishSettle: say so,
		// rounded up, instead of the overload reply's Retry-After (600 s by default) or
		// its overload page.
		return placement{startingIn: int((opts.PublishSettle + time.Second - 1) / time.Second)}
	}
	return placement{}
}
