package registry_test

import (
	"encoding/json"
	"fmt"
	"reflect"
	"strings"
	"testing"
	"time"

	"github.com/tetherlb/tether/registry"
)

// The examples of docs/design.md, verbatim.
const (
	exampleService = `{
  "domains": ["*"],
  "pathPrefix": "/",
  "affinity": {"mode": "cookie", "cookieName": "tether-app", "cookiePath": "/", "cookieTTL": "0s", "strict": false},
  "websocket": true,
  "retryInitialOn503": {"enabled": true, "attempts": 2, "perTryTimeout": "15s"},
  "lbPolicy": "least_request",
  "weights": "load",
  "healthCheck": {"path": "", "host": "", "interval": "5s", "timeout": "2s", "expectedStatuses": [200, 201, 202]},
  "overload": {"status": 503, "retryAfterSeconds": 600, "returnUrl": ""},
  "limits": {"maxConnections": 0, "maxRequests": 0, "maxPendingRequests": 0},
  "slowStart": "0s",
  "timeouts": {"request": "0s", "idle": "5m"}
}`
	exampleInstance = `{
  "id": "app-7f3c",
  "address": "10.0.0.5",
  "port": 5000,
  "zone": "eu-west-1a",
  "labels": {"version": "1.4.2"},
  "thresholds": {"maxSessions": 500, "maxCPU": 85, "maxMemory": 70, "maxMemoryMB": 0},
  "load": {"sessions": 120, "cpu": 37.5, "memory": 41.0, "memoryMB": 812},
  "state": "available",
  "reason": "",
  "updatedAt": "2026-11-22T15:40:00Z",
  "agent": {"version": "0.1.0", "startedAt": "2026-11-22T15:00:00Z"}
}`
)

// withField returns the JSON object raw with field set to the JSON value val (nil deletes it).
func withField(t testing.TB, raw, field string, val any) string {
	t.Helper()
	var m map[string]any
	if err := json.Unmarshal([]byte(raw), &m); err != nil {
		t.Fatalf("example: %v", err)
	}
	if val == nil {
		delete(m, field)
	} else {
		m[field] = val
	}
	b, err := json.Marshal(m)
	if err != nil {
		t.Fatal(err)
	}
	return string(b)
}

func TestDecodeExamples(t *testing.T) {
	cfg, err := registry.DecodeServiceConfig("app", []byte(exampleService))
	if err != nil {
		t.Fatalf("service example: %v", err)
	}
	want := registry.DefaultServiceConfig("app")
	if !reflect.DeepEqual(cfg, want) {
		t.Errorf("service example decodes to\n%+v\nwant the defaults\n%+v", cfg, want)
	}
	inst, err := registry.DecodeInstance("app", "app-7f3c", []byte(exampleInstance))
	if err != nil {
		t.Fatalf("instance example: %v", err)
	}
	wantInst := registry.Instance{
		ID: "app-7f3c", Address: "10.0.0.5", Port: 5000, Zone: "eu-west-1a",
		Labels:     map[string]string{"version": "1.4.2"},
		Thresholds: registry.Thresholds{MaxSessions: 500, MaxCPU: 85, MaxMemory: 70},
		Load:       registry.Load{Sessions: 120, CPU: 37.5, Memory: 41, MemoryMB: 812},
		State:      registry.StateAvailable,
		UpdatedAt:  time.Date(2026, 11, 22, 15, 40, 0, 0, time.UTC),
		Agent:      registry.AgentInfo{Version: "0.1.0", StartedAt: time.Date(2026, 11, 22, 15, 0, 0, 0, time.UTC)},
	}
	if !reflect.DeepEqual(inst, wantInst) {
		t.Errorf("instance example decodes to\n%+v\nwant\n%+v", inst, wantInst)
	}
}

