package sim

import (
	"context"
	"encoding/base64"
	"errors"
	"fmt"
	"hash/fnv"
	"io"
	"math/rand/v2"
	"net/http"
	"regexp"
	"slices"
	"sort"
	"strconv"
	"strings"
	"sync"

	accesslogv3 "github.com/envoyproxy/go-control-plane/envoy/config/accesslog/v3"
	clusterv3 "github.com/envoyproxy/go-control-plane/envoy/config/cluster/v3"
	corev3 "github.com/envoyproxy/go-control-plane/envoy/config/core/v3"
	endpointv3 "github.com/envoyproxy/go-control-plane/envoy/config/endpoint/v3"
	listenerv3 "github.com/envoyproxy/go-control-plane/envoy/config/listener/v3"
	routev3 "github.com/envoyproxy/go-control-plane/envoy/config/route/v3"
	matchingv3 "github.com/envoyproxy/go-control-plane/envoy/extensions/common/matching/v3"
	headermutationv3 "github.com/envoyproxy/go-control-plane/envoy/extensions/filters/http/header_mutation/v3"
	statefulsessionv3 "github.com/envoyproxy/go-control-plane/envoy/extensions/filters/http/stateful_session/v3"
	hcmv3 "github.com/envoyproxy/go-control-plane/envoy/extensions/filters/network/http_connection_manager/v3"
	cookiev3 "github.com/envoyproxy/go-control-plane/envoy/extensions/http/stateful_session/cookie/v3"
	matcherv3 "github.com/envoyproxy/go-control-plane/envoy/type/matcher/v3"
	resourcev3 "github.com/envoyproxy/go-control-plane/pkg/resource/v3"
	"google.golang.org/protobuf/encoding/protowire"
	"google.golang.org/protobuf/proto"
)

// This file is the simulation's model of how one Envoy routes one request with the
// configuration it holds. Each function models one rule of docs/envoy-rules.md and names its
// row; a configuration using anything the model does not know is an error (errUnmodelled),
// never a guess, so that a new setting is modelled here before the simulation relies on it.

var errUnmodelled = errors.New("not modelled")

// tables is what an Envoy holds, decoded for routing.
type tables struct {
	hcm      *hcmv3.HttpConnectionManager
	session  bool   // the listener has the stateful-session filter
	skipOn   string // a response :status on which the filter's encode path is skipped (row 30)
	routes   *routev3.RouteConfiguration
	clusters map[string]*clusterv3.Cluster
	hosts    map[string][]host // cluster -> hosts of its assignment, any health
}

type host struct {
	addr   string
	health corev3.HealthStatus
	weight uint32
}

// decodeTables reads the resources an xDS client holds into tables.
func decodeTables(res map[string]map[string]proto.Message) (*tables, error) {
	t := &tables{clusters: map[string]*clusterv3.Cluster{}, hosts: map[string][]host{}}
	for _, m := range res[resourcev3.ListenerType] {
		l, ok := m.(*listenerv3.Listener)
		if !ok {
			continue
		}
		for _, fc := range l.GetFilterChains() {
			for _, f := range fc.GetFilters() {
				h := &hcmv3.HttpConnectionManager{}
				if err := f.GetTypedConfig().UnmarshalTo(h); err != nil {
					return nil, fmt.Errorf("listener %s: %w", l.GetName(), err)
				}
				t.hcm = h
			}
		}
	}
	if t.hcm != nil {
		for _, f := range t.hcm.GetHttpFilters() {
			switch f.GetTypedConfig().GetTypeUrl() {
			case "type.googleapis.com/envoy.extensions.filters.http.stateful_session.v3.StatefulSession":
				t.session = true
			case "type.googleapis.com/envoy.extensions.common.matching.v3.ExtensionWithMatcher":
				status, err := skippedOnStatus(f)
				if err != nil {
					return nil, err
				}
				t.session, t.skipOn = true, status
			}
		}
	}
	for _, m := range res[resourcev3.RouteType] {
		if rc, ok := m.(*routev3.RouteConfiguration); ok {
			t.routes = rc
		}
	}
	for name, m := range res[resourcev3.ClusterType] {
		if c, ok := m.(*clusterv3.Cluster); ok {
			if p := c.GetLbPolicy(); p == clusterv3.Cluster_CLUSTER_PROVIDED || p == clusterv3.Cluster_LOAD_BALANCING_POLICY_CONFIG {
				return nil, fmt.Errorf("cluster %s: lb policy %s: %w", name, p, errUnmodelled)
			}
			t.clusters[name] = c
		}
	}
	for name, m := range res[resourcev3.EndpointType] {
		cla, ok := m.(*endpointv3.ClusterLoadAssignment)
		if !ok {
			continue
		}
		var hs []host
		for _, le := range cla.GetEndpoints() {
			for _, e := range le.GetLbEndpoints() {
				sa := e.GetEndpoint().GetAddress().GetSocketAddress()
				hs = append(hs, host{addr: fmt.Sprintf("%s:%d", sa.GetAddress(), sa.GetPortValue()),
					health: e.GetHealthStatus(), weight: max(e.GetLoadBalancingWeight().GetValue(), 1)})
			}
		}
		t.hosts[name] = hs
	}
	return t, nil
}

