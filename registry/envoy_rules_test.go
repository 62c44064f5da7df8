package registry_test

import (
	"strings"
	"testing"
	"time"

	"github.com/tetherlb/tether/registry"
)

// The registry side of the Envoy rules of docs/envoy-rules.md: values that a real Envoy
// would misuse are rejected with a message that says what to do instead.
func TestDecodeEnvoyRules(t *testing.T) {
	for _, tc := range []struct {
		name, raw, wantErr string
	}{
		// Envoy hashes the app's cookie only from the second request on
		// (ThreadAwareLoadBalancerBase::LoadBalancerImpl::chooseHost picks at random
		// without a hash), so the mode could not hold a session from the first request.
		{"app-cookie points to cookie mode", `{"affinity":{"mode":"app-cookie","cookieName":"ASP.NET_SessionId"}}`, `use "cookie"`},
		// RE2 program size 37 + name length must stay within 100 (regex.cc).
		{"cookie name over 63", `{"affinity":{"cookieName":"` + strings.Repeat("c", 64) + `"}}`, "1 to 63 characters"},
		{"health host with a path", `{"healthCheck":{"path":"/live","host":"a.com/x"}}`, "healthCheck.host"},
		{"health host with spaces", `{"healthCheck":{"host":"a b"}}`, "healthCheck.host"},
		{"negative request timeout", `{"timeouts":{"request":"-1s"}}`, "timeouts.request"},
		{"idle timeout zero", `{"timeouts":{"idle":"0s"}}`, "timeouts.idle"},
		{"bad expected status with the check off", `{"healthCheck":{"expectedStatuses":[600]}}`, "expectedStatuses"},
		// Envoy writes the cookie's expiry from its own monotonic clock
		// (CookieBasedSessionStateFactory::SessionStateImpl::onUpdate, cookie.cc) and compares it
		// with its own (parseAddress): another Envoy reads it as expired, and moves the user, or
		// as valid far too long (envoyproxy/envoy#44111).
		{"cookieTTL a second", `{"affinity":{"cookieTTL":"1s"}}`, "monotonic clock"},
		{"cookieTTL an hour", `{"affinity":{"cookieTTL":"1h"}}`, "envoyproxy/envoy#44111"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			_, err := registry.DecodeServiceConfig("app", []byte(tc.raw))
			if err == nil || !strings.Contains(err.Error(), tc.wantErr) {
				t.Errorf("error %v, want one containing %q", err, tc.wantErr)
			}
		})
	}
	cfg, err := registry.DecodeServiceConfig("app", []byte(`{"healthCheck":{"path":"/live","host":"app.internal:8080"},"timeouts":{"request":"2m","idle":"30s"}}`))
	if err != nil || cfg.HealthCheck.Host != "app.internal:8080" || cfg.Timeouts.Request.D() != 2*time.Minute || cfg.Timeouts.Idle.D() != 30*time.Second {
		t.Errorf("valid health host and timeouts: %+v, %v", cfg, err)
	}
}

// The defaults a real Envoy needs: no active check (the agent is the health authority), the
// statuses 200-202 the README promises, no route timeout, a 5 minute idle timeout, and a
// default cookie name of at most 63 characters for every allowed service name.
func TestDefaultsForEnvoy(t *testing.T) {
	d := registry.DefaultServiceConfig("app")
	if d.HealthCheck.Path != "" || len(d.HealthCheck.ExpectedStatuses) != 3 || d.HealthCheck.ExpectedStatuses[1] != 201 {
		t.Errorf("health check defaults %+v", d.HealthCheck)
	}
	if d.Timeouts.Request != 0 || d.Timeouts.Idle.D() != 5*time.Minute {
		t.Errorf("timeouts defaults %+v", d.Timeouts)
	}
	if got := registry.DefaultCookieName("app"); got != "tether-app" {
		t.Errorf("default cookie of app %q, want tether-app", got)
	}
	long := strings.Repeat("a", 63)
	got := registry.DefaultCookieName(long)
	if len(got) != registry.MaxCookieName || !strings.HasPrefix(got, "tether-aaaa") || got != registry.DefaultCookieName(long) {
		t.Errorf("default cookie of a 63-character service: %q (%d characters), want a stable 63-character name", got, len(got))
	}
	if registry.DefaultCookieName(strings.Repeat("a", 56)) != "tether-"+strings.Repeat("a", 56) {
		t.Error("a 56-character service's cookie (63 characters) was shortened")
	}
}
