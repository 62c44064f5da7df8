package controlplane_test

import (
	"testing"

	"github.com/tetherlb/tether/internal/xdsclient"
)

// TestNewGroupGetsItsConfigurationAtOnce: an Envoy of a gateway group no Envoy has used yet
// (node.cluster "edge") gets the whole configuration when it connects, with no registry
// change to push it: the group is given the current snapshot the moment it is first seen.
func TestNewGroupGetsItsConfigurationAtOnce(t *testing.T) {
	srv := twoInstances(t)
	cp := startCP(t, srv.Endpoints())
	def := connect(t, cp, xdsclient.Delta, "envoy-default", "")
	waitFor(t, def, "the default group's full configuration", complete(2))
	pushes := metric(t, cp, "tether_snapshots_total")
	for _, v := range []xdsclient.Variant{xdsclient.Delta, xdsclient.SotW} {
		c := connect(t, cp, v, "envoy-edge-"+string(v), "edge")
		waitFor(t, c, string(v)+" Envoy of group edge: the full configuration", complete(2))
	}
	if n := metric(t, cp, "tether_snapshots_total"); n != pushes {
		t.Errorf("%v pushes while the edge Envoys connected, want none (%v before): the configuration must come from the group's first snapshot", n-pushes, pushes)
	}
}