// skippedOnStatus reads the match_delegate wrapper around the stateful-session filter (row
// 30): a matcher on the response's :status whose match skips the filter. In decodeHeaders the
// response is not there, the match is incomplete and the filter runs (the session host is
// still overridden); in encodeHeaders a matching status skips the filter's encode path. Any
// other wrapper or matcher is not modelled.
func skippedOnStatus(f *hcmv3.HttpFilter) (string, error) {
	ew := &matchingv3.ExtensionWithMatcher{}
	if err := f.GetTypedConfig().UnmarshalTo(ew); err != nil {
		return "", fmt.Errorf("http filter %s: %w", f.GetName(), err)
	}
	if ew.GetExtensionConfig().GetTypedConfig().GetTypeUrl() != "type.googleapis.com/envoy.extensions.filters.http.stateful_session.v3.StatefulSession" {
		return "", fmt.Errorf("http filter %s: match_delegate around %s: %w", f.GetName(), ew.GetExtensionConfig().GetTypedConfig().GetTypeUrl(), errUnmodelled)
	}
	ms := ew.GetXdsMatcher().GetMatcherList().GetMatchers()
	if len(ms) != 1 {
		return "", fmt.Errorf("http filter %s: matcher %v: %w", f.GetName(), ew.GetXdsMatcher(), errUnmodelled)
	}
	sp := ms[0].GetPredicate().GetSinglePredicate()
	in := &matcherv3.HttpResponseHeaderMatchInput{}
	if err := sp.GetInput().GetTypedConfig().UnmarshalTo(in); err != nil || in.GetHeaderName() != ":status" ||
		sp.GetValueMatch().GetExact() == "" ||
		ms[0].GetOnMatch().GetAction().GetTypedConfig().GetTypeUrl() != "type.googleapis.com/envoy.extensions.filters.common.matcher.action.v3.SkipFilter" {
		return "", fmt.Errorf("http filter %s: matcher %v: %w", f.GetName(), ms[0], errUnmodelled)
	}
	return sp.GetValueMatch().GetExact(), nil
}

// request is what Envoy reads of an HTTP request.
type request struct {
	method, host, path string
	header             http.Header
	sourceIP           string
}

// response is what the Envoy answered, with how it got there.
type response struct {
	status   int
	header   http.Header
	upstream string   // the host that answered ("" for Envoy's own reply)
	flag     string   // response flag of a local reply: UH (no healthy upstream), UF (connect failure)
	tried    []string // every host tried, in order
	route    string
	cluster  string
	override string // what became of the session cookie's host (see overrideHost)
	err      error  // why the last connection failed (UF)
}