func TestDecodeInstance(t *testing.T) {
	deep := `{"x":` + strings.Repeat("[", 40) + strings.Repeat("]", 40) + `,` + exampleInstance[1:]
	tests := []struct {
		name, service, id, raw string
		wantErr                string // substring of the error; empty: accepted
	}{
		{"example", "app", "app-7f3c", exampleInstance, ""},
		{"unknown fields ignored", "app", "app-7f3c", withField(t, exampleInstance, "futureField", map[string]any{"a": []int{1}}), ""},
		{"empty id takes the key's", "app", "app-7f3c", withField(t, exampleInstance, "id", nil), ""},
		{"ipv6", "app", "app-7f3c", withField(t, exampleInstance, "address", "fd00::5"), ""},
		{"offset time", "app", "app-7f3c", withField(t, exampleInstance, "updatedAt", "2026-11-22T17:40:00+02:00"), ""},
		{"nesting within the limit", "app", "app-7f3c", `{"x":[[[[[[[[1]]]]]]]],` + exampleInstance[1:], ""},
		{"id mismatch", "app", "app-other", exampleInstance, `does not match the key's "app-other"`},
		{"port 0", "app", "app-7f3c", withField(t, exampleInstance, "port", 0), "port: 0 must be between 1 and 65535"},
		{"port 65536", "app", "app-7f3c", withField(t, exampleInstance, "port", 65536), "port: 65536"},
		{"port not an integer", "app", "app-7f3c", withField(t, exampleInstance, "port", 50.5), "invalid JSON"},
		{"host name", "app", "app-7f3c", withField(t, exampleInstance, "address", "app.example.com"), "not an IP address"},
		{"empty address", "app", "app-7f3c", withField(t, exampleInstance, "address", ""), "not an IP address"},
		{"unspecified address", "app", "app-7f3c", withField(t, exampleInstance, "address", "0.0.0.0"), "unspecified"},
		{"mapped unspecified", "app", "app-7f3c", withField(t, exampleInstance, "address", "::ffff:0.0.0.0"), "unspecified"},
		{"ipv6 unspecified", "app", "app-7f3c", withField(t, exampleInstance, "address", "::"), "unspecified"},
		{"cloud metadata", "app", "app-7f3c", withField(t, exampleInstance, "address", "169.254.169.254"), "link-local"},
		{"mapped link-local", "app", "app-7f3c", withField(t, exampleInstance, "address", "::ffff:169.254.169.254"), "link-local"},
		{"ipv6 link-local", "app", "app-7f3c", withField(t, exampleInstance, "address", "fe80::1"), "link-local"},
		{"aws metadata over ipv6", "app", "app-7f3c", withField(t, exampleInstance, "address", "fd00:ec2::254"), "metadata"},
		{"gcp metadata over ipv6", "app", "app-7f3c", withField(t, exampleInstance, "address", "fd20:ce::254"), "metadata"},
		{"alibaba metadata", "app", "app-7f3c", withField(t, exampleInstance, "address", "100.100.100.200"), "metadata"},
		{"mapped alibaba metadata", "app", "app-7f3c", withField(t, exampleInstance, "address", "::ffff:100.100.100.200"), "metadata"},
		{"ipv4-compatible link-local", "app", "app-7f3c", withField(t, exampleInstance, "address", "::169.254.169.254"), "link-local"},
		{"nat64 link-local", "app", "app-7f3c", withField(t, exampleInstance, "address", "64:ff9b::169.254.169.254"), "link-local"},
		{"nat64 alibaba metadata", "app", "app-7f3c", withField(t, exampleInstance, "address", "64:ff9b::6464:64c8"), "metadata"},
		{"local nat64 link-local", "app", "app-7f3c", withField(t, exampleInstance, "address", "64:ff9b:1::a9fe:a9fe"), "link-local"},
		{"nat64 of a routable address", "app", "app-7f3c", withField(t, exampleInstance, "address", "64:ff9b::10.0.0.5"), ""},
		{"other cgnat address", "app", "app-7f3c", withField(t, exampleInstance, "address", "100.100.100.201"), ""},
		{"broadcast", "app", "app-7f3c", withField(t, exampleInstance, "address", "255.255.255.255"), "broadcast"},
		{"mapped broadcast", "app", "app-7f3c", withField(t, exampleInstance, "address", "::ffff:255.255.255.255"), "broadcast"},
		{"multicast", "app", "app-7f3c", withField(t, exampleInstance, "address", "224.0.0.1"), "multicast"},
		{"loopback is the watcher's decision", "app", "app-7f3c", withField(t, exampleInstance, "address", "127.0.0.1"), ""},
		{"ipv6 zone", "app", "app-7f3c", withField(t, exampleInstance, "address", "fe80::1%eth0"), "zone"},
		{"service with a slash", "app/x", "app-7f3c", exampleInstance, "service name"},
		{"id with a slash", "app", "app/7f3c", withField(t, exampleInstance, "id", nil), "instance id"},
		{"id with dots only", "app", "..", withField(t, exampleInstance, "id", nil), "instance id"},
		{"not UTF-8", "app", "app-7f3c", strings.Replace(exampleInstance, "eu-west-1a", "eu-\xff", 1), "not valid UTF-8"},
		{"trailing object", "app", "app-7f3c", exampleInstance + ` {}`, "invalid JSON"},
		{"trailing brace", "app", "app-7f3c", exampleInstance + `}`, "invalid JSON"},
		{"trailing garbage", "app", "app-7f3c", exampleInstance + `x`, "invalid JSON"},
		{"null", "app", "app-7f3c", `null`, "must be a JSON object"},
		{"array", "app", "app-7f3c", `[]`, "must be a JSON object"},
		{"empty", "app", "app-7f3c", ``, "must be a JSON object"},
		{"over MaxValueBytes", "app", "app-7f3c", withField(t, exampleInstance, "pad", strings.Repeat("a", registry.MaxValueBytes)), "byte limit"},
		{"deeply nested", "app", "app-7f3c", deep, "nested more than"},
		{"cpu over 100", "app", "app-7f3c", withField(t, exampleInstance, "load", map[string]any{"cpu": 100.5}), "load.cpu"},
		{"maxCPU over 100", "app", "app-7f3c", withField(t, exampleInstance, "thresholds", map[string]any{"maxCPU": 101}), "thresholds.maxCPU"},
		{"negative sessions", "app", "app-7f3c", withField(t, exampleInstance, "load", map[string]any{"sessions": -1}), "load.sessions"},
		{"bad state", "app", "app-7f3c", withField(t, exampleInstance, "state", "busy"), `state: "busy"`},
		{"missing state", "app", "app-7f3c", withField(t, exampleInstance, "state", nil), `state: ""`},
		{"label key with space", "app", "app-7f3c", withField(t, exampleInstance, "labels", map[string]string{"a b": "c"}), "labels: key"},
		{"agent metrics address", "app", "app-7f3c", withField(t, exampleInstance, "agent", map[string]string{"metrics": "127.0.0.1:18100"}), ""},
		{"agent metrics not ip:port", "app", "app-7f3c", withField(t, exampleInstance, "agent", map[string]string{"metrics": "javascript:alert(1)"}), "agent.metrics"},
		{"sessions not measured", "app", "app-7f3c", withField(t, exampleInstance, "load", map[string]any{"sessionsUnknown": true}), ""},
		{"leaving while draining", "app", "app-7f3c", withField(t, withField(t, exampleInstance, "state", "draining"), "leaving", true), ""},
		{"leaving while available", "app", "app-7f3c", withField(t, exampleInstance, "leaving", true), "only a draining instance leaves"},
		{"time out of range in UTC", "app", "app-7f3c", withField(t, exampleInstance, "updatedAt", "9999-12-31T23:00:00-02:00"), "updatedAt"},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			inst, err := registry.DecodeInstance(tc.service, tc.id, []byte(tc.raw))
			if tc.wantErr == "" {
				if err != nil {
					t.Fatalf("rejected: %v", err)
				}
				if inst.ID != tc.id {
					t.Errorf("id %q, want the key's %q", inst.ID, tc.id)
				}
				return
			}
			if err == nil || !strings.Contains(err.Error(), tc.wantErr) {
				t.Fatalf("error %v, want one containing %q", err, tc.wantErr)
			}
		})
	}
}

