package registry

import (
	"bytes"
	"encoding/json"
	"errors"
	"fmt"
	"net/netip"
	"net/url"
	"regexp"
	"slices"
	"strconv"
	"strings"
	"time"
	"unicode/utf8"
)

// Size bounds for registry values. Values over them are rejected.
const (
	MaxValueBytes   = 64 << 10 // one etcd value
	MaxDomains      = 64
	MaxLabels       = 64
	maxLabelKey     = 63
	maxLabelValue   = 256
	MaxReason       = 512
	maxShortString  = 253
	maxRetryAttempt = 10
)

var (
	serviceNameRE = regexp.MustCompile(`^[a-z0-9]([a-z0-9-]{0,61}[a-z0-9])?$`)
	instanceIDRE  = regexp.MustCompile(`^[A-Za-z0-9]([A-Za-z0-9._-]{0,126}[A-Za-z0-9])?$`)
	labelKeyRE    = regexp.MustCompile(`^[A-Za-z0-9]([A-Za-z0-9._/-]*[A-Za-z0-9])?$`)
	cookieNameRE  = regexp.MustCompile(`^[A-Za-z0-9!#$%&'*+.^_` + "`" + `|~-]{1,` + strconv.Itoa(MaxCookieName) + `}$`)
	hostHeaderRE  = regexp.MustCompile(`^[A-Za-z0-9]([A-Za-z0-9.-]*[A-Za-z0-9])?(:[0-9]{1,5})?$`)
	headerNameRE  = regexp.MustCompile(`^[a-z0-9-]{1,64}$`)
	domainRE      = regexp.MustCompile(`^(\*|(\*[.-])?[A-Za-z0-9]([A-Za-z0-9.-]*[A-Za-z0-9])?(\*)?)(:[0-9]{1,5})?$`)
)

// ValidateServiceName checks a service name against ^[a-z0-9]([a-z0-9-]{0,61}[a-z0-9])?$.
func ValidateServiceName(name string) error {
	if !serviceNameRE.MatchString(name) {
		return fmt.Errorf("service name %q: must be 1-63 lowercase letters, digits or '-', starting and ending with a letter or digit", name)
	}
	return nil
}

// ValidateInstanceID checks an instance ID: 1-128 letters, digits, '.', '_' or '-'.
func ValidateInstanceID(id string) error {
	if !instanceIDRE.MatchString(id) {
		return fmt.Errorf("instance id %q: must be 1-128 letters, digits, '.', '_' or '-', starting and ending with a letter or digit", id)
	}
	return nil
}

// maxJSONDepth bounds the nesting of arrays and objects in a value, unknown fields included.
// The schema needs 3 levels; the margin leaves room for future fields.
const maxJSONDepth = 32

// decodeJSON checks size, UTF-8, that the value is one JSON object and its nesting depth,
// then decodes it into v, ignoring unknown fields and refusing trailing data. Fields left
// out keep the values v already holds.
func decodeJSON(raw []byte, v any) error {
	if len(raw) > MaxValueBytes {
		return fmt.Errorf("value is %d bytes, over the %d byte limit", len(raw), MaxValueBytes)
	}
	if !utf8.Valid(raw) {
		return errors.New("value is not valid UTF-8")
	}
	if t := bytes.TrimLeft(raw, " \t\r\n"); len(t) == 0 || t[0] != '{' {
		return errors.New("invalid JSON: the value must be a JSON object")
	}
	if jsonDepthOver(raw, maxJSONDepth) {
		return fmt.Errorf("invalid JSON: nested more than %d levels deep", maxJSONDepth)
	}
	// json.Unmarshal, unlike a json.Decoder, rejects any data after the object.
	if err := json.Unmarshal(raw, v); err != nil {
		return fmt.Errorf("invalid JSON: %w", err)
	}
	return nil
}