// route handles one request as Envoy would, sending it to the chosen hosts over client.
func (t *tables) route(ctx context.Context, client *http.Client, rng *rand.Rand, req request) (response, error) {
	if t.hcm == nil || t.routes == nil {
		return response{}, errors.New("no listener or routes yet")
	}
	vh := t.virtualHost(req.host)
	if vh == nil {
		return response{status: http.StatusNotFound, header: http.Header{}}, nil
	}
	r, err := firstRoute(vh, req)
	if err != nil {
		return response{}, err
	}
	if r == nil {
		return response{status: http.StatusNotFound, header: http.Header{}}, nil
	}
	if dr := r.GetDirectResponse(); dr != nil {
		return response{status: int(dr.GetStatus()), header: http.Header{}, route: r.GetName()}, nil
	}
	if rd := r.GetRedirect(); rd != nil {
		return response{status: http.StatusFound, header: http.Header{}, route: r.GetName()}, nil
	}
	ra := r.GetRoute()
	if ra == nil {
		return response{}, fmt.Errorf("route %s: action %T: %w", r.GetName(), r.GetAction(), errUnmodelled)
	}
	hdr := req.header.Clone()
	if err := applyRequestMutations(r, hdr); err != nil {
		return response{}, err
	}
	cl := t.clusters[ra.GetCluster()]
	if cl == nil {
		return response{}, fmt.Errorf("route %s: cluster %s unknown", r.GetName(), ra.GetCluster())
	}
	sess, err := t.sessionConfig(r)
	if err != nil {
		return response{}, err
	}
	cookieAddr := ""
	if sess != nil {
		cookieAddr = parseSessionCookie(hdr, sess.cookie.GetCookie().GetName())
	}
	hosts := t.hosts[ra.GetCluster()]
	resp := response{route: r.GetName(), cluster: ra.GetCluster(), override: "no session cookie"}
	attempts := 1
	if rp := ra.GetRetryPolicy(); rp != nil {
		attempts += int(rp.GetNumRetries().GetValue())
	}
	for attempt := 0; attempt < attempts; attempt++ {
		var h string
		if attempt == 0 {
			var strictNone bool
			h, strictNone, resp.override = overrideHost(cl, hosts, cookieAddr, sess)
			if h == "" && strictNone {
				return t.localReply(resp, "UH", hdr), nil
			}
		}
		if h == "" {
			h = t.choose(cl, ra, hosts, resp.tried, req.sourceIP, rng)
		}
		if h == "" {
			return t.localReply(resp, "UH", hdr), nil
		}
		resp.tried = append(resp.tried, h)
		status, rh, err := forward(ctx, client, h, req.method, req.path, hdr)
		if err != nil {
			if ctx.Err() != nil {
				return response{}, ctx.Err()
			}
			if retriable(ra.GetRetryPolicy(), 0) && attempt+1 < attempts {
				continue
			}
			// Row 30: a local reply after host selection still has that upstream host, so
			// the session filter's encode path sees it.
			resp = t.localReply(resp, "UF", hdr)
			resp.err = err
			if sess != nil {
				t.encodeSession(&resp, sess, cookieAddr, h)
			}
			return resp, nil
		}
		resp.status, resp.header, resp.upstream = status, rh, h
		if retriable(ra.GetRetryPolicy(), status) && attempt+1 < attempts {
			continue
		}
		break
	}
	if sess != nil {
		t.encodeSession(&resp, sess, cookieAddr, resp.upstream)
	}
	return resp, nil
}

// virtualHost picks the virtual host for a Host header: an exact domain first, then the
// longest suffix wildcard, then "*" (config_impl.cc, RouteMatcher::findVirtualHost). The port
// is ignored (ignore_port_in_host_matching, which the translation always sets).
func (t *tables) virtualHost(hostHeader string) *routev3.VirtualHost {
	h := strings.ToLower(hostHeader)
	if i := strings.LastIndexByte(h, ':'); i >= 0 && !strings.Contains(h[i:], "]") {
		h = h[:i]
	}
	var star, best *routev3.VirtualHost
	bestLen := -1
	for _, vh := range t.routes.GetVirtualHosts() {
		for _, d := range vh.GetDomains() {
			switch {
			case d == h:
				return vh
			case d == "*":
				star = vh
			case strings.HasPrefix(d, "*") && strings.HasSuffix(h, d[1:]) && len(d) > bestLen:
				best, bestLen = vh, len(d)
			}
		}
	}
	if best != nil {
		return best
	}
	return star
}