func TestDecodeInstanceNormalizes(t *testing.T) {
	raw := withField(t, withField(t, exampleInstance, "updatedAt", "2026-11-22T17:40:00+02:00"), "labels", map[string]string{})
	inst, err := registry.DecodeInstance("app", "app-7f3c", []byte(raw))
	if err != nil {
		t.Fatal(err)
	}
	if inst.UpdatedAt != time.Date(2026, 11, 22, 15, 40, 0, 0, time.UTC) {
		t.Errorf("updatedAt %v, want 15:40 UTC", inst.UpdatedAt)
	}
	if inst.Labels != nil {
		t.Errorf("empty labels decode to %#v, want nil", inst.Labels)
	}
}

func TestDecodeServiceConfig(t *testing.T) {
	tests := []struct {
		name, service, raw string
		wantErr            string
		check              func(registry.ServiceConfig) bool
	}{
		{"example", "app", exampleService, "", nil},
		{"empty object is the defaults", "app", `{}`, "", func(c registry.ServiceConfig) bool {
			return reflect.DeepEqual(c, registry.DefaultServiceConfig("app"))
		}},
		{"fields left out keep defaults", "shop", `{"domains":["shop.example.com"]}`, "", func(c registry.ServiceConfig) bool {
			return c.Domains[0] == "shop.example.com" && c.Affinity.CookieName == "tether-shop" && c.LBPolicy == registry.LBLeastRequest
		}},
		{"unknown fields ignored", "app", withField(t, exampleService, "gateways", []string{"a"}), "", nil},
		{"header mode", "app", `{"affinity":{"mode":"header"}}`, "", func(c registry.ServiceConfig) bool {
			return c.Affinity.HeaderName == "x-tether-session"
		}},
		{"empty header name means the default", "app", `{"affinity":{"headerName":""}}`, "", func(c registry.ServiceConfig) bool {
			return c.Affinity.HeaderName == "x-tether-session"
		}},
		{"bad affinity mode", "app", `{"affinity":{"mode":"sticky"}}`, "affinity.mode", nil},
		{"bad cookie name", "app", `{"affinity":{"cookieName":"a b"}}`, "affinity.cookieName", nil},
		{"SameSite None without Secure", "app", `{"affinity":{"sameSite":"None"}}`, "needs secure", nil},
		{"bad duration", "app", `{"slowStart":"soon"}`, "invalid duration", nil},
		{"duration as number", "app", `{"slowStart":5}`, "duration must be a string", nil},
		{"negative duration", "app", `{"slowStart":"-1s"}`, "slowStart", nil},
		{"no domains", "app", `{"domains":[]}`, "domains: need 1", nil},
		{"duplicate domains", "app", `{"domains":["a.com","A.com"]}`, "listed twice", nil},
		{"bad lb policy", "app", `{"lbPolicy":"fastest"}`, "lbPolicy", nil},
		{"too many retries", "app", `{"retryInitialOn503":{"attempts":11}}`, "attempts", nil},
		{"health status out of range", "app", `{"healthCheck":{"expectedStatuses":[99]}}`, "expectedStatuses", nil},
		{"return url not absolute", "app", `{"overload":{"returnUrl":"/busy"}}`, "returnUrl", nil},
		{"negative limit", "app", `{"limits":{"maxConnections":-1}}`, "invalid JSON", nil},
		{"service name with a slash", "a/b", `{}`, "service name", nil},
		{"service name upper case", "App", `{}`, "service name", nil},
		{"service name too long", strings.Repeat("a", 64), `{}`, "service name", nil},
		{"not UTF-8", "app", "{\"pathPrefix\":\"/\xc3\x28\"}", "not valid UTF-8", nil},
		{"trailing data", "app", `{}{}`, "invalid JSON", nil},
		{"trailing bracket", "app", `{}]`, "invalid JSON", nil},
		{"over MaxValueBytes", "app", `{"pad":"` + strings.Repeat("a", registry.MaxValueBytes) + `"}`, "byte limit", nil},
		{"deeply nested", "app", `{"x":` + strings.Repeat("[", 10000) + strings.Repeat("]", 10000) + `}`, "nested more than", nil},
		{"brackets in strings do not nest", "app", `{"x":"` + strings.Repeat("[", 100) + `\"{"}`, "", nil},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			cfg, err := registry.DecodeServiceConfig(tc.service, []byte(tc.raw))
			if tc.wantErr == "" {
				if err != nil {
					t.Fatalf("rejected: %v", err)
				}
				if tc.check != nil && !tc.check(cfg) {
					t.Errorf("decoded %+v", cfg)
				}
				return
			}
			if err == nil || !strings.Contains(err.Error(), tc.wantErr) {
				t.Fatalf("error %v, want one containing %q", err, tc.wantErr)
			}
		})
	}
}

