// Package translate turns a registry.State into the Envoy configuration of one gateway group:
// one HTTP listener, one route configuration, and a cluster with its endpoints per service.
//
// The translation is pure and deterministic: the same State and Options always give
// proto.Equal resources whose typed configs are marshalled deterministically. It is split
// per service (TranslateService) so that a Cache can re-translate only the services whose
// *registry.Service changed, and Assemble joins the parts into the listener and routes.
//
// Decisions worth knowing when operating Tether (docs/envoy-rules.md lists the Envoy
// behaviour behind each, where in Envoy's source it was read, and the test that holds it):
//   - The listener never changes with the registry: it depends on Options alone. Envoy
//     drains a changed filter chain and closes its connections (WebSockets too) when the
//     drain time ends; routes, clusters and endpoints update in place.
//   - Session marker. cookie mode: the affinity cookie; header mode: the affinity header.
//     source-ip and none have no marker, so every request counts as an initial one.
//   - Retry of initial requests is done with two routes per service instead of
//     retriable_request_headers: a route matching the marker (no retry policy at all, so a
//     request of an existing session is never moved by a retry: Envoy ignores the session
//     override on retries), placed before a catch-all route with the 503 retry. The split
//     does not depend on treat_missing_header_as_empty, and gives the catch-all route a place
//     of its own to answer the overload reply directly when no instance is available while
//     requests of existing sessions still reach their server.
//   - A refused response places no session. The stateful session filter writes its cookie
//     for the last upstream host whatever the status, so a first request every attempt of
//     which got 503 would pin its user to a server that refused them, on the session route
//     that never retries. The listener wraps the filter in match_delegate with a fixed
//     matcher that skips it when the response status is 503 (its decode path, which pins a
//     session's requests, still runs). A session whose own server answers 503 keeps its
//     cookie and sees that reply: Tether cannot tell a session the server holds from one it
//     does not, and moving the first would lose it (the server may expire the cookie itself).
//   - Overload reply. When no instance of a service is available, requests without the
//     marker get the overload reply straight from the route (direct_response: overload
//     status with Retry-After, or 302 to overload.returnUrl). As a backstop, the listener's
//     fixed local reply mappers turn Envoy's own 503s into Tether's replies, reading the
//     service's settings from request headers that each forwarding route sets (and removes
//     when unset, so that clients cannot forge them; backends see them too): no healthy
//     upstream (UH) gives the overload reply, or for a strict service's session the reply
//     that its server is gone (with the session cookie expired); a circuit-breaker overflow
//     (UO) gives a plain "retry in a moment", never the overload reply.
//   - A contested domain and path prefix goes to a configured service before an unconfigured
//     one, then to the older claim (etcd create revision), then by name (see Assemble): a
//     mistyped or hostile agent never takes a configured service's users, and replicas agree.
//     A service whose configuration is rejected with no valid version left is left out.
//   - Path prefixes: "/" and prefixes ending in "/" are plain prefixes; "/app" is a
//     path-separated prefix that matches /app and /app/..., not /apple.
//   - Host matching ignores the port of the Host header (ignore_port_in_host_matching) for
//     every service; a domain listed with a port is served without it, with a Problem. One
//     such domain used to turn port matching on for every service.
//   - Timeouts: HTTP routes have no route timeout by default (timeouts.request 0: a route
//     timeout covers the whole response and would cut long polls, server-sent events and
//     downloads) and an idle timeout (timeouts.idle, 5 min); WebSocket routes have no
//     timeout and a 1 h idle timeout. The initial-request retry's per-try timeout only
//     covers the wait for response headers.
//   - Cluster-wide circuit breakers: Envoy's default of 1024 connections, requests and
//     pending requests per cluster would cap a service at 1024 concurrent WebSockets, so
//     Tether sets 100000 unless limits say otherwise; limits.maxConnections is per host
//     (Envoy's per-host thresholds support only max_connections), limits.maxRequests and
//     limits.maxPendingRequests apply to the whole cluster.
//   - Health: no active health check unless healthCheck.path is set, and no outlier
//     detection. A failing active check or an ejection makes the host UNHEALTHY whatever its
//     EDS status, and the session override refuses UNHEALTHY hosts, so either would move the
//     sessions of a server that is only full or slow. The agent is the health authority.
//     When set, the check is for liveness and sends a Host header an IIS or ASP.NET app
//     accepts (healthCheck.host, else the first exact domain, else localhost).
//   - source-ip needs a hash load balancer: lbPolicy is forced to ring_hash unless it is
//     ring_hash or maglev (noted in the cluster metadata), and hash load balancers get equal
//     weights whatever the load, since a weight change remaps part of the ring. Envoy builds
//     the ring from healthy hosts only, so in source-ip mode a full instance is served
//     HEALTHY with the same weight: it keeps its users and is still offered new ones (full
//     cannot stop new sessions in this mode; the server's own 503 is retried on the next
//     host of the ring). A draining (or drained) instance leaves the ring, and its users move
//     at once: the mode has no way to let a server empty. A new instance joins the ring after
//     its first phase, taking a share of the other servers' users.
//   - While every instance that could take a new session is in its first phase (scale-out
//     from all full), new users get a 503 with Retry-After of at most the phase's length
//     (PublishSettle), never the overload reply with its long Retry-After or returnUrl.
//   - lbPolicy random ignores weights; with weights "load" a Problem says so.
//   - The cookie's SameSite is None when it is Secure and left out otherwise (sameSite
//     "auto", the default): a sign-in that returns by a cross-site POST (OpenID Connect
//     form_post, SAML POST binding) carries no Lax or Strict cookie, so Envoy would place the
//     user anew and overwrite their cookie. Browsers send only SameSite=None cookies
//     cross-site, and only Secure ones. The cookie names a server and grants nothing, so being
//     sent cross-site costs nothing; an explicit sameSite is written as it is.
//   - The cookie-mode cookie is HttpOnly (Envoy always sets it), its value is base64 of a
//     serialized envoy.Cookie message holding the upstream address, and its ttl is 0s (a
//     browser-session cookie; the registry refuses any other cookieTTL, since Envoy writes
//     the expiry from its own monotonic clock, meaningless to another Envoy). Cookie names are at
//     most 63 characters so that the marker regex stays within RE2 program size 100.
package translate

