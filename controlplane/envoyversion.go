package controlplane

import (
	"cmp"
	"fmt"

	core "github.com/envoyproxy/go-control-plane/envoy/config/core/v3"
)

// MinEnvoyVersion is the oldest Envoy that does everything the configuration Tether generates
// relies on (docs/envoy-rules.md row 35). An older Envoy accepts the configuration and
// silently loses what envoyFeatures lists, so each one is reported: a log line when it
// connects, tether_envoys_below_min_version, /api/state and the monitor.
const MinEnvoyVersion = "1.36.0"

var minEnvoy = semver{1, 36, 0}

type semver struct{ major, minor, patch uint32 }

func (v semver) less(o semver) bool {
	return cmp.Or(cmp.Compare(v.major, o.major), cmp.Compare(v.minor, o.minor), cmp.Compare(v.patch, o.patch)) < 0
}

// envoyFeatures are what Tether's configuration needs of Envoy, each with the first release
// that has it (read in Envoy's changelogs and source, envoy-rules row 35).
var envoyFeatures = []struct {
	since semver
	what  string
}{
	// changelogs/1.35.0.yaml "Added support for cookie attributes to stateful session
	// cookie"; older Envoys ignore the unknown field with a warning.
	{semver{1, 35, 0}, "the session cookie's SameSite and Secure attributes are dropped (cross-site sign-ins lose their server)"},
	// UpstreamCodecFilter::CodecBridge::decodeHeaders: before 1.36 a non-101 handshake
	// reply ended as a local reply in the upstream filter chain, out of the router's retry.
	{semver{1, 36, 0}, "a WebSocket handshake a full server refuses with 503 is not retried on another server"},
}

// envoyVersionOf reads the Envoy release a node reports (user_agent_build_version, which
// every Envoy sends); ok is false for a client that sends none.
func envoyVersionOf(n *core.Node) (v semver, ok bool) {
	sv := n.GetUserAgentBuildVersion().GetVersion()
	if sv == nil {
		return semver{}, false
	}
	return semver{sv.GetMajorNumber(), sv.GetMinorNumber(), sv.GetPatch()}, true
}

func (v semver) String() string { return fmt.Sprintf("%d.%d.%d", v.major, v.minor, v.patch) }

// missingFeatures lists what an Envoy of version v loses of Tether's configuration.
func missingFeatures(v semver) []string {
	var out []string
	for _, f := range envoyFeatures {
		if v.less(f.since) {
			out = append(out, f.what+" (needs "+f.since.String()+")")
		}
	}
	return out
}
