package registry_test

import (
	"fmt"
	"strings"
	"testing"

	"github.com/tetherlb/tether/registry"
)

// TestServiceConfigRules gives each rejection rule of ServiceConfig.Validate a value it
// rejects, with the one error naming the field, and the nearest value it accepts.
func TestServiceConfigRules(t *testing.T) {
	statuses := make([]string, 101)
	for i := range statuses {
		statuses[i] = "200"
	}
	tests := []struct {
		name, raw string
		wantErr   string // the field named by the only error; empty: accepted
	}{
		// domains: host names, "*", wildcards, each with an optional port.
		{"domain with an underscore", `{"domains":["my_app.example.com"]}`, "domains:"},
		{"domain with a path", `{"domains":["example.com/app"]}`, "domains:"},
		{"domain starting with a dash", `{"domains":["-example.com"]}`, "domains:"},
		{"domain with a space", `{"domains":["example .com"]}`, "domains:"},
		{"domain with a bad port", `{"domains":["example.com:80a"]}`, "domains:"},
		{"domain over 253 characters", `{"domains":["` + strings.Repeat("a", 254) + `"]}`, "domains:"},
		{"too many domains", `{"domains":[` + domainList(registry.MaxDomains+1) + `]}`, "domains: need 1"},
		{"domains accepted", `{"domains":["*", "*.example.com", "example.com:8080", "a-b.example.com", ` + `"` + strings.Repeat("a", 253) + `"]}`, ""},
		{"as many domains as allowed", `{"domains":[` + domainList(registry.MaxDomains) + `]}`, ""},

		// pathPrefix: starts with '/', no spaces, '?' or '#'.
		{"pathPrefix without a slash", `{"pathPrefix":"app"}`, "pathPrefix:"},
		{"pathPrefix with a space", `{"pathPrefix":"/a b"}`, "pathPrefix:"},
		{"pathPrefix with a query", `{"pathPrefix":"/a?b"}`, "pathPrefix:"},
		{"pathPrefix with a fragment", `{"pathPrefix":"/a#b"}`, "pathPrefix:"},
		{"pathPrefix empty", `{"pathPrefix":""}`, "pathPrefix:"},
		{"pathPrefix accepted", `{"pathPrefix":"/app/v2"}`, ""},

		// affinity.headerName (header mode): 1-64 lowercase letters, digits or '-'.
		{"headerName with capitals", `{"affinity":{"mode":"header","headerName":"X-Session"}}`, "affinity.headerName:"},
		{"headerName with an underscore", `{"affinity":{"mode":"header","headerName":"x_session"}}`, "affinity.headerName:"},
		{"headerName over 64", `{"affinity":{"mode":"header","headerName":"` + strings.Repeat("a", 65) + `"}}`, "affinity.headerName:"},
		{"headerName accepted", `{"affinity":{"mode":"header","headerName":"` + strings.Repeat("a", 64) + `"}}`, ""},

		// affinity.cookiePath: starts with '/', no spaces, ';' or ','.
		{"cookiePath without a slash", `{"affinity":{"cookiePath":"app"}}`, "affinity.cookiePath:"},
		{"cookiePath with a semicolon", `{"affinity":{"cookiePath":"/a;Domain=evil.com"}}`, "affinity.cookiePath:"},
		{"cookiePath with a comma", `{"affinity":{"cookiePath":"/a,b"}}`, "affinity.cookiePath:"},
		{"cookiePath accepted", `{"affinity":{"cookiePath":"/app"}}`, ""},

		// affinity.cookieTTL: 0s only (Envoy's expiry is per process: envoy-rules row 9).
		{"cookieTTL negative", `{"affinity":{"cookieTTL":"-1s"}}`, "affinity.cookieTTL:"},
		{"cookieTTL a second", `{"affinity":{"cookieTTL":"1s"}}`, "affinity.cookieTTL:"},
		{"cookieTTL a year", `{"affinity":{"cookieTTL":"8760h"}}`, "affinity.cookieTTL:"},
		{"cookieTTL 0s", `{"affinity":{"cookieTTL":"0s"}}`, ""},

		// affinity.sameSite: auto, Lax, Strict, None (with secure) or empty.
		{"sameSite auto", `{"affinity":{"sameSite":"auto"}}`, ""},
		{"sameSite Auto", `{"affinity":{"sameSite":"Auto"}}`, "affinity.sameSite:"},
		{"sameSite lower case", `{"affinity":{"sameSite":"lax"}}`, "affinity.sameSite:"},
		{"sameSite unknown", `{"affinity":{"sameSite":"Loose"}}`, "affinity.sameSite:"},
		{"sameSite Strict", `{"affinity":{"sameSite":"Strict"}}`, ""},
		{"sameSite None with secure", `{"affinity":{"sameSite":"None","secure":true}}`, ""},

		// retryInitialOn503.perTryTimeout: 0s to 1h.
		{"perTryTimeout negative", `{"retryInitialOn503":{"perTryTimeout":"-1ms"}}`, "retryInitialOn503.perTryTimeout:"},
		{"perTryTimeout over an hour", `{"retryInitialOn503":{"perTryTimeout":"1h0m1s"}}`, "retryInitialOn503.perTryTimeout:"},
		{"perTryTimeout an hour", `{"retryInitialOn503":{"perTryTimeout":"1h"}}`, ""},
		{"attempts 10", `{"retryInitialOn503":{"attempts":10}}`, ""},
		{"attempts negative", `{"retryInitialOn503":{"attempts":-1}}`, "retryInitialOn503.attempts:"},

		// weights: load or equal.
		{"weights unknown", `{"weights":"random"}`, "weights:"},
		{"weights empty", `{"weights":""}`, "weights:"},
		{"weights equal", `{"weights":"equal"}`, ""},

		// healthCheck.path: empty (no active check) or starting with '/'.
		{"health path without a slash", `{"healthCheck":{"path":"healthcheck"}}`, "healthCheck.path:"},
		{"health path with a space", `{"healthCheck":{"path":"/health check"}}`, "healthCheck.path:"},
		{"no active check: its other fields are checked all the same", `{"healthCheck":{"path":"","interval":"1ms"}}`, "healthCheck.interval:"},
		{"health path accepted", `{"healthCheck":{"path":"/healthz"}}`, ""},

		// healthCheck.interval (with a path): 100ms to 1h.
		{"health interval under 100ms", `{"healthCheck":{"interval":"99ms"}}`, "healthCheck.interval:"},
		{"health interval over an hour", `{"healthCheck":{"interval":"1h0m1s"}}`, "healthCheck.interval:"},
		{"health interval bounds", `{"healthCheck":{"interval":"100ms"}}`, ""},
		{"health interval an hour", `{"healthCheck":{"interval":"1h"}}`, ""},

		// healthCheck.timeout (with a path): 10ms to 1h.
		{"health timeout under 10ms", `{"healthCheck":{"timeout":"9ms"}}`, "healthCheck.timeout:"},
		{"health timeout over an hour", `{"healthCheck":{"timeout":"1h0m1s"}}`, "healthCheck.timeout:"},
		{"health timeout 10ms", `{"healthCheck":{"timeout":"10ms"}}`, ""},

		// healthCheck.expectedStatuses (with a path): 1 to 100 codes, each 100-599.
		{"no expected statuses", `{"healthCheck":{"expectedStatuses":[]}}`, "healthCheck.expectedStatuses:"},
		{"101 expected statuses", `{"healthCheck":{"expectedStatuses":[` + strings.Join(statuses, ",") + `]}}`, "healthCheck.expectedStatuses:"},
		{"expected status 600", `{"healthCheck":{"expectedStatuses":[600]}}`, "healthCheck.expectedStatuses:"},
		{"expected statuses 100 and 599", `{"healthCheck":{"expectedStatuses":[100, 599]}}`, ""},

		// healthCheck.host: a host name or address, optionally with a port.
		{"health host with a path", `{"healthCheck":{"host":"example.com/x"}}`, "healthCheck.host:"},
		{"health host with a port", `{"healthCheck":{"host":"app.example.com:8080"}}`, ""},

		// overload.status: 200-599.
		{"overload status 199", `{"overload":{"status":199}}`, "overload.status:"},
		{"overload status 600", `{"overload":{"status":600}}`, "overload.status:"},
		{"overload status 200", `{"overload":{"status":200}}`, ""},
		{"overload status 599", `{"overload":{"status":599}}`, ""},

		// overload.retryAfterSeconds: 0-86400.
		{"retryAfterSeconds negative", `{"overload":{"retryAfterSeconds":-1}}`, "overload.retryAfterSeconds:"},
		{"retryAfterSeconds over a day", `{"overload":{"retryAfterSeconds":86401}}`, "overload.retryAfterSeconds:"},
		{"retryAfterSeconds a day", `{"overload":{"retryAfterSeconds":86400}}`, ""},
		{"retryAfterSeconds 0", `{"overload":{"retryAfterSeconds":0}}`, ""},

		// timeouts: request 0s (no limit) to 24h, idle 1s to 24h.
		{"request timeout negative", `{"timeouts":{"request":"-1s"}}`, "timeouts.request:"},
		{"request timeout over a day", `{"timeouts":{"request":"24h0m1s"}}`, "timeouts.request:"},
		{"request timeout a day", `{"timeouts":{"request":"24h"}}`, ""},
		{"idle timeout under a second", `{"timeouts":{"idle":"999ms"}}`, "timeouts.idle:"},
		{"idle timeout a second", `{"timeouts":{"idle":"1s"}}`, ""},

		// overload.returnUrl and slowStart, beside the rows of TestDecodeServiceConfig.
		{"returnUrl not http", `{"overload":{"returnUrl":"javascript:alert(1)"}}`, "overload.returnUrl:"},
		{"returnUrl accepted", `{"overload":{"returnUrl":"https://example.com/busy"}}`, ""},

		// Every bound accepts its own value.
		{"pathPrefix of 253 characters", `{"pathPrefix":"/` + strings.Repeat("a", 252) + `"}`, ""},
		{"cookiePath of 253 characters", `{"affinity":{"cookiePath":"/` + strings.Repeat("a", 252) + `"}}`, ""},
		{"no retry, no per-try timeout", `{"retryInitialOn503":{"attempts":0,"perTryTimeout":"0s"}}`, ""},
		{"healthCheck.path of 253 characters", `{"healthCheck":{"path":"/` + strings.Repeat("a", 252) + `"}}`, ""},
		{"healthCheck.timeout of 1h", `{"healthCheck":{"timeout":"1h","interval":"1h"}}`, ""},
		{"100 expected statuses", `{"healthCheck":{"expectedStatuses":[` + strings.Join(statuses[:100], ",") + `]}}`, ""},
		{"healthCheck.host of 253 characters", `{"healthCheck":{"host":"` + strings.Repeat("a", 253) + `"}}`, ""},
		{"returnUrl of 2048 characters", `{"overload":{"returnUrl":"https://example.com/` + strings.Repeat("a", 2048-len("https://example.com/")) + `"}}`, ""},
		{"returnUrl over http", `{"overload":{"returnUrl":"http://example.com/busy"}}`, ""},
		{"timeouts.idle of 24h", `{"timeouts":{"idle":"24h"}}`, ""},
		{"slowStart over an hour", `{"slowStart":"1h0m1s"}`, "slowStart:"},
		{"slowStart an hour", `{"slowStart":"1h"}`, ""},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			_, err := registry.DecodeServiceConfig("app", []byte(tc.raw))
			if tc.wantErr == "" {
				if err != nil {
					t.Fatalf("%s rejected: %v", tc.raw, err)
				}
				return
			}
			if err == nil {
				t.Fatalf("%.200s accepted; want an error naming %s", tc.raw, tc.wantErr)
			}
			if msg := err.Error(); !strings.HasPrefix(msg, tc.wantErr) || strings.Contains(msg, "\n") {
				t.Fatalf("error %q; want exactly one, naming %s", msg, tc.wantErr)
			}
		})
	}
}

// domainList returns n distinct domains as JSON strings separated by commas.
func domainList(n int) string {
	d := make([]string, n)
	for i := range d {
		d[i] = fmt.Sprintf(`"d%d.example.com"`, i)
	}
	return strings.Join(d, ",")
}
