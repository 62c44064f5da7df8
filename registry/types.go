// Package registry holds Tether's etcd schema: the service and instance types with their JSON
// encoding and validation, the key names, the write side used by agents, a typed watch that
// yields a consistent State. The embedded etcd server lives in internal/etcdembed.
package registry

import (
	"crypto/sha256"
	"encoding/hex"
	"encoding/json"
	"fmt"
	"time"
)

// Duration is a time.Duration encoded in JSON as a Go duration string ("15s", "1m30s").
type Duration time.Duration

// MarshalJSON encodes d as a duration string.
func (d Duration) MarshalJSON() ([]byte, error) {
	return json.Marshal(time.Duration(d).String())
}

// UnmarshalJSON accepts a duration string such as "15s".
func (d *Duration) UnmarshalJSON(b []byte) error {
	var s string
	if err := json.Unmarshal(b, &s); err != nil {
		return fmt.Errorf("duration must be a string such as \"15s\": %w", err)
	}
	v, err := time.ParseDuration(s)
	if err != nil {
		return fmt.Errorf("invalid duration %q: %w", s, err)
	}
	*d = Duration(v)
	return nil
}

// D returns d as a time.Duration.
func (d Duration) D() time.Duration { return time.Duration(d) }

// AffinityMode says how a user's requests are pinned to one instance.
type AffinityMode string

// Affinity modes.
const (
	AffinityCookie   AffinityMode = "cookie"    // Envoy-issued session cookie (stateful session filter).
	AffinityHeader   AffinityMode = "header"    // stateful session by header, for non-browser clients.
	AffinitySourceIP AffinityMode = "source-ip" // hash of the client address: breaks for users behind NAT.
	AffinityNone     AffinityMode = "none"      // stateless services.
)

// removedAppCookie is the former "app-cookie" mode (a consistent hash on the application's
// own cookie). Envoy hashes that cookie only from the second request on: the first request
// carries no cookie and goes to a random server, so with n servers the session made there is
// lost with probability (n-1)/n. The decoder rejects it and points to "cookie" mode.
const removedAppCookie AffinityMode = "app-cookie"

// LBPolicy is Envoy's load-balancing policy among a service's available instances.
type LBPolicy string

// Load-balancing policies.
const (
	LBLeastRequest LBPolicy = "least_request"
	LBRoundRobin   LBPolicy = "round_robin"
	LBRandom       LBPolicy = "random"
	LBRingHash     LBPolicy = "ring_hash"
	LBMaglev       LBPolicy = "maglev"
)

// WeightMode says how an available endpoint's load-balancing weight is chosen.
type WeightMode string

// Weight modes.
const (
	WeightsLoad  WeightMode = "load"  // endpoint weight from the instance's load headroom.
	WeightsEqual WeightMode = "equal" // every available endpoint weighs the same.
)

// ServiceConfig is the operator-written configuration at <prefix>/services/<service>.
// Fields left out of the JSON keep the values of DefaultServiceConfig.
type ServiceConfig struct {
	Domains           []string    `json:"domains"`
	PathPrefix        string      `json:"pathPrefix"`
	Affinity          Affinity    `json:"affinity"`
	WebSocket         bool        `json:"websocket"`
	RetryInitialOn503 Retry       `json:"retryInitialOn503"`
	LBPolicy          LBPolicy    `json:"lbPolicy"`
	Weights           WeightMode  `json:"weights"`
	HealthCheck       HealthCheck `json:"healthCheck"`
	Overload          Overload    `json:"overload"`
	Limits            Limits      `json:"limits"`
	SlowStart         Duration    `json:"slowStart"`
	Timeouts          Timeouts    `json:"timeouts"`
}

// Timeouts bound the requests of a service's HTTP routes (WebSockets are never cut by them).
type Timeouts struct {
	// Request bounds a whole request and its response, 0 (the default) for no limit: a route
	// timeout would cut long polls, server-sent events and slow downloads.
	Request Duration `json:"request"`
	// Idle ends a request whose stream has been silent this long (default 5m).
	Idle Duration `json:"idle"`
}