// jsonDepthOver reports whether the arrays and objects of raw nest deeper than limit. It
// does not validate: json.Unmarshal does that afterwards.
func jsonDepthOver(raw []byte, limit int) bool {
	depth := 0
	inString, escaped := false, false
	for _, c := range raw {
		switch {
		case inString && escaped:
			escaped = false
		case inString && c == '\\':
			escaped = true
		case inString:
			inString = c != '"'
		case c == '"':
			inString = true
		case c == '{' || c == '[':
			depth++
			if depth > limit {
				return true
			}
		case c == '}' || c == ']':
			depth--
		}
	}
	return false
}

// DecodeServiceConfig decodes and validates the value of <prefix>/services/<service>.
// Fields left out keep their defaults; unknown fields are ignored.
func DecodeServiceConfig(service string, raw []byte) (ServiceConfig, error) {
	cfg := DefaultServiceConfig(service)
	if err := ValidateServiceName(service); err != nil {
		return cfg, err
	}
	if err := decodeJSON(raw, &cfg); err != nil {
		return cfg, err
	}
	// headerName is omitted from the encoding when empty, so empty means the default.
	if cfg.Affinity.HeaderName == "" {
		cfg.Affinity.HeaderName = DefaultServiceConfig(service).Affinity.HeaderName
	}
	return cfg, cfg.Validate()
}

// DecodeInstance decodes and validates the value of <prefix>/instances/<service>/<id>.
// An empty "id" in the value takes the key's; a different one is an error.
func DecodeInstance(service, id string, raw []byte) (Instance, error) {
	var inst Instance
	if err := ValidateServiceName(service); err != nil {
		return inst, err
	}
	if err := ValidateInstanceID(id); err != nil {
		return inst, err
	}
	if err := decodeJSON(raw, &inst); err != nil {
		return inst, err
	}
	if inst.ID == "" {
		inst.ID = id
	}
	if inst.ID != id {
		return inst, fmt.Errorf("id %q in the value does not match the key's %q", inst.ID, id)
	}
	// Normalize so that equal content compares equal (reflect.DeepEqual) and re-encodes the same.
	inst.UpdatedAt = inst.UpdatedAt.UTC()
	inst.Agent.StartedAt = inst.Agent.StartedAt.UTC()
	if len(inst.Labels) == 0 {
		inst.Labels = nil
	}
	return inst, inst.Validate()
}

