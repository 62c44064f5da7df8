package controlplane_test

import (
	"strings"
	"testing"

	core "github.com/envoyproxy/go-control-plane/envoy/config/core/v3"
	typev3 "github.com/envoyproxy/go-control-plane/envoy/type/v3"
	resourcev3 "github.com/envoyproxy/go-control-plane/pkg/resource/v3"

	"github.com/tetherlb/tether/controlplane"
	"github.com/tetherlb/tether/controlplane/admin"
	"github.com/tetherlb/tether/internal/xdsclient"
)

// TestOldEnvoyIsReported connects Envoys that say their build version in their node
// (user_agent_build_version) as Envoy does: one below the floor (1.35.2: it drops nothing of
// the cookie but cannot retry a refused WebSocket handshake), one at it, one far below
// (1.34.1: it also drops the cookie's SameSite and Secure). /api/state and the metric report
// exactly the two old ones, with what they lose.
func TestOldEnvoyIsReported(t *testing.T) {
	srv := twoInstances(t)
	cp := startCP(t, srv.Endpoints())
	for _, e := range []struct {
		node    string
		version [3]uint32
	}{{"old", [3]uint32{1, 35, 2}}, {"new", [3]uint32{1, 36, 0}}, {"older", [3]uint32{1, 34, 1}}} {
		c := xdsclient.New(xdsclient.Delta, e.node, "default")
		c.Node.UserAgentName = "envoy"
		c.Node.UserAgentVersionType = &core.Node_UserAgentBuildVersion{UserAgentBuildVersion: &core.BuildVersion{
			Version: &typev3.SemanticVersion{MajorNumber: e.version[0], MinorNumber: e.version[1], Patch: e.version[2]}}}
		run(t, cp, c)
		waitFor(t, c, "a cluster", func(v xdsclient.View) bool { return len(v.Resources[resourcev3.ClusterType]) > 0 })
	}
	ms := waitState(t, cp, "three Envoys", func(ms admin.MonitorState) bool {
		n := 0
		for _, g := range ms.Groups {
			for _, e := range g.Envoys {
				if e.EnvoyVersion != "" {
					n++
				}
			}
		}
		return n == 3
	})
	if ms.MinEnvoyVersion != controlplane.MinEnvoyVersion {
		t.Errorf("minEnvoyVersion %q, want %q", ms.MinEnvoyVersion, controlplane.MinEnvoyVersion)
	}
	for _, g := range ms.Groups {
		for _, e := range g.Envoys {
			lost := strings.Join(e.Missing, "; ")
			switch e.NodeID {
			case "new":
				if e.EnvoyVersion != "1.36.0" || e.BelowMinVersion || lost != "" {
					t.Errorf("1.36.0 reported as %+v", e.ClientInfo)
				}
			case "old":
				if e.EnvoyVersion != "1.35.2" || !e.BelowMinVersion || !strings.Contains(lost, "WebSocket") || strings.Contains(lost, "SameSite") {
					t.Errorf("1.35.2 reported as %+v", e.ClientInfo)
				}
			case "older":
				if !e.BelowMinVersion || !strings.Contains(lost, "WebSocket") || !strings.Contains(lost, "SameSite") {
					t.Errorf("1.34.1 reported as %+v", e.ClientInfo)
				}
			}
		}
	}
	if got := metric(t, cp, "tether_envoys_below_min_version"); got != 2 {
		t.Errorf("tether_envoys_below_min_version = %v, want 2", got)
	}
}