import (
	"cmp"
	"fmt"
	"maps"
	"slices"
	"strings"
	"time"

	clusterv3 "github.com/envoyproxy/go-control-plane/envoy/config/cluster/v3"
	corev3 "github.com/envoyproxy/go-control-plane/envoy/config/core/v3"
	endpointv3 "github.com/envoyproxy/go-control-plane/envoy/config/endpoint/v3"
	listenerv3 "github.com/envoyproxy/go-control-plane/envoy/config/listener/v3"
	routev3 "github.com/envoyproxy/go-control-plane/envoy/config/route/v3"
	"google.golang.org/protobuf/types/known/wrapperspb"

	"github.com/tetherlb/tether/registry"
)

// Names of the generated resources and of the Envoy extensions they use.
const (
	DefaultListenPort = 10000
	ListenerName      = "tether_http"
	RouteConfigName   = "tether_routes"
	// ServiceHeader is set on every forwarded request to the name of its service; the
	// listener's local reply mappers match on it.
	ServiceHeader = "x-tether-service"

	clusterPrefix         = "tether_"
	hcmFilterName         = "envoy.filters.network.http_connection_manager"
	statefulSessionFilter = "envoy.filters.http.stateful_session"
	headerMutationFilter  = "envoy.filters.http.header_mutation"
	routerFilter          = "envoy.filters.http.router"
)

// DefaultPublishSettle is the default of Options.PublishSettle (--publish-settle).
const DefaultPublishSettle = 10 * time.Second

// Options for the translation (from control-plane flags).
type Options struct {
	ListenPort uint32 // Envoy listener port, default 10000
	// PublishSettle is the longest a first phase lasts (two-phase publication): the reply to
	// new users while every server that could take them is in its first phase tells them to
	// retry after at most this long. Default DefaultPublishSettle.
	PublishSettle time.Duration
}

func (o Options) withDefaults() Options {
	if o.ListenPort == 0 {
		o.ListenPort = DefaultListenPort
	}
	if o.PublishSettle <= 0 {
		o.PublishSettle = DefaultPublishSettle
	}
	return o
}

