package translate

import (
	"github.com/tetherlb/tether/internal/mutation"
	"math"
	"slices"
	"strings"
	"time"

	clusterv3 "github.com/envoyproxy/go-control-plane/envoy/config/cluster/v3"
	corev3 "github.com/envoyproxy/go-control-plane/envoy/config/core/v3"
	endpointv3 "github.com/envoyproxy/go-control-plane/envoy/config/endpoint/v3"
	typev3 "github.com/envoyproxy/go-control-plane/envoy/type/v3"
	"google.golang.org/protobuf/types/known/durationpb"
	"google.golang.org/protobuf/types/known/structpb"

	"github.com/tetherlb/tether/registry"
)

const (
	connectTimeout = 5 * time.Second
	// Active health checks (when configured) are for liveness: a dead server is out after 3
	// failed checks, back after 2 good ones (Envoy takes a new host in after its first good
	// check).
	unhealthyThreshold = 3
	healthyThreshold   = 2
	// healthCheckHostFallback is the Host header of the active check when every domain of
	// the service is a wildcard. Without one Envoy sends the cluster name (tether_<service>,
	// HealthCheckerFactory::getHostname), which IIS host bindings and ASP.NET's
	// AllowedHosts reject.
	healthCheckHostFallback = "localhost"
	// Retry budget: at most 20% of active requests may be retries (at least 3 at once).
	retryBudgetPercent  = 20
	minRetryConcurrency = 3
	// clusterLimit replaces Envoy's default of 1024 connections and requests per cluster,
	// which would cap a service at 1024 concurrent WebSockets.
	clusterLimit = 100000
	// Endpoint weights: 10 steps from minWeight to maxWeight.
	minWeight   = 10
	maxWeight   = 100
	weightSteps = 10
	// metadataNamespace holds Tether's notes in cluster and endpoint metadata.
	metadataNamespace = "tether"
)