// firstRoute is row 24: the first route whose match holds, in configuration order.
func firstRoute(vh *routev3.VirtualHost, req request) (*routev3.Route, error) {
	for _, r := range vh.GetRoutes() {
		ok, err := routeMatches(r.GetMatch(), req)
		if err != nil {
			return nil, fmt.Errorf("route %s: %w", r.GetName(), err)
		}
		if ok {
			return r, nil
		}
	}
	return nil, nil
}

var regexCache sync.Map // string -> *regexp.Regexp

func routeMatches(m *routev3.RouteMatch, req request) (bool, error) {
	switch p := m.GetPathSpecifier().(type) {
	case *routev3.RouteMatch_Prefix:
		if !strings.HasPrefix(req.path, p.Prefix) {
			return false, nil
		}
	case *routev3.RouteMatch_PathSeparatedPrefix:
		if req.path != p.PathSeparatedPrefix && !strings.HasPrefix(req.path, p.PathSeparatedPrefix+"/") {
			return false, nil
		}
	default:
		return false, fmt.Errorf("path specifier %T: %w", p, errUnmodelled)
	}
	for _, h := range m.GetHeaders() {
		// Envoy joins repeated headers with ","; the cookie header with "; " (HeaderUtility).
		vals := req.header.Values(h.GetName())
		present := len(vals) > 0
		sep := ","
		if strings.EqualFold(h.GetName(), "cookie") {
			sep = "; "
		}
		v := strings.Join(vals, sep)
		var ok bool
		switch {
		case h.GetPresentMatch():
			ok = present
		case h.GetStringMatch().GetSafeRegex() != nil:
			re := h.GetStringMatch().GetSafeRegex().GetRegex()
			c, found := regexCache.Load(re)
			if !found {
				rx, err := regexp.Compile(`^(?:` + re + `)$`)
				if err != nil {
					return false, fmt.Errorf("regex %q: %w", re, err)
				}
				c, _ = regexCache.LoadOrStore(re, rx)
			}
			ok = present && c.(*regexp.Regexp).MatchString(v)
		case h.GetStringMatch().GetExact() != "":
			sm := h.GetStringMatch()
			ok = present && (v == sm.GetExact() || sm.GetIgnoreCase() && strings.EqualFold(v, sm.GetExact()))
		default:
			return false, fmt.Errorf("header matcher %v: %w", h, errUnmodelled)
		}
		if ok == h.GetInvertMatch() {
			return false, nil
		}
	}
	return true, nil
}

// applyRequestMutations applies the route's header_mutation request mutations (row 20's
// x-tether-* reply headers come from them).
func applyRequestMutations(r *routev3.Route, hdr http.Header) error {
	a := r.GetTypedPerFilterConfig()["envoy.filters.http.header_mutation"]
	if a == nil {
		return nil
	}
	pr := &headermutationv3.HeaderMutationPerRoute{}
	if err := a.UnmarshalTo(pr); err != nil {
		return fmt.Errorf("route %s: header mutation: %w", r.GetName(), err)
	}
	for _, m := range pr.GetMutations().GetRequestMutations() {
		switch {
		case m.GetRemove() != "":
			hdr.Del(m.GetRemove())
		case m.GetAppend() != nil:
			hv := m.GetAppend().GetHeader()
			hdr.Set(hv.GetKey(), strings.ReplaceAll(hv.GetValue(), "%%", "%"))
		default:
			return fmt.Errorf("route %s: header mutation %v: %w", r.GetName(), m, errUnmodelled)
		}
	}
	return nil
}