// Resources is the Envoy configuration of one gateway group, every slice sorted by name.
type Resources struct {
	Listeners []*listenerv3.Listener
	Routes    []*routev3.RouteConfiguration
	Clusters  []*clusterv3.Cluster
	Endpoints []*endpointv3.ClusterLoadAssignment
	// Problems found while translating: a service left out because its configuration
	// cannot be translated, an instance left out, or a route lost to a domain+path
	// conflict (see Assemble). The caller logs and counts them.
	Problems []Problem
}

// Problem is one issue found while translating, attributed to a service.
type Problem struct {
	Service string `json:"service"`
	Message string `json:"message"`
}

// ClusterName returns the name of a service's cluster (and of its ClusterLoadAssignment).
func ClusterName(service string) string { return clusterPrefix + service }

// Translate is pure and deterministic: same State and Options, byte-identical output
// (deterministic proto marshal).
func Translate(st *registry.State, opts Options) *Resources {
	var parts []*ServiceResources
	if st != nil {
		for _, svc := range st.Services {
			if svc != nil {
				parts = append(parts, TranslateService(svc, opts))
			}
		}
	}
	return Assemble(parts, opts)
}

// Assemble builds the listener and the route configuration from the per-service parts and
// collects their clusters and endpoints. Services sharing a domain share its virtual host;
// within it routes are ordered by path prefix length (longest first), then service name.
// When services claim the same domain and path prefix, one keeps the route and each other
// loses it with a Problem (it keeps its cluster). The route goes to a configured service
// before an unconfigured one, then to the older claim (lower create revision), then by
// name. So an agent started with a mistyped or hostile --service never takes a configured
// service's users, and an unconfigured service gets the default "*" catch-all only while
// no configured or older service holds it. Create revisions come from etcd, so every
// replica picks the same winner; a later edit of the winner does not move its users.
func Assemble(svcs []*ServiceResources, opts Options) *Resources {
	return assemble(svcs, opts, nil)
}

// listenerMemo remembers the listener (it depends on Options alone), so that a Cache builds
// and marshals it once.
type listenerMemo struct {
	listener *listenerv3.Listener
	err      error
	// The last route configuration and the route slices it was built from: when every
	// service hands back the same slices (the Cache keeps unchanged routes' pointers), the
	// configuration is reused, and not rebuilt and re-marshalled on each push.
	routeParts []routePart
	routes     *routev3.RouteConfiguration
}

// routePart identifies what one service puts in the route configuration: its routes and its
// domains by the identity of their slices (the Cache keeps both when they are equal), and
// its path prefix.
type routePart struct {
	name    string
	first   *routev3.Route
	n       int
	domain0 *string
	domains int
	prefix  string
	// The claim's rank: a change of it can move a contested route without changing routes.
	configured bool
	created    int64
}

func routePartsOf(sorted []*ServiceResources) []routePart {
	out := make([]routePart, 0, len(sorted))
	for _, s := range sorted {
		if !claims(s) {
			continue
		}
		rp := routePart{name: s.Name, n: len(s.Routes), domains: len(s.Domains), prefix: s.PathPrefix,
			configured: s.Configured, created: s.Created}
		if len(s.Routes) > 0 {
			rp.first = s.Routes[0]
		}
		if len(s.Domains) > 0 {
			rp.domain0 = &s.Domains[0]
		}
		out = append(out, rp)
	}
	return out
}

func (m *listenerMemo) get(opts Options) (*listenerv3.Listener, error) {
	if m == nil {
		return listener(opts)
	}
	if m.listener == nil {
		m.listener, m.err = listener(opts)
	}
	return m.listener, m.err
}