// cluster builds the service's EDS cluster.
//
// It has no outlier detection. Envoy counts per-try timeouts (LocalOriginTimeout) in the same
// consecutive local-origin counter as connect failures
// (DetectorHostMonitorImpl::putResultWithLocalExternalSplit), so a few slow first requests
// would eject a live server, and an ejected host is UNHEALTHY (HostImplBase::healthStatus),
// which override_host_status refuses: its pinned sessions would move. A dead server is taken
// out by its agent (unhealthy, or its lease expiring), and initial requests meanwhile retry
// connect failures on another host.
func cluster(svc string, cfg registry.ServiceConfig) *clusterv3.Cluster {
	var notes []string
	c := &clusterv3.Cluster{
		Name:                 ClusterName(svc),
		ClusterDiscoveryType: &clusterv3.Cluster_Type{Type: clusterv3.Cluster_EDS},
		EdsClusterConfig:     &clusterv3.Cluster_EdsClusterConfig{EdsConfig: adsSource()},
		ConnectTimeout:       durationpb.New(connectTimeout),
		CommonLbConfig: &clusterv3.Cluster_CommonLbConfig{
			// No panic routing: full and draining servers never get new sessions.
			HealthyPanicThreshold: &typev3.Percent{Value: 0},
			// A request pinned by the stateful session filter reaches its server while
			// it is HEALTHY, DEGRADED or DRAINING (full or shutting down). Tether always
			// sends an explicit EDS status and Envoy reports a host failing active health
			// checks or ejected as UNHEALTHY, so UNKNOWN is not needed.
			OverrideHostStatus: &corev3.HealthStatusSet{Statuses: []corev3.HealthStatus{
				corev3.HealthStatus_HEALTHY, corev3.HealthStatus_DEGRADED, corev3.HealthStatus_DRAINING,
			}},
		},
		// A host removed from EDS (agent deregistered or lease expired) goes at once,
		// even while it still passes active health checks.
		IgnoreHealthOnHostRemoval: true,
		CircuitBreakers:           circuitBreakers(cfg.Limits),
	}

	policy := effectivePolicy(cfg)
	if policy != cfg.LBPolicy {
		notes = append(notes, "lbPolicy "+string(cfg.LBPolicy)+" replaced by ring_hash: affinity "+string(cfg.Affinity.Mode)+" needs a hash load balancer")
	}
	c.LbPolicy = lbPolicy(policy)
	if ss := cfg.SlowStart.D(); ss > 0 {
		ssc := &clusterv3.Cluster_SlowStartConfig{SlowStartWindow: durationpb.New(ss)}
		switch policy {
		case registry.LBLeastRequest:
			c.LbConfig = &clusterv3.Cluster_LeastRequestLbConfig_{LeastRequestLbConfig: &clusterv3.Cluster_LeastRequestLbConfig{SlowStartConfig: ssc}}
		case registry.LBRoundRobin:
			c.LbConfig = &clusterv3.Cluster_RoundRobinLbConfig_{RoundRobinLbConfig: &clusterv3.Cluster_RoundRobinLbConfig{SlowStartConfig: ssc}}
		default:
			notes = append(notes, "slowStart ignored: Envoy supports it only with least_request and round_robin")
		}
	}
	if hc := cfg.HealthCheck; hc.Path != "" {
		c.HealthChecks = []*corev3.HealthCheck{{
			Timeout:  durationpb.New(hc.Timeout.D()),
			Interval: durationpb.New(hc.Interval.D()),
			// Check idle clusters as often as busy ones (Envoy's default is 60 s), so
			// that a new instance of an idle service is taken in quickly.
			NoTrafficInterval:  durationpb.New(hc.Interval.D()),
			UnhealthyThreshold: u32(unhealthyThreshold),
			HealthyThreshold:   u32(healthyThreshold),
			HealthChecker: &corev3.HealthCheck_HttpHealthCheck_{HttpHealthCheck: &corev3.HealthCheck_HttpHealthCheck{
				Host:             healthCheckHost(cfg),
				Path:             hc.Path,
				ExpectedStatuses: statusRanges(hc.ExpectedStatuses),
			}},
		}}
	}
	if len(notes) > 0 {
		list := &structpb.ListValue{}
		for _, n := range notes {
			list.Values = append(list.Values, structpb.NewStringValue(n))
		}
		c.Metadata = &corev3.Metadata{FilterMetadata: map[string]*structpb.Struct{
			metadataNamespace: {Fields: map[string]*structpb.Value{"notes": structpb.NewListValue(list)}},
		}}
	}
	return c
}

// effectivePolicy is the service's load-balancing policy: source-ip needs a hash load
// balancer and gets ring_hash unless maglev was chosen.
func effectivePolicy(cfg registry.ServiceConfig) registry.LBPolicy {
	if cfg.Affinity.Mode == registry.AffinitySourceIP && !hashPolicyName(cfg.LBPolicy) {
		return registry.LBRingHash
	}
	return cfg.LBPolicy
}

func hashPolicyName(p registry.LBPolicy) bool {
	return p == registry.LBRingHash || p == registry.LBMaglev
}

// healthCheckHost is the Host header of the active check: healthCheck.host, else the
// service's first domain (in configuration order) without a wildcard, else "localhost".
func healthCheckHost(cfg registry.ServiceConfig) string {
	if cfg.HealthCheck.Host != "" {
		return cfg.HealthCheck.Host
	}
	for _, d := range cfg.Domains {
		if !strings.Contains(d, "*") {
			return strings.ToLower(d)
		}
	}
	return healthCheckHostFallback
}

func lbPolicy(p registry.LBPolicy) clusterv3.Cluster_LbPolicy {
	switch p {
	case registry.LBLeastRequest:
		return clusterv3.Cluster_LEAST_REQUEST
	case registry.LBRoundRobin:
		return clusterv3.Cluster_ROUND_ROBIN
	case registry.LBRandom:
		return clusterv3.Cluster_RANDOM
	case registry.LBRingHash:
		return clusterv3.Cluster_RING_HASH
	case registry.LBMaglev:
		return clusterv3.Cluster_MAGLEV
	}
	return clusterv3.Cluster_LEAST_REQUEST // the registry's default; its validator refuses others
}