// Validate checks every field of the configuration.
func (c *ServiceConfig) Validate() error {
	var errs []error
	add := func(format string, a ...any) { errs = append(errs, fmt.Errorf(format, a...)) }

	if len(c.Domains) == 0 || len(c.Domains) > MaxDomains {
		add("domains: need 1 to %d entries, got %d", MaxDomains, len(c.Domains))
	}
	seen := map[string]bool{}
	for _, d := range c.Domains {
		if len(d) > maxShortString || !domainRE.MatchString(d) {
			add("domains: %q is not a host name, \"*\", a wildcard such as \"*.example.com\", or one of those with a port", d)
		}
		if seen[strings.ToLower(d)] {
			add("domains: %q is listed twice", d)
		}
		seen[strings.ToLower(d)] = true
	}
	if !strings.HasPrefix(c.PathPrefix, "/") || len(c.PathPrefix) > maxShortString || strings.ContainsAny(c.PathPrefix, " ?#\t\r\n") {
		add("pathPrefix: %q must start with '/' and hold no spaces, '?' or '#'", c.PathPrefix)
	}
	a := c.Affinity
	switch a.Mode {
	case AffinityCookie:
		if !cookieNameRE.MatchString(a.CookieName) {
			add("affinity.cookieName: %q is not a valid cookie name of 1 to %d characters", a.CookieName, MaxCookieName)
		}
	case AffinityHeader:
		if !headerNameRE.MatchString(a.HeaderName) {
			add("affinity.headerName: %q must be 1-64 lowercase letters, digits or '-'", a.HeaderName)
		}
	case AffinitySourceIP, AffinityNone:
	case removedAppCookie:
		add(`affinity.mode: "app-cookie" is no longer supported: Envoy hashes the application's cookie only from the second request on, ` +
			`so the server that served the first request is lost for most users; use "cookie" (Envoy's own session cookie, set on the first response)`)
	default:
		add("affinity.mode: %q is not one of cookie, header, source-ip, none", a.Mode)
	}
	if !strings.HasPrefix(a.CookiePath, "/") || len(a.CookiePath) > maxShortString || strings.ContainsAny(a.CookiePath, " ;,\t\r\n") {
		add("affinity.cookiePath: %q must start with '/' and hold no spaces, ';' or ','", a.CookiePath)
	}
	if a.CookieTTL != 0 {
		// Envoy writes the expiry into the cookie from its own monotonic clock and checks it
		// against its own (cookie.cc), so across Envoys, or one Envoy after a reboot, the
		// cookie expires at random, and an expired cookie is a new session on another server.
		add("affinity.cookieTTL: %s must be 0s (a browser-session cookie): Envoy writes the cookie's expiry from its own "+
			"monotonic clock (the time since its host started), so another Envoy, or the same one after a reboot, reads it "+
			"as expired at once and moves the user to another server, or as valid far longer than set (envoyproxy/envoy#44111)",
			a.CookieTTL.D())
	}
	switch a.SameSite {
	case SameSiteAuto, "", "Lax", "Strict", "None":
	default:
		add("affinity.sameSite: %q is not one of auto, Lax, Strict, None or empty", a.SameSite)
	}
	if a.SameSite == "None" && !a.Secure {
		add("affinity.sameSite: None needs secure: true (browsers drop SameSite=None cookies without Secure)")
	}
	r := c.RetryInitialOn503
	if r.Attempts < 0 || r.Attempts > maxRetryAttempt {
		add("retryInitialOn503.attempts: %d must be between 0 and %d", r.Attempts, maxRetryAttempt)
	}
	if r.PerTryTimeout < 0 || r.PerTryTimeout.D() > time.Hour {
		add("retryInitialOn503.perTryTimeout: %s must be between 0s and 1h", r.PerTryTimeout.D())
	}
	switch c.LBPolicy {
	case LBLeastRequest, LBRoundRobin, LBRandom, LBRingHash, LBMaglev:
	default:
		add("lbPolicy: %q is not one of least_request, round_robin, random, ring_hash, maglev", c.LBPolicy)
	}
	switch c.Weights {
	case WeightsLoad, WeightsEqual:
	default:
		add("weights: %q is not one of load, equal", c.Weights)
	}
	h := c.HealthCheck
	if h.Path != "" && (!strings.HasPrefix(h.Path, "/") || len(h.Path) > maxShortString || strings.ContainsAny(h.Path, " \t\r\n")) {
		add("healthCheck.path: %q must be empty (no active check) or start with '/'", h.Path)
	}
	// Checked even when the check is off, so that turning it on cannot meet a bad value.
	if h.Interval.D() < 100*time.Millisecond || h.Interval.D() > time.Hour {
		add("healthCheck.interval: %s must be between 100ms and 1h", h.Interval.D())
	}
	if h.Timeout.D() < 10*time.Millisecond || h.Timeout.D() > time.Hour {
		add("healthCheck.timeout: %s must be between 10ms and 1h", h.Timeout.D())
	}
	if len(h.ExpectedStatuses) == 0 || len(h.ExpectedStatuses) > 100 {
		add("healthCheck.expectedStatuses: need 1 to 100 status codes")
	}
	if h.Host != "" && (len(h.Host) > maxShortString || !hostHeaderRE.MatchString(h.Host)) {
		add("healthCheck.host: %q must be a host name or address, optionally with a port", h.Host)
	}
	for _, s := range h.ExpectedStatuses {
		if s < 100 || s > 599 {
			add("healthCheck.expectedStatuses: %d is not an HTTP status (100-599)", s)
		}
	}
	o := c.Overload
	if o.Status < 200 || o.Status > 599 {
		add("overload.status: %d must be an HTTP status between 200 and 599", o.Status)
	}
	if o.RetryAfterSeconds < 0 || o.RetryAfterSeconds > 86400 {
		add("overload.retryAfterSeconds: %d must be between 0 and 86400", o.RetryAfterSeconds)
	}
	if o.ReturnURL != "" {
		u, err := url.Parse(o.ReturnURL)
		if err != nil || len(o.ReturnURL) > 2048 || strings.ContainsAny(o.ReturnURL, " \t\r\n") ||
			(u.Scheme != "http" && u.Scheme != "https") || u.Host == "" {
			add("overload.returnUrl: %q must be an absolute http or https URL", o.ReturnURL)
		}
	}
	if t := c.Timeouts.Request; t < 0 || t.D() > 24*time.Hour {
		add("timeouts.request: %s must be between 0s (no limit) and 24h", t.D())
	}
	if t := c.Timeouts.Idle; t.D() < time.Second || t.D() > 24*time.Hour {
		add("timeouts.idle: %s must be between 1s and 24h", t.D())
	}
	if c.SlowStart < 0 || c.SlowStart.D() > time.Hour {
		add("slowStart: %s must be between 0s and 1h", c.SlowStart.D())
	}
	return errors.Join(errs...)
}