func assemble(svcs []*ServiceResources, opts Options, memo *listenerMemo) *Resources {
	opts = opts.withDefaults()
	sorted := slices.Clone(svcs)
	sorted = slices.DeleteFunc(sorted, func(s *ServiceResources) bool { return s == nil })
	slices.SortFunc(sorted, func(a, b *ServiceResources) int { return strings.Compare(a.Name, b.Name) })

	res := &Resources{}
	for _, s := range sorted {
		res.Problems = append(res.Problems, s.Problems...)
		if s.Cluster == nil {
			continue // left out; its Problems say why
		}
		res.Clusters = append(res.Clusters, s.Cluster)
		res.Endpoints = append(res.Endpoints, s.Endpoints)
	}

	type claim struct{ domain, prefix string }
	owner := map[claim]*ServiceResources{}
	byDomain := map[string][]*ServiceResources{}
	for _, s := range claimOrder(sorted) {
		for _, d := range s.Domains {
			k := claim{d, s.PathPrefix}
			if prev, taken := owner[k]; taken {
				res.Problems = append(res.Problems, Problem{s.Name, "domain " + d + " path prefix " + s.PathPrefix +
					" is held by service " + prev.Name + " (" + whyWins(prev, s) + "); this service's route for it is left out"})
				continue
			}
			owner[k] = s
			byDomain[d] = append(byDomain[d], s)
		}
	}

	parts := routePartsOf(sorted)
	if memo != nil && memo.routes != nil && slices.Equal(parts, memo.routeParts) {
		res.Routes = []*routev3.RouteConfiguration{memo.routes}
	} else {
		res.Routes = []*routev3.RouteConfiguration{routeConfig(byDomain)}
		if memo != nil {
			memo.routeParts, memo.routes = parts, res.Routes[0]
		}
	}
	l, err := memo.get(opts)
	if err != nil {
		res.Problems = append(res.Problems, Problem{Message: err.Error()})
	}
	res.Listeners = []*listenerv3.Listener{l}
	return res
}

// claimOrder returns the translated services in the order they claim routes: configured
// first, then by create revision (0, unknown, last), then by name.
func claimOrder(sorted []*ServiceResources) []*ServiceResources {
	out := slices.DeleteFunc(slices.Clone(sorted), func(s *ServiceResources) bool { return !claims(s) })
	slices.SortStableFunc(out, func(a, b *ServiceResources) int {
		if a.Configured != b.Configured {
			if a.Configured {
				return -1
			}
			return 1
		}
		if a.Created != b.Created {
			switch {
			case a.Created == 0:
				return 1
			case b.Created == 0:
				return -1
			}
			return cmp.Compare(a.Created, b.Created)
		}
		return strings.Compare(a.Name, b.Name)
	})
	return out
}

// claims reports whether s claims routes: a translated service, or one left out that keeps
// its routes reserved.
func claims(s *ServiceResources) bool { return s.Cluster != nil || len(s.Routes) > 0 }

// whyWins says in words why winner holds a route loser claims too.
func whyWins(winner, loser *ServiceResources) string {
	switch {
	case winner.Configured && !loser.Configured:
		return "configured, and this service is not"
	case winner.Created != loser.Created:
		return fmt.Sprintf("older claim: revision %d before %d", winner.Created, loser.Created)
	}
	return "first by name"
}

// routeConfig builds the route configuration: a virtual host per domain, its services'
// routes ordered by path prefix length (longest first), then service name.
func routeConfig(byDomain map[string][]*ServiceResources) *routev3.RouteConfiguration {
	rc := &routev3.RouteConfiguration{
		Name:                     RouteConfigName,
		IgnorePortInHostMatching: true, // for every service alike: see hostDomains
		VirtualHosts:             make([]*routev3.VirtualHost, 0, len(byDomain)),
	}
	for _, d := range slices.Sorted(maps.Keys(byDomain)) {
		parts := byDomain[d]
		slices.SortStableFunc(parts, func(a, b *ServiceResources) int {
			if c := cmp.Compare(len(b.PathPrefix), len(a.PathPrefix)); c != 0 {
				return c
			}
			return strings.Compare(a.Name, b.Name)
		})
		vh := &routev3.VirtualHost{Name: d, Domains: []string{d}}
		for _, p := range parts {
			vh.Routes = append(vh.Routes, p.Routes...)
		}
		rc.VirtualHosts = append(rc.VirtualHosts, vh)
	}
	return rc
}

// adsSource is the config source "over the ADS stream, v3".
func adsSource() *corev3.ConfigSource {
	return &corev3.ConfigSource{
		ConfigSourceSpecifier: &corev3.ConfigSource_Ads{Ads: &corev3.AggregatedConfigSource{}},
		ResourceApiVersion:    corev3.ApiVersion_V3,
	}
}

func u32(v uint32) *wrapperspb.UInt32Value { return wrapperspb.UInt32(v) }