// statusRanges turns status codes into Envoy's half-open ranges, merging neighbours:
// [200, 202] gives [200,201) and [202,203); [200, 201, 202] gives [200,203).
func statusRanges(codes []int) []*typev3.Int64Range {
	sorted := slices.Clone(codes)
	slices.Sort(sorted)
	sorted = slices.Compact(sorted)
	var out []*typev3.Int64Range
	for _, c := range sorted {
		if n := len(out); n > 0 && out[n-1].End == int64(c) {
			out[n-1].End++
			continue
		}
		out = append(out, &typev3.Int64Range{Start: int64(c), End: int64(c) + 1})
	}
	return out
}

// circuitBreakers: limits.maxConnections per host (the only per-host threshold Envoy
// supports), maxRequests and maxPendingRequests for the cluster (each 100000 when 0, in place
// of Envoy's 1024), and a retry budget in place of Envoy's default of 3 concurrent retries.
func circuitBreakers(l registry.Limits) *clusterv3.CircuitBreakers {
	th := &clusterv3.CircuitBreakers_Thresholds{
		Priority:           corev3.RoutingPriority_DEFAULT,
		MaxConnections:     u32(clusterLimit),
		MaxRequests:        u32(clusterLimit),
		MaxPendingRequests: u32(clusterLimit),
		RetryBudget: &clusterv3.CircuitBreakers_Thresholds_RetryBudget{
			BudgetPercent:       &typev3.Percent{Value: retryBudgetPercent},
			MinRetryConcurrency: u32(minRetryConcurrency),
		},
	}
	if l.MaxRequests > 0 {
		th.MaxRequests = u32(l.MaxRequests)
	}
	if l.MaxPendingRequests > 0 {
		th.MaxPendingRequests = u32(l.MaxPendingRequests)
	}
	cb := &clusterv3.CircuitBreakers{Thresholds: []*clusterv3.CircuitBreakers_Thresholds{th}}
	if l.MaxConnections > 0 {
		cb.PerHostThresholds = []*clusterv3.CircuitBreakers_Thresholds{{
			Priority:       corev3.RoutingPriority_DEFAULT,
			MaxConnections: u32(l.MaxConnections),
		}}
	}
	return cb
}

// endpoints builds the service's ClusterLoadAssignment: one locality per zone (sorted),
// endpoints sorted by instance ID (insts is sorted), health from state, weight from load.
func endpoints(svc string, cfg registry.ServiceConfig, insts []registry.Instance) *endpointv3.ClusterLoadAssignment {
	cla := &endpointv3.ClusterLoadAssignment{ClusterName: ClusterName(svc)}
	byZone := map[string]*endpointv3.LocalityLbEndpoints{}
	for _, in := range insts {
		loc := byZone[in.Zone]
		if loc == nil {
			loc = &endpointv3.LocalityLbEndpoints{Locality: &corev3.Locality{Zone: in.Zone}}
			byZone[in.Zone] = loc
			cla.Endpoints = append(cla.Endpoints, loc)
		}
		loc.LbEndpoints = append(loc.LbEndpoints, &endpointv3.LbEndpoint{
			HostIdentifier: &endpointv3.LbEndpoint_Endpoint{Endpoint: &endpointv3.Endpoint{
				Address: &corev3.Address{Address: &corev3.Address_SocketAddress{SocketAddress: &corev3.SocketAddress{
					Address:       in.Address,
					PortSpecifier: &corev3.SocketAddress_PortValue{PortValue: uint32(in.Port)},
				}}},
				Hostname: in.ID,
			}},
			HealthStatus:        healthStatus(in, cfg),
			LoadBalancingWeight: u32(weight(in, cfg)),
			Metadata: &corev3.Metadata{FilterMetadata: map[string]*structpb.Struct{metadataNamespace: {Fields: map[string]*structpb.Value{
				"id":    structpb.NewStringValue(in.ID),
				"state": structpb.NewStringValue(string(in.State)),
			}}}},
		})
	}
	slices.SortFunc(cla.Endpoints, func(a, b *endpointv3.LocalityLbEndpoints) int {
		return strings.Compare(a.Locality.Zone, b.Locality.Zone)
	})
	return cla
}