// sessionConfig is the route's stateful-session configuration (StatefulSessionPerRoute), nil
// when the route has none or disables it. The listener's filter has no default of its own.
func (t *tables) sessionConfig(r *routev3.Route) (*sessionCfg, error) {
	if !t.session {
		return nil, nil
	}
	a := r.GetTypedPerFilterConfig()["envoy.filters.http.stateful_session"]
	if a == nil {
		return nil, nil
	}
	pr := &statefulsessionv3.StatefulSessionPerRoute{}
	if err := a.UnmarshalTo(pr); err != nil {
		return nil, fmt.Errorf("route %s: stateful session: %w", r.GetName(), err)
	}
	if pr.GetDisabled() {
		return nil, nil
	}
	ss := pr.GetStatefulSession().GetSessionState()
	if ss.GetTypedConfig().GetTypeUrl() != "type.googleapis.com/envoy.extensions.http.stateful_session.cookie.v3.CookieBasedSessionState" {
		// Header-based sessions are not among the simulation's users.
		return nil, fmt.Errorf("route %s: session state %s: %w", r.GetName(), ss.GetName(), errUnmodelled)
	}
	c := &cookiev3.CookieBasedSessionState{}
	if err := ss.GetTypedConfig().UnmarshalTo(c); err != nil {
		return nil, err
	}
	return &sessionCfg{cookie: c, strict: pr.GetStatefulSession().GetStrict()}, nil
}

// sessionCfg is a route's cookie-based session: the cookie and whether it is strict.
type sessionCfg struct {
	cookie *cookiev3.CookieBasedSessionState
	strict bool
}

// parseSessionCookie is rows 9 and 10: the cookie's value, unquoted, is base64 of an
// envoy.Cookie message (address, expires), or of a bare address (cookie.cc, parseAddress).
// Cookies are split on ";" (Utility::parseCookieValue).
func parseSessionCookie(hdr http.Header, name string) string {
	for _, line := range hdr.Values("Cookie") {
		for _, part := range strings.Split(line, ";") {
			k, v, ok := strings.Cut(strings.TrimSpace(part), "=")
			if !ok || k != name {
				continue
			}
			v = strings.Trim(v, `"`)
			raw, err := base64.StdEncoding.DecodeString(v)
			if err != nil {
				return ""
			}
			if addr, ok := decodeCookieProto(raw); ok {
				return addr
			}
			return string(raw)
		}
	}
	return ""
}

func decodeCookieProto(b []byte) (string, bool) {
	addr := ""
	for len(b) > 0 {
		num, typ, n := protowire.ConsumeTag(b)
		if n < 0 {
			return "", false
		}
		b = b[n:]
		if num == 1 && typ == protowire.BytesType {
			v, n := protowire.ConsumeBytes(b)
			if n < 0 {
				return "", false
			}
			addr, b = string(v), b[n:]
			continue
		}
		n = protowire.ConsumeFieldValue(num, typ, b)
		if n < 0 {
			return "", false
		}
		b = b[n:]
	}
	return addr, addr != ""
}

// encodeCookieValue is how Envoy writes the cookie (cookie.cc, onUpdate): base64 of an
// envoy.Cookie with the address (and no expiry: cookieTTL 0).
func encodeCookieValue(addr string) string {
	b := protowire.AppendTag(nil, 1, protowire.BytesType)
	b = protowire.AppendString(b, addr)
	return base64.StdEncoding.EncodeToString(b)
}

// overrideHost is rows 3, 4, 5 and 27: the cookie's host is used when the Envoy knows it (the
// cross-priority host map holds every host of the assignment, any health) and its health is in
// override_host_status; otherwise, strict, no host is chosen (strictNone), and non-strict the
// load balancer runs.
func overrideHost(cl *clusterv3.Cluster, hosts []host, addr string, sess *sessionCfg) (h string, strictNone bool, why string) {
	if addr == "" {
		return "", false, "no session cookie"
	}
	why = "host not in the assignment"
	for _, hh := range hosts {
		if hh.addr != addr {
			continue
		}
		if slices.Contains(cl.GetCommonLbConfig().GetOverrideHostStatus().GetStatuses(), hh.health) {
			return hh.addr, false, "used"
		}
		why = "host " + hh.health.String() + ", not in override_host_status"
		break
	}
	return "", sess != nil && sess.strict, why
}

