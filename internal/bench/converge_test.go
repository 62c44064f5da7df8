package bench

import (
	"testing"

	corev3 "github.com/envoyproxy/go-control-plane/envoy/config/core/v3"
	endpointv3 "github.com/envoyproxy/go-control-plane/envoy/config/endpoint/v3"
	resourcev3 "github.com/envoyproxy/go-control-plane/pkg/resource/v3"
	"google.golang.org/protobuf/proto"
	"google.golang.org/protobuf/types/known/anypb"
	"google.golang.org/protobuf/types/known/wrapperspb"

	"github.com/tetherlb/tether/internal/xdsclient"
)

func cla(name string, weights ...uint32) *endpointv3.ClusterLoadAssignment {
	c := &endpointv3.ClusterLoadAssignment{ClusterName: name, Endpoints: []*endpointv3.LocalityLbEndpoints{{}}}
	for i, w := range weights {
		c.Endpoints[0].LbEndpoints = append(c.Endpoints[0].LbEndpoints, &endpointv3.LbEndpoint{
			HostIdentifier: &endpointv3.LbEndpoint_Endpoint{Endpoint: &endpointv3.Endpoint{Address: &corev3.Address{
				Address: &corev3.Address_SocketAddress{SocketAddress: &corev3.SocketAddress{
					Address: "10.0.0.1", PortSpecifier: &corev3.SocketAddress_PortValue{PortValue: uint32(8080 + i)}}}}}},
			HealthStatus:        corev3.HealthStatus_HEALTHY,
			LoadBalancingWeight: wrapperspb.UInt32(w),
		})
	}
	return c
}

func update(t *testing.T, msgs ...*endpointv3.ClusterLoadAssignment) xdsclient.Update {
	t.Helper()
	u := xdsclient.Update{TypeURL: resourcev3.EndpointType, Resources: map[string]proto.Message{}}
	for _, m := range msgs {
		a, err := anypb.New(m)
		if err != nil {
			t.Fatal(err)
		}
		u.Resources[m.ClusterName] = a
	}
	return u
}

// The final check counts an Envoy whose last assignment of any service differs from the
// registry's, one that never received a service, and one whose service was removed; an
// Envoy holding every service as the registry calls for is not counted.
func TestHoldingsCountsEnvoysThatDiffer(t *testing.T) {
	h := newHoldings([]string{"a", "b"}, 4)
	want := []claSigs{sigsOf(cla("a", 10, 20)), sigsOf(cla("b", 5))}
	h.record(0, update(t, cla("a", 10, 20), cla("b", 5))) // holds the registry
	h.record(1, update(t, cla("a", 10, 20), cla("b", 6))) // b's weight is stale
	h.record(2, update(t, cla("a", 10, 20)))              // never received b
	h.record(3, update(t, cla("a", 10, 20), cla("b", 5))) // b removed after
	h.record(3, xdsclient.Update{TypeURL: resourcev3.EndpointType, Removed: []string{"b"}})
	variantOf := func(e int) int { return e % 2 }
	if got := h.differing(want, variantOf, 2); got[0] != 1 || got[1] != 2 {
		t.Fatalf("differing per variant: %v; want [1 2] (Envoys 2 | 1 and 3)", got)
	}
	// Envoy 1 then receives b as the registry has it; 2 and 3 receive it too.
	for e := 1; e < 4; e++ {
		h.record(e, update(t, cla("b", 5)))
	}
	if got := h.differing(want, variantOf, 2); got[0] != 0 || got[1] != 0 {
		t.Fatalf("differing once every Envoy holds the registry: %v; want none", got)
	}
}
