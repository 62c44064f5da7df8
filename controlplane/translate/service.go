package translate

import (
	"fmt"
	"maps"
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
	Name string
	// Cluster is nil when the service is left out (see Problems); its Routes then reserve
	// its domains and path with a 503 when they are known.
	Cluster   *clusterv3.Cluster
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
		return misconfigured(svc)
	}
	sr, err := translateService(svc, opts.withDefaults())
	if err != nil {
		return &ServiceResources{
			Name:     svc.Name,
			Problems: append(sr.Problems, Problem{svc.Name, "service left out: " + err.Error()}),
		}
	}
	for _, p := range svc.ConfigProblems {
		sr.Problems = append(sr.Problems, Problem{svc.Name, "configuration rejected, served with this field at its default: " + p})
	}
	return sr
}

// misconfiguredBody is the body of the reply on the routes of a service left out.
const misconfiguredBody = "This service is misconfigured. Please retry later.\n"

// misconfigured is what a service left out for its configuration contributes: no cluster,
// and, when its configuration still names valid domains and a path, one route per domain
// answering 503 "service misconfigured", which claims them like the service's own routes
// would. Otherwise an unconfigured service on "*" would take its users to its servers.
func misconfigured(svc *registry.Service) *ServiceResources {
	sr := &ServiceResources{Name: svc.Name, Configured: svc.Configured, Created: svc.Created}
	cfg := svc.Config
	msg := "service left out: " + svc.ConfigError + "; no valid earlier version of its configuration is in etcd's history"
	probe := registry.ServiceConfig{Domains: cfg.Domains, PathPrefix: cfg.PathPrefix}
	if len(cfg.Domains) == 0 || validRoutes(probe) != nil {
		sr.Problems = []Problem{{svc.Name, msg + "; NOTHING is reserved for it: its users may reach another service"}}
		return sr
	}
	var ignored []Problem // dropped ports, reported with the service's own problem
	sr.Domains = hostDomains(svc.Name, cfg.Domains, &ignored)
	sr.PathPrefix = cfg.PathPrefix
	r := &routev3.Route{Name: svc.Name + "/misconfigured", Match: match(cfg.PathPrefix),
		Action: &routev3.Route_DirectResponse{DirectResponse: &routev3.DirectResponseAction{Status: 503,
			Body: inline(misconfiguredBody)}},
		ResponseHeadersToAdd: overloadHeaders(registry.Overload{RetryAfterSeconds: 60})}
	if err := r.ValidateAll(); err != nil {
		sr.Domains, sr.PathPrefix = nil, ""
		sr.Problems = []Problem{{svc.Name, msg + "; NOTHING is reserved for it (" + err.Error() + ")"}}
		return sr
	}
	sr.Routes = []*routev3.Route{r}
	sr.Problems = append([]Problem{{svc.Name, msg + "; its domains and path answer 503 until it is fixed"}}, ignored...)
	return sr
}

// validRoutes checks the domains and path prefix of cfg as the registry does.
func validRoutes(cfg registry.ServiceConfig) error {
	full := registry.DefaultServiceConfig("x")
	full.Domains, full.PathPrefix = cfg.Domains, cfg.PathPrefix
	return full.Validate()
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
	sr.Domains = hostDomains(svc.Name, cfg.Domains, &sr.Problems)

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
	sr.Cluster = cluster(svc.Name, cfg)
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
	out := make([]registry.Instance, 0, len(svc.Instances))
	for _, id := range slices.Sorted(maps.Keys(svc.Instances)) {
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

// hostDomains returns the virtual host domains of a service's domains: lower-cased, sorted,
// without duplicates, and without a port. The route configuration ignores the port of the
// Host header for every service (ignore_port_in_host_matching), so that one service listing
// "example.com:8080" cannot make every other service's domains stop matching requests whose
// Host carries a port; a domain's port is dropped and reported.
func hostDomains(svc string, domains []string, problems *[]Problem) []string {
	out := make([]string, 0, len(domains))
	for _, d := range domains {
		d = strings.ToLower(d)
		if host, port, ok := strings.Cut(d, ":"); ok {
			*problems = append(*problems, Problem{svc, fmt.Sprintf("domain %s: the port %s is ignored (Envoy matches the Host header without its port for every service); serving %s", d, port, host)})
			d = host
		}
		out = append(out, d)
	}
	slices.Sort(out)
	return slices.Compact(out)
}