// Validate checks every field of the instance. Addresses must be IP literals: Envoy's EDS
// does not resolve host names, so the agent resolves them before it registers.
func (in *Instance) Validate() error {
	var errs []error
	add := func(format string, a ...any) { errs = append(errs, fmt.Errorf(format, a...)) }

	if err := ValidateInstanceID(in.ID); err != nil {
		errs = append(errs, err)
	}
	ip, err := netip.ParseAddr(in.Address)
	switch {
	case err != nil:
		add("address: %q is not an IP address (the agent resolves host names before it registers)", in.Address)
	case ip.Zone() != "":
		add("address: %q has an IPv6 zone, which Envoy cannot route to", in.Address)
	default:
		if why := unroutable(ip); why != "" {
			add("address: %s is %s, not an instance's address", in.Address, why)
		}
	}
	if in.Port < 1 || in.Port > 65535 {
		add("port: %d must be between 1 and 65535", in.Port)
	}
	if err := ValidateZone(in.Zone); err != nil {
		add("zone: %v", err)
	}
	for _, err := range joined(ValidateLabels(in.Labels)) {
		add("labels: %v", err)
	}
	if err := in.Thresholds.Validate(func(field string) string { return "thresholds." + field }); err != nil {
		errs = append(errs, err)
	}
	l := in.Load
	if l.Sessions < 0 {
		add("load.sessions: %d must be 0 or more", l.Sessions)
	}
	if !inRange(l.CPU, 0, 100) {
		add("load.cpu: %g must be between 0 and 100", l.CPU)
	}
	if !inRange(l.Memory, 0, 100) {
		add("load.memory: %g must be between 0 and 100", l.Memory)
	}
	if !inRange(l.MemoryMB, 0, 1<<30) {
		add("load.memoryMB: %g must be 0 or more", l.MemoryMB)
	}
	switch in.State {
	case StateAvailable, StateFull, StateDraining, StateUnhealthy:
	default:
		add("state: %q is not one of available, full, draining, unhealthy", in.State)
	}
	if in.Leaving && in.State != StateDraining {
		// An agent leaves only after its drain: a leaving instance must take no new session.
		add("leaving: set with state %q; only a draining instance leaves", in.State)
	}
	if in.ClaimSince < 0 {
		add("claimSince: %d must be 0 or more", in.ClaimSince)
	}
	if len(in.Reason) > MaxReason {
		add("reason: over %d characters", MaxReason)
	}
	if len(in.Agent.Version) > 64 {
		add("agent.version: over 64 characters")
	}
	if m := in.Agent.Metrics; m != "" {
		if ap, err := netip.ParseAddrPort(m); err != nil || ap.Port() == 0 {
			add("agent.metrics: %.80q must be ip:port", m)
		}
	}
	if len(in.Agent.Host) > 255 || !utf8.ValidString(in.Agent.Host) {
		add("agent.host: over 255 bytes or not UTF-8")
	}
	if in.Agent.PID < 0 {
		add("agent.pid: %d must be 0 or more", in.Agent.PID)
	}
	// Decoding normalizes times to UTC; a time whose UTC year leaves 1-9999 could not be encoded.
	if y := in.UpdatedAt.UTC().Year(); y < 1 || y > 9999 {
		add("updatedAt: %s is outside years 1-9999 in UTC", in.UpdatedAt.Format(time.RFC3339))
	}
	if y := in.Agent.StartedAt.UTC().Year(); y < 1 || y > 9999 {
		add("agent.startedAt: %s is outside years 1-9999 in UTC", in.Agent.StartedAt.Format(time.RFC3339))
	}
	return errors.Join(errs...)
}