func TestParseKey(t *testing.T) {
	tests := []struct {
		key      string
		kind     registry.KeyKind
		svc, id  string
		wantFail bool
	}{
		{"/tether/services/app", registry.KeyService, "app", "", false},
		{"/tether/instances/app/app-7f3c", registry.KeyInstance, "app", "app-7f3c", false},
		{"/tether/services/", 0, "", "", true},
		{"/tether/services/app/extra", 0, "", "", true},
		{"/tether/services/App", 0, "", "", true},
		{"/tether/instances/app", 0, "", "", true},
		{"/tether/instances/app/", 0, "", "", true},
		{"/tether/instances/app/a/b", 0, "", "", true},
		{"/tether/instances//a", 0, "", "", true},
		{"/tether/instances/app/\xff", 0, "", "", true},
		{"/tether/other/app", 0, "", "", true},
		{"/tether/servicesapp", 0, "", "", true},
		{"/tetherx/services/app", 0, "", "", true},
	}
	for _, tc := range tests {
		kind, svc, id, err := registry.ParseKey("/tether", tc.key)
		if tc.wantFail {
			if err == nil || kind != registry.KeyUnknown || !strings.Contains(err.Error(), "key ") {
				t.Errorf("ParseKey(%q) = %v %q %q %v, want KeyUnknown and an error naming the key", tc.key, kind, svc, id, err)
			}
			continue
		}
		if err != nil || kind != tc.kind || svc != tc.svc || id != tc.id {
			t.Errorf("ParseKey(%q) = %v %q %q %v, want %v %q %q", tc.key, kind, svc, id, err, tc.kind, tc.svc, tc.id)
		}
	}
}