// healthStatus is the instance's EDS health. Full and draining instances are DRAINING: they
// keep their sessions through override_host_status and take no new ones. In source-ip mode a
// full instance is HEALTHY instead: Envoy builds the hash ring from healthy hosts only
// (ThreadAwareLoadBalancerBase::refresh, normalizeWeights), so DRAINING would take it out of
// the ring and move every one of its users at once; the source address is the session there,
// and the ring is what keeps it. An instance in its first phase is DRAINING whatever its state.
func healthStatus(in registry.Instance, cfg registry.ServiceConfig) corev3.HealthStatus {
	if mutation.On(mutation.FullUnhealthy) && in.State != registry.StateAvailable {
		return corev3.HealthStatus_UNHEALTHY
	}
	switch in.State {
	case registry.StateAvailable, registry.StateFull:
		if in.FirstPhase || (in.State == registry.StateFull && !ringIsTheSession(cfg)) {
			return corev3.HealthStatus_DRAINING
		}
		return corev3.HealthStatus_HEALTHY
	case registry.StateDraining:
		return corev3.HealthStatus_DRAINING
	case registry.StateUnhealthy:
	}
	return corev3.HealthStatus_UNHEALTHY
}

// ringIsTheSession reports whether the service's sessions are kept by the hash ring alone
// (source-ip), not by a session cookie or header.
func ringIsTheSession(cfg registry.ServiceConfig) bool {
	return cfg.Affinity.Mode == registry.AffinitySourceIP
}

// weight is the endpoint's load_balancing_weight. Hash load balancers always get equal
// weights: ring_hash and maglev build their table from the host weights
// (ThreadAwareLoadBalancerBase, normalizeHostWeights), so every weight step would remap part
// of the ring and move users between servers; in source-ip mode a full server, which stays in
// the ring, keeps its weight too. With weights "load" the weight follows the instance's
// headroom: the tightest of 1-load/threshold over its configured thresholds (0 = unlimited,
// skipped), clamped to [0,1], quantized into 10 steps from 10 to 100 so that small load noise
// causes no push. No thresholds, weights "equal", or an instance that is not available (its
// weight is not used for new sessions) give a fixed weight.
func weight(in registry.Instance, cfg registry.ServiceConfig) uint32 {
	if ringIsTheSession(cfg) {
		return maxWeight
	}
	if in.State != registry.StateAvailable {
		return minWeight
	}
	if cfg.Weights == registry.WeightsEqual || hashPolicyName(effectivePolicy(cfg)) {
		return maxWeight
	}
	h := headroom(in)
	step := min(int(h*weightSteps), weightSteps-1)
	return uint32(minWeight + step*(maxWeight-minWeight)/(weightSteps-1))
}

// headroom is the instance's spare capacity in [0,1] against its own thresholds.
func headroom(in registry.Instance) float64 {
	h := 1.0
	check := func(load, limit float64) {
		if limit > 0 {
			h = min(h, 1-load/limit)
		}
	}
	t, l := in.Thresholds, in.Load
	check(float64(l.Sessions), float64(t.MaxSessions))
	check(l.CPU, t.MaxCPU)
	check(l.Memory, t.MaxMemory)
	check(l.MemoryMB, t.MaxMemoryMB)
	if math.IsNaN(h) || h < 0 {
		return 0
	}
	return h
}