// choose is the load balancer. Rows 7 and 8: only HEALTHY hosts take new requests
// (healthy_panic_threshold 0: no panic routing). Row 6: a retry never uses the session
// override, and the previous_hosts predicate avoids the hosts tried. Row 12 and issue 25's
// ring finding: ring_hash and maglev build their table from healthy hosts only, so a host
// leaving HEALTHY moves the users hashed to it. Round robin, least request and random are
// modelled as a weighted random pick (row 14: random ignores weights).
func (t *tables) choose(cl *clusterv3.Cluster, ra *routev3.RouteAction, hosts []host, tried []string, source string, rng *rand.Rand) string {
	var healthy []host
	for _, h := range hosts {
		if h.health == corev3.HealthStatus_HEALTHY || h.health == corev3.HealthStatus_UNKNOWN {
			healthy = append(healthy, h)
		}
	}
	if len(healthy) == 0 {
		return ""
	}
	if pt := cl.GetCommonLbConfig().GetHealthyPanicThreshold(); pt == nil || pt.GetValue() != 0 {
		// Panic routing would send new sessions to draining hosts: Tether always sets 0.
		return ""
	}
	fresh := healthy[:0:0]
	for _, h := range healthy {
		if !slices.Contains(tried, h.addr) {
			fresh = append(fresh, h)
		}
	}
	if len(fresh) > 0 {
		healthy = fresh
	}
	switch cl.GetLbPolicy() {
	case clusterv3.Cluster_RING_HASH, clusterv3.Cluster_MAGLEV:
		if len(ra.GetHashPolicy()) == 0 || source == "" {
			return healthy[rng.IntN(len(healthy))].addr
		}
		// Rendezvous hashing keeps the property the ring has: a host leaving moves only its
		// own users, and only healthy hosts are in the table.
		best, bestH := "", uint64(0)
		for _, h := range healthy {
			f := fnv.New64a()
			_, _ = io.WriteString(f, source+"|"+h.addr)
			if v := f.Sum64(); best == "" || v > bestH {
				best, bestH = h.addr, v
			}
		}
		return best
	case clusterv3.Cluster_RANDOM:
		return healthy[rng.IntN(len(healthy))].addr
	case clusterv3.Cluster_ROUND_ROBIN, clusterv3.Cluster_LEAST_REQUEST:
	case clusterv3.Cluster_CLUSTER_PROVIDED, clusterv3.Cluster_LOAD_BALANCING_POLICY_CONFIG:
		return "" // not modelled: decodeTables refuses such clusters
	}
	var total uint32
	for _, h := range healthy {
		total += h.weight
	}
	n := rng.Uint32N(total)
	for _, h := range healthy {
		if n < h.weight {
			return h.addr
		}
		n -= h.weight
	}
	return healthy[len(healthy)-1].addr
}

// retriable is the route's retry policy (row 6): 503 and connect failures (status 0) are
// retried on another host when the route has a policy.
func retriable(rp *routev3.RetryPolicy, status int) bool {
	if rp == nil {
		return false
	}
	on := rp.GetRetryOn()
	if status == 0 {
		return strings.Contains(on, "connect-failure") || strings.Contains(on, "reset")
	}
	if strings.Contains(on, "5xx") && status >= 500 {
		return true
	}
	return strings.Contains(on, "retriable-status-codes") && slices.Contains(rp.GetRetriableStatusCodes(), uint32(status))
}