func TestNormalizePrefix(t *testing.T) {
	tests := []struct{ in, want string }{
		{"/tether", "/tether"},
		{"/tether/", "/tether"},
		{"/tether//", "/tether"},
		{"/a/b", "/a/b"},
		{"", ""},
		{"/", ""},
		{"tether", ""},
		{"/te ther", ""},
		{"/te\x00ther", ""},
		{"/te\xffther", ""},
		{"/" + strings.Repeat("a", 127), "/" + strings.Repeat("a", 127)},
		{"/" + strings.Repeat("a", 128), ""},
	}
	for _, tc := range tests {
		got, err := registry.NormalizePrefix(tc.in)
		if tc.want == "" {
			if err == nil {
				t.Errorf("NormalizePrefix(%q) = %q, want an error", tc.in, got)
			}
			continue
		}
		if err != nil || got != tc.want {
			t.Errorf("NormalizePrefix(%q) = %q, %v; want %q", tc.in, got, err, tc.want)
		}
	}
}

// TestDecodeServiceConfigPartial: a rejected configuration is served field by field: its
// valid fields as written (the session header's name among them, so that no session ends),
// each bad optional field at its default, the first field of a nested object like any other.
func TestDecodeServiceConfigPartial(t *testing.T) {
	raw := `{"domains": ["app.example"], "pathPrefix": "/app", "affinity": {"mode": "header", "headerName": "x-session"},
		"timeouts": {"request": "-5s", "idle": "2m"}, "weights": 7}`
	p := registry.DecodeServiceConfigPartial("app", []byte(raw))
	if p.Identity != nil {
		t.Fatalf("identity refused: %v", p.Identity)
	}
	def, c := registry.DefaultServiceConfig("app"), p.Config
	if !reflect.DeepEqual(c.Domains, []string{"app.example"}) || c.PathPrefix != "/app" || !reflect.DeepEqual(p.Domains, c.Domains) || p.PathPrefix != "/app" {
		t.Errorf("routes %v %q, claimed %v %q; want app.example /app", c.Domains, c.PathPrefix, p.Domains, p.PathPrefix)
	}
	if c.Affinity.Mode != registry.AffinityHeader || c.Affinity.HeaderName != "x-session" {
		t.Errorf("affinity %s by %q, want header by x-session", c.Affinity.Mode, c.Affinity.HeaderName)
	}
	if c.Timeouts.Request != def.Timeouts.Request || c.Timeouts.Idle.D() != 2*time.Minute || c.Weights != def.Weights {
		t.Errorf("timeouts %+v, weights %q; want the default request timeout, idle 2m and the default weights", c.Timeouts, c.Weights)
	}
	if len(p.Defaulted) != 2 || !strings.HasPrefix(p.Defaulted[0], "timeouts.request: ") && !strings.HasPrefix(p.Defaulted[1], "timeouts.request: ") {
		t.Errorf("defaulted %q; want timeouts.request and weights", p.Defaulted)
	}
	// Without a header name, header mode takes the default one.
	p = registry.DecodeServiceConfigPartial("app", []byte(`{"affinity": {"mode": "header"}, "weights": 7}`))
	if p.Identity != nil || p.Config.Affinity.HeaderName != def.Affinity.HeaderName || def.Affinity.HeaderName == "" {
		t.Errorf("header mode without a name: %q (identity %v), want the default %q", p.Config.Affinity.HeaderName, p.Identity, def.Affinity.HeaderName)
	}
}