// Affinity says how a user's requests are pinned to one instance.
type Affinity struct {
	Mode       AffinityMode `json:"mode"`
	CookieName string       `json:"cookieName"`
	CookiePath string       `json:"cookiePath"`
	// CookieTTL must be 0 (Validate): Envoy writes a TTL's expiry from its own monotonic
	// clock, so across Envoys the cookie would expire at random (envoyproxy/envoy#44111).
	CookieTTL Duration `json:"cookieTTL"`
	// Strict makes Envoy answer 503 instead of picking a new host when the pinned host is gone.
	Strict bool `json:"strict"`
	// HeaderName is the header carrying the session in "header" mode.
	HeaderName string `json:"headerName,omitempty"`
	// SameSite is the cookie's SameSite attribute: SameSiteAuto (the default), "Lax",
	// "Strict", "None" (needs Secure) or "" (no attribute).
	SameSite string `json:"sameSite"`
	// Secure adds the Secure attribute to the cookie (set it when clients reach Envoy over TLS).
	Secure bool `json:"secure"`
}

// Retry configures the resubmission of initial requests (no session yet) refused with 503.
type Retry struct {
	Enabled       bool     `json:"enabled"`
	Attempts      int      `json:"attempts"`
	PerTryTimeout Duration `json:"perTryTimeout"`
}

// HealthCheck configures Envoy's active liveness check of each instance; off unless Path is
// set. A failing active check makes Envoy drop the instance's sessions (it overrides the
// DRAINING status of a full instance), so Path must answer 2xx whenever the process is alive,
// full or not.
type HealthCheck struct {
	Path string `json:"path"`
	// Host is the Host header of the check; empty means the service's first domain without a
	// wildcard, or "localhost" when every domain has one.
	Host             string   `json:"host"`
	Interval         Duration `json:"interval"`
	Timeout          Duration `json:"timeout"`
	ExpectedStatuses []int    `json:"expectedStatuses"`
}

// Overload configures the reply when no instance can take a new session.
type Overload struct {
	Status            int    `json:"status"`
	RetryAfterSeconds int    `json:"retryAfterSeconds"`
	ReturnURL         string `json:"returnUrl"`
}

// Limits are circuit-breaker limits (the analogue of WCF's maxConcurrentCalls). Envoy's only
// per-host threshold is MaxConnections; MaxRequests and MaxPendingRequests apply to the whole
// cluster. 0 means Tether's default: no per-host limit, and cluster limits of 100000
// connections and requests, because Envoy's own default of 1024 would cap a service at 1024
// open WebSockets.
type Limits struct {
	MaxConnections     uint32 `json:"maxConnections"`
	MaxRequests        uint32 `json:"maxRequests"`
	MaxPendingRequests uint32 `json:"maxPendingRequests"`
}

// SameSiteAuto, the default sameSite, is SameSite=None when the cookie is Secure and no
// SameSite attribute otherwise. A user who signs in through OpenID Connect's form_post or
// SAML's POST binding comes back with a cross-site POST, which carries no Lax or Strict
// cookie: Envoy would place them anew by load and overwrite their cookie. SameSite=None is
// the one value browsers send cross-site, and only with Secure; without Secure, leaving the
// attribute out is the most that browsers send (Firefox and Safari always, Chrome for two
// minutes). The cookie only names a server, so sending it cross-site grants nothing.
const SameSiteAuto = "auto"

// MaxCookieName is the longest cookie name Tether accepts. A request of an existing session
// is recognised by a regular expression on the Cookie header whose RE2 program size is 33 plus
// the length of the name, and Envoy rejects regexes over a program size of 100.
const MaxCookieName = 63

// DefaultCookieName is the session cookie name of a service that names none: tether-<service>,
// or, when that is over MaxCookieName, its first characters and a stable hash of the service
// name, so that every allowed service name gets a cookie of its own.
func DefaultCookieName(service string) string {
	name := "tether-" + service
	if len(name) <= MaxCookieName {
		return name
	}
	sum := sha256.Sum256([]byte(service))
	suffix := "-" + hex.EncodeToString(sum[:4])
	return name[:MaxCookieName-len(suffix)] + suffix
}