// encodeSession is the stateful-session filter's encode path (StatefulSession::encodeHeaders,
// stateful_session.cc; cookie.cc onUpdate): whenever the response came from an upstream host
// (host), whatever its status, and that host is not the one the request's cookie named, the
// response sets the cookie to that host. After retries the host is the last attempt's. A
// local reply has no upstream host and sets nothing.
func (t *tables) encodeSession(resp *response, sess *sessionCfg, cookieAddr, host string) {
	if host == "" || host == cookieAddr {
		return
	}
	if t.skipOn != "" && t.skipOn == strconv.Itoa(resp.status) {
		return
	}
	c := sess.cookie.GetCookie()
	v := c.GetName() + `="` + encodeCookieValue(host) + `"`
	if c.GetPath() != "" {
		v += "; Path=" + c.GetPath()
	}
	for _, a := range c.GetAttributes() {
		v += "; " + a.GetName()
		if a.GetValue() != "" {
			v += "=" + a.GetValue()
		}
	}
	v += "; HttpOnly"
	resp.header.Add("Set-Cookie", v)
}

// localReply is Envoy's own answer (503 with the flag), rewritten by the first local reply
// mapper whose filter holds (row 20), with its headers (row 22: an empty formatted value is
// not added).
func (t *tables) localReply(resp response, flag string, hdr http.Header) response {
	resp.status, resp.flag, resp.upstream = http.StatusServiceUnavailable, flag, ""
	resp.header = http.Header{}
	for _, m := range t.hcm.GetLocalReplyConfig().GetMappers() {
		ok, err := filterHolds(m.GetFilter(), flag, hdr)
		if err != nil || !ok {
			continue
		}
		if sc := m.GetStatusCode(); sc != nil {
			resp.status = int(sc.GetValue())
		}
		for _, h := range m.GetHeadersToAdd() {
			v := h.GetHeader().GetValue()
			if strings.HasPrefix(v, "%REQ(") && strings.HasSuffix(v, ")%") {
				v = hdr.Get(v[len("%REQ(") : len(v)-2])
			}
			if v != "" {
				resp.header.Set(h.GetHeader().GetKey(), v)
			}
		}
		resp.header.Set("X-Sim-Reply", hdr.Get("x-tether-reply"))
		break
	}
	return resp
}

func filterHolds(f *accesslogv3.AccessLogFilter, flag string, hdr http.Header) (bool, error) {
	switch {
	case f.GetAndFilter() != nil:
		for _, sub := range f.GetAndFilter().GetFilters() {
			ok, err := filterHolds(sub, flag, hdr)
			if err != nil || !ok {
				return false, err
			}
		}
		return true, nil
	case f.GetResponseFlagFilter() != nil:
		return slices.Contains(f.GetResponseFlagFilter().GetFlags(), flag), nil
	case f.GetHeaderFilter() != nil:
		hm := f.GetHeaderFilter().GetHeader()
		v, present := hdr.Get(hm.GetName()), len(hdr.Values(hm.GetName())) > 0
		switch {
		case hm.GetPresentMatch():
			return present, nil
		case hm.GetStringMatch().GetExact() != "":
			return present && v == hm.GetStringMatch().GetExact(), nil
		}
	}
	return false, fmt.Errorf("access log filter %v: %w", f, errUnmodelled)
}

// forward sends the request to one host.
func forward(ctx context.Context, client *http.Client, addr, method, path string, hdr http.Header) (int, http.Header, error) {
	req, err := http.NewRequestWithContext(ctx, method, "http://"+addr+path, nil)
	if err != nil {
		return 0, nil, err
	}
	req.Header = hdr.Clone()
	resp, err := client.Do(req)
	if err != nil {
		return 0, nil, err
	}
	_, _ = io.Copy(io.Discard, io.LimitReader(resp.Body, 1<<16))
	_ = resp.Body.Close()
	return resp.StatusCode, resp.Header, nil
}

// sortedHosts lists a cluster's hosts with their health, for traces and convergence checks.
func (t *tables) sortedHosts(cluster string) []string {
	var out []string
	for _, h := range t.hosts[cluster] {
		out = append(out, h.addr+"="+h.health.String())
	}
	sort.Strings(out)
	return out
}