// TestValueLimitsAreExact: a value of exactly MaxValueBytes decodes, one byte more does not;
// nesting of exactly 32 levels decodes, 33 do not, and siblings are no nesting.
func TestValueLimitsAreExact(t *testing.T) {
	padded := func(n int) []byte {
		v := `{"pad": "",` + strings.TrimPrefix(strings.TrimSpace(exampleInstance), "{")
		return []byte(strings.Replace(v, `"pad": ""`, `"pad": "`+strings.Repeat("x", n-len(v))+`"`, 1))
	}
	if raw := padded(registry.MaxValueBytes); len(raw) != registry.MaxValueBytes {
		t.Fatalf("padded to %d bytes", len(raw))
	} else if _, err := registry.DecodeInstance("app", "app-7f3c", raw); err != nil {
		t.Errorf("a value of exactly %d bytes: %v", registry.MaxValueBytes, err)
	}
	if _, err := registry.DecodeInstance("app", "app-7f3c", padded(registry.MaxValueBytes+1)); err == nil || !strings.Contains(err.Error(), "byte limit") {
		t.Errorf("a value one byte over the limit: %v", err)
	}
	nested := func(levels int) []byte { // the object itself is the first level
		return []byte(`{"x":` + strings.Repeat("[", levels-1) + strings.Repeat("]", levels-1) + `}`)
	}
	if _, err := registry.DecodeServiceConfig("app", nested(32)); err != nil {
		t.Errorf("32 levels: %v", err)
	}
	if _, err := registry.DecodeServiceConfig("app", nested(33)); err == nil || !strings.Contains(err.Error(), "nested more than") {
		t.Errorf("33 levels: %v", err)
	}
	if _, err := registry.DecodeServiceConfig("app", []byte(`{"x":[`+strings.Repeat(`[{}],`, 40)+`[]]}`)); err != nil {
		t.Errorf("40 sibling arrays: %v", err)
	}
}

// TestInstanceValidateChecksTheID: an instance's own check refuses a bad ID, whoever built it.
func TestInstanceValidateChecksTheID(t *testing.T) {
	in, err := registry.DecodeInstance("app", "app-7f3c", []byte(exampleInstance))
	if err != nil {
		t.Fatal(err)
	}
	in.ID = "bad id"
	if err := in.Validate(); err == nil || !strings.Contains(err.Error(), "bad id") {
		t.Errorf("instance with ID %q: %v", in.ID, err)
	}
}

// TestInstanceBoundsAreExact: each bound of an instance accepts its own value.
func TestInstanceBoundsAreExact(t *testing.T) {
	base, err := registry.DecodeInstance("app", "app-7f3c", []byte(exampleInstance))
	if err != nil {
		t.Fatal(err)
	}
	for what, edit := range map[string]func(*registry.Instance){
		"a zone of 64 bytes": func(in *registry.Instance) { in.Zone = strings.Repeat("z", 64) },
		"MaxLabels labels, a key of 63 bytes, a value of 256": func(in *registry.Instance) {
			in.Labels = map[string]string{strings.Repeat("k", 63): strings.Repeat("v", 256)}
			for i := 1; i < registry.MaxLabels; i++ {
				in.Labels[fmt.Sprintf("l%d", i)] = "v"
			}
		},
		"cpu and memory at 100%":        func(in *registry.Instance) { in.Load.CPU, in.Load.Memory = 100, 100 },
		"port 1":                        func(in *registry.Instance) { in.Port = 1 },
		"port 65535":                    func(in *registry.Instance) { in.Port = 65535 },
		"a reason of MaxReason bytes":   func(in *registry.Instance) { in.Reason = strings.Repeat("r", registry.MaxReason) },
		"an agent version of 64 bytes":  func(in *registry.Instance) { in.Agent.Version = strings.Repeat("v", 64) },
		"an agent host of 255 bytes":    func(in *registry.Instance) { in.Agent.Host = strings.Repeat("h", 255) },
		"updated in year 9999":          func(in *registry.Instance) { in.UpdatedAt = time.Date(9999, 12, 31, 0, 0, 0, 0, time.UTC) },
		"an agent started in year 9999": func(in *registry.Instance) { in.Agent.StartedAt = time.Date(9999, 12, 31, 0, 0, 0, 0, time.UTC) },
	} {
		in := base
		edit(&in)
		if err := in.Validate(); err != nil {
			t.Errorf("%s: %v", what, err)
		}
	}
}