// DefaultServiceConfig returns the configuration of a service with no config key.
func DefaultServiceConfig(service string) ServiceConfig {
	return ServiceConfig{
		Domains:    []string{"*"},
		PathPrefix: "/",
		Affinity: Affinity{
			Mode:       AffinityCookie,
			CookieName: DefaultCookieName(service),
			CookiePath: "/",
			HeaderName: "x-tether-session",
			SameSite:   SameSiteAuto,
		},
		WebSocket:         true,
		RetryInitialOn503: Retry{Enabled: true, Attempts: 2, PerTryTimeout: Duration(15 * time.Second)},
		LBPolicy:          LBLeastRequest,
		Weights:           WeightsLoad,
		// No active check by default: the agent is the health authority (it probes the app
		// and publishes unhealthy), and a check that failed while the app is only full would
		// move its sessions.
		HealthCheck: HealthCheck{
			Interval:         Duration(5 * time.Second),
			Timeout:          Duration(2 * time.Second),
			ExpectedStatuses: []int{200, 201, 202},
		},
		Overload: Overload{Status: 503, RetryAfterSeconds: 600},
		Timeouts: Timeouts{Idle: Duration(5 * time.Minute)},
	}
}

// InstanceState is what an agent says of its instance; the control plane maps it to Envoy's
// health status.
type InstanceState string

// Instance states.
const (
	StateAvailable InstanceState = "available" // takes new sessions.
	StateFull      InstanceState = "full"      // a threshold is crossed: keeps its sessions, takes no new ones.
	StateDraining  InstanceState = "draining"  // shutting down: keeps its sessions, takes no new ones.
	StateUnhealthy InstanceState = "unhealthy" // the backend's health probe fails.
)

// Instance is one backend instance at <prefix>/instances/<service>/<id>, written by its agent
// under a lease.
type Instance struct {
	ID         string            `json:"id"`
	Address    string            `json:"address"`
	Port       int               `json:"port"`
	Zone       string            `json:"zone,omitempty"`
	Labels     map[string]string `json:"labels,omitempty"`
	Thresholds Thresholds        `json:"thresholds"`
	Load       Load              `json:"load"`
	State      InstanceState     `json:"state"`
	Reason     string            `json:"reason"`
	UpdatedAt  time.Time         `json:"updatedAt"`
	Agent      AgentInfo         `json:"agent"`
	// Leaving marks the last value an agent writes before it deletes its key on purpose (a
	// graceful stop, after its drain), with its final load. A key deleted with this value left
	// on purpose; one deleted without it may have lost its lease, and the removal guard holds
	// it in a mass disappearance. Only a draining instance leaves. A field, not a state of its
	// own: control planes from before it would reject an unknown state value.
	Leaving bool `json:"leaving,omitempty"`
	// FirstPhase is set by the control plane's two-phase publication on the copy it
	// translates: the endpoint is served DRAINING, whatever its state, until every Envoy
	// knows it. Never stored or read from etcd.
	FirstPhase bool `json:"-"`
	// ClaimSince is the etcd revision from which the service has been claiming its routes
	// without a gap, as the agent saw it when it registered: the oldest claim among the
	// service's live instances then (their ClaimSince, else their key's create revision), or
	// 0 when it found none. It passes an unconfigured service's claim from old instances to
	// new ones through a rolling deploy, so that a service registered in between (a typo of
	// its name) never becomes the older claim. A value above the key's create revision is
	// ignored. See docs/security.md: an agent credential can set any value.
	ClaimSince int64 `json:"claimSince,omitempty"`
}

// LeftEmpty reports whether in is the value of an instance that deregistered itself with no
// session left that its agent counted: the one departure after which nobody loses a server.
func (in *Instance) LeftEmpty() bool {
	return in.Leaving && in.Load.SessionsKnown() && in.Load.Sessions == 0
}

// Claim returns the revision an instance whose key was created at created claims its
// service's routes from: its ClaimSince when set and older, else created.
func (in *Instance) Claim(created int64) int64 {
	if in.ClaimSince > 0 && in.ClaimSince < created {
		return in.ClaimSince
	}
	return created
}

// Thresholds follow Wisej's HealthCheck.json; 0 means unlimited.
type Thresholds struct {
	MaxSessions int     `json:"maxSessions"`
	MaxCPU      float64 `json:"maxCPU"`      // percent
	MaxMemory   float64 `json:"maxMemory"`   // percent of memory
	MaxMemoryMB float64 `json:"maxMemoryMB"` // absolute, MiB
}