// ValidateZone checks an instance's zone.
func ValidateZone(zone string) error {
	if len(zone) > 64 || strings.ContainsAny(zone, " \t\r\n/") {
		return fmt.Errorf("%q must be at most 64 characters without spaces or '/'", zone)
	}
	return nil
}

// ValidateLabels checks an instance's labels, which drains select instances by.
func ValidateLabels(labels map[string]string) error {
	var errs []error
	if len(labels) > MaxLabels {
		errs = append(errs, fmt.Errorf("%d entries, at most %d", len(labels), MaxLabels))
	}
	for k, v := range labels {
		if len(k) > maxLabelKey || !labelKeyRE.MatchString(k) {
			errs = append(errs, fmt.Errorf("key %q must be 1-63 letters, digits, '.', '_', '/' or '-'", k))
		}
		if len(v) > maxLabelValue {
			errs = append(errs, fmt.Errorf("value of %q is over %d characters", k, maxLabelValue))
		}
	}
	return errors.Join(errs...)
}

// Validate checks the thresholds; each error is reported under name(field), field being
// the JSON name (maxSessions, maxCPU, maxMemory, maxMemoryMB), so that the agent can name
// its flags.
func (t Thresholds) Validate(name func(field string) string) error {
	var errs []error
	add := func(field, format string, a ...any) {
		errs = append(errs, fmt.Errorf("%s: %s", name(field), fmt.Sprintf(format, a...)))
	}
	if t.MaxSessions < 0 {
		add("maxSessions", "%d must be 0 (unlimited) or more", t.MaxSessions)
	}
	if !inRange(t.MaxCPU, 0, 100) {
		add("maxCPU", "%g must be between 0 (unlimited) and 100", t.MaxCPU)
	}
	if !inRange(t.MaxMemory, 0, 100) {
		add("maxMemory", "%g must be between 0 (unlimited) and 100", t.MaxMemory)
	}
	if !inRange(t.MaxMemoryMB, 0, 1<<30) {
		add("maxMemoryMB", "%g must be 0 (unlimited) or more", t.MaxMemoryMB)
	}
	return errors.Join(errs...)
}

// joined returns the errors err joins: none for nil, err alone when it joins nothing.
func joined(err error) []error {
	if j, ok := err.(interface{ Unwrap() []error }); ok {
		return j.Unwrap()
	}
	if err == nil {
		return nil
	}
	return []error{err}
}

// Cloud metadata services outside 169.254.0.0/16 (link-local, refused as a whole): an
// instance there would let a holder of an agent's credentials read the gateway host's cloud
// credentials through Envoy. Single addresses, not their ranges, which are ordinary private
// space elsewhere.
var metadataAddrs = map[netip.Addr]string{
	netip.MustParseAddr("fd00:ec2::254"):   "AWS's instance metadata service over IPv6",
	netip.MustParseAddr("fd20:ce::254"):    "Google Cloud's metadata server over IPv6",
	netip.MustParseAddr("100.100.100.200"): "Alibaba Cloud's metadata service",
}

