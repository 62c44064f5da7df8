package controlplane

import (
	"strings"
	"testing"

	core "github.com/envoyproxy/go-control-plane/envoy/config/core/v3"
	typev3 "github.com/envoyproxy/go-control-plane/envoy/type/v3"
)

// Versions compare by major, then minor, then patch, each at its edges; a feature is missing
// strictly below the release that brought it.
func TestEnvoyVersionsCompareExactly(t *testing.T) {
	for _, c := range []struct {
		a, b semver
		less bool
	}{
		{semver{1, 36, 0}, semver{1, 36, 0}, false},
		{semver{1, 35, 9}, semver{1, 36, 0}, true},
		{semver{1, 36, 0}, semver{1, 35, 9}, false},
		{semver{1, 36, 1}, semver{1, 36, 2}, true},
		{semver{1, 36, 2}, semver{1, 36, 1}, false},
		{semver{0, 99, 99}, semver{1, 0, 0}, true},
		{semver{2, 0, 0}, semver{1, 99, 99}, false},
	} {
		if got := c.a.less(c.b); got != c.less {
			t.Errorf("%v < %v: %v, want %v", c.a, c.b, got, c.less)
		}
	}
	for _, c := range []struct {
		v    semver
		want []string
	}{
		{semver{1, 34, 99}, []string{"SameSite", "WebSocket"}},
		{semver{1, 35, 0}, []string{"WebSocket"}},
		{semver{1, 35, 99}, []string{"WebSocket"}},
		{semver{1, 36, 0}, nil},
	} {
		got := missingFeatures(c.v)
		if len(got) != len(c.want) {
			t.Errorf("%v misses %q, want %d features", c.v, got, len(c.want))
			continue
		}
		for i, w := range c.want {
			if !strings.Contains(got[i], w) {
				t.Errorf("%v misses %q, want one naming %s", c.v, got, w)
			}
		}
	}
	if v, ok := envoyVersionOf(&core.Node{}); ok || v != (semver{}) {
		t.Errorf("a node without a build version read as %v, %v", v, ok)
	}
	n := &core.Node{UserAgentVersionType: &core.Node_UserAgentBuildVersion{UserAgentBuildVersion: &core.BuildVersion{
		Version: &typev3.SemanticVersion{MajorNumber: 1, MinorNumber: 35, Patch: 2}}}}
	if v, ok := envoyVersionOf(n); !ok || v.String() != "1.35.2" {
		t.Errorf("1.35.2 read as %v, %v", v, ok)
	}
}