// Load is the instance's last sampled load.
type Load struct {
	// Sessions is the session count the agent last measured (0 when it never did).
	Sessions int     `json:"sessions"`
	CPU      float64 `json:"cpu"`      // percent
	Memory   float64 `json:"memory"`   // percent
	MemoryMB float64 `json:"memoryMB"` // MiB
	// SessionsUnknown says the last sample did not measure the sessions: the agent has no
	// --sessions-url, or its sessions probe failed. Sessions then is no current count, and
	// nothing may call the instance empty. Left out when false, so values of agents from
	// before it read as measured, as they were taken; readers from before it ignore it and
	// see the count alone, as they always did.
	SessionsUnknown bool `json:"sessionsUnknown,omitempty"`
}

// SessionsKnown reports whether l's session count was measured (see SessionsUnknown).
func (l Load) SessionsKnown() bool { return !l.SessionsUnknown }

// AgentInfo describes the agent that wrote the instance.
type AgentInfo struct {
	Version   string    `json:"version"`
	StartedAt time.Time `json:"startedAt"`
	// Metrics is the agent's /metrics listener, ip:port (empty when disabled), so that a
	// monitor can link it when several agents share a host on ports chosen at start.
	Metrics string `json:"metrics,omitempty"`
	// Host and PID name the agent's process (the host name as the operating system gives
	// it): an agent restarted on the same host adopts its predecessor's key only when that
	// process is provably gone (see agent.sameServer).
	Host string `json:"host,omitempty"`
	PID  int    `json:"pid,omitempty"`
}

// Service is one service of a State: its configuration and its live instances.
type Service struct {
	Name string
	// Config is the service's configuration (defaults when Configured is false).
	Config ServiceConfig
	// Configured is true when an operator wrote <prefix>/services/<name>.
	Configured bool
	// Instances by instance ID.
	Instances map[string]Instance
	// Revision is the highest etcd revision that changed this service (its config or an
	// instance, including deletions) as seen by the watcher; a cache key, not content.
	Revision int64
	// Drained maps each instance an operator's drain selects to that drain. Set by
	// ApplyDrains only (the watcher leaves it nil); its instances are then served drained.
	Drained map[string]DrainMark
	// Created is the etcd revision of the service's claim to its domains and path: its
	// configuration key's create revision when Configured, else the oldest claim of its
	// instances (Instance.Claim: inherited through rolling deploys). Every
	// replica reads the same value from etcd; the older claim wins a contested route. 0 when
	// unknown (a State built by hand).
	Created int64
	// ConfigError is set when the configuration key exists but neither its value nor any
	// earlier version of it still in etcd's history validates: the service is then left
	// out of the translation rather than served with defaults (another cookie name, "*"
	// domains), so that every replica and every restart serve it the same way.
	ConfigError string
	// ConfigProblems are the fields of a rejected configuration that are served with their
	// defaults (each "field: why"); the fields that identify the service's sessions and
	// routes are the value's own. Empty for a valid configuration.
	ConfigProblems []string

	// The claims behind Created (configuration key create revision, instance claims), kept by
	// the watcher's state builder.
	configCreated int64
	instCreated   map[string]int64
}

// State is the whole registry at one etcd revision. A State handed out by the watcher is
// never modified afterwards; unchanged services are shared between successive States.
type State struct {
	Revision int64
	Services map[string]*Service
	// Rejected maps each key whose value failed decoding or validation to the error, in words.
	// A rejected key with an earlier valid value (instance or service configuration) keeps
	// that value; one without is left out of Services.
	Rejected map[string]string
	// Drains are the operators' drains by service and drain name. A drain does not make its
	// service exist: drains of a service with no instances and no configuration wait for it.
	Drains map[string]map[string]Drain
	// Departures are the instance keys that etcd's history shows deleted shortly before a
	// watcher's first listing and not back in it, with their last values: what a control
	// plane that was not running then did not see go (its removal guard and vanish grace
	// count them as if it had). Only the first State a Watcher emits carries them; states
	// built from it leave them out.
	Departures []Departure
}

// Departure is an instance key deleted before a listing, as etcd's history holds it.
type Departure struct {
	Service  string
	Instance Instance // its last value before the delete
	Revision int64    // the delete's revision
	Created  int64    // the deleted key's create revision (its claim, see Service.Created)
}