// NAT64 prefixes (RFC 6052's well-known 64:ff9b::/96 and RFC 8215's local-use
// 64:ff9b:1::/48, as deployed with the /96 layout): a NAT64 gateway on the path turns such
// an address into the IPv4 address in its last 32 bits.
var nat64 = []netip.Prefix{netip.MustParsePrefix("64:ff9b::/96"), netip.MustParsePrefix("64:ff9b:1::/48")}

// embeddedV4 returns the IPv4 address an IPv6 address carries, and whether it carries one:
// IPv4-mapped (::ffff:0:0/96), IPv4-compatible (::/96, deprecated but still routed by some
// stacks) and NAT64. Each is judged as the address it reaches as well as itself.
func embeddedV4(ip netip.Addr) (netip.Addr, bool) {
	if ip.Is4() || ip.Is4In6() {
		return ip.Unmap(), true
	}
	b := ip.As16()
	last := netip.AddrFrom4([4]byte{b[12], b[13], b[14], b[15]})
	if [12]byte(b[:12]) == ([12]byte{}) {
		return last, true
	}
	if slices.ContainsFunc(nat64, func(p netip.Prefix) bool { return p.Contains(ip) }) {
		return last, true
	}
	return netip.Addr{}, false
}

// forms returns ip itself (unmapped) and, when it carries one, the IPv4 address it carries.
func forms(ip netip.Addr) []netip.Addr {
	out := []netip.Addr{ip.Unmap()}
	if v4, ok := embeddedV4(ip); ok && v4 != out[0] {
		out = append(out, v4)
	}
	return out
}

// unroutable says why Envoy must never be sent to ip (IPv4-mapped, IPv4-compatible and NAT64
// addresses are also judged as the IPv4 address they carry, so ::ffff:0.0.0.0 is unspecified
// and 64:ff9b::169.254.169.254 link-local), or "" when it may. Loopback is allowed here and
// refused by the watcher unless the control plane allows it.
func unroutable(ip netip.Addr) string {
	for _, a := range forms(ip) {
		if why := unroutable1(a); why != "" {
			return why
		}
	}
	return ""
}

func unroutable1(ip netip.Addr) string {
	switch {
	case ip.IsUnspecified():
		return "unspecified"
	case ip.IsMulticast():
		return "multicast"
	case ip.IsLinkLocalUnicast():
		return "link-local (169.254.0.0/16 holds cloud metadata services)"
	case ip == netip.AddrFrom4([4]byte{255, 255, 255, 255}):
		return "the broadcast address"
	}
	if what, ok := metadataAddrs[ip]; ok {
		return what + " (a cloud metadata address)"
	}
	return ""
}

// IsLoopback reports whether addr is a loopback IP address, or one that carries a loopback
// IPv4 address (IPv4-mapped, IPv4-compatible, NAT64).
func IsLoopback(addr string) bool {
	ip, err := netip.ParseAddr(addr)
	if err != nil {
		return false
	}
	return slices.ContainsFunc(forms(ip), netip.Addr.IsLoopback)
}

// DeniedBy returns the first of cidrs that holds addr, or the IPv4 address it carries
// (IPv4-mapped, IPv4-compatible, NAT64), and whether one does.
func DeniedBy(addr string, cidrs []netip.Prefix) (netip.Prefix, bool) {
	ip, err := netip.ParseAddr(addr)
	if err != nil || len(cidrs) == 0 {
		return netip.Prefix{}, false
	}
	ip = ip.WithZone("")
	for _, a := range forms(ip) {
		for _, p := range cidrs {
			if p.Contains(a) {
				return p, true
			}
		}
	}
	return netip.Prefix{}, false
}

// inRange reports lo <= v <= hi, false for NaN.
func inRange(v, lo, hi float64) bool { return v >= lo && v <= hi }
