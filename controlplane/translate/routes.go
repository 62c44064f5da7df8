package translate

import (
	"regexp"
	"strconv"
	"strings"
	"time"

	mutationv3 "github.com/envoyproxy/go-control-plane/envoy/config/common/mutation_rules/v3"
	corev3 "github.com/envoyproxy/go-control-plane/envoy/config/core/v3"
	routev3 "github.com/envoyproxy/go-control-plane/envoy/config/route/v3"
	headermutationv3 "github.com/envoyproxy/go-control-plane/envoy/extensions/filters/http/header_mutation/v3"
	statefulsessionv3 "github.com/envoyproxy/go-control-plane/envoy/extensions/filters/http/stateful_session/v3"
	cookiev3 "github.com/envoyproxy/go-control-plane/envoy/extensions/http/stateful_session/cookie/v3"
	headerv3 "github.com/envoyproxy/go-control-plane/envoy/extensions/http/stateful_session/header/v3"
	previoushostsv3 "github.com/envoyproxy/go-control-plane/envoy/extensions/retry/host/previous_hosts/v3"
	httpv3 "github.com/envoyproxy/go-control-plane/envoy/type/http/v3"
	matcherv3 "github.com/envoyproxy/go-control-plane/envoy/type/matcher/v3"
	"google.golang.org/protobuf/types/known/anypb"
	"google.golang.org/protobuf/types/known/durationpb"
	"google.golang.org/protobuf/types/known/wrapperspb"

	"github.com/tetherlb/tether/registry"
)

const (
	// defaultRouteTimeout bounds a non-WebSocket request (Envoy's own default is 15 s).
	defaultRouteTimeout = 60 * time.Second
	// webSocketIdleTimeout replaces the HCM stream_idle_timeout (5 min) on WebSocket routes.
	webSocketIdleTimeout = time.Hour
	// hostSelectionAttempts is host_selection_retry_max_attempts. DESIGN asks for about the
	// number of hosts; a constant keeps the route configuration, which all services share,
	// unchanged when instances come and go (otherwise every registration would resend every
	// route to every Envoy). Host selection is in memory, so a few spare attempts cost nothing.
	hostSelectionAttempts = 10
	// retryOn lists the conditions retried for initial requests; 503 comes through
	// retriable-status-codes.
	retryOn = "connect-failure,refused-stream,reset,retriable-status-codes"
	// overloadBody is the body of the overload reply.
	overloadBody = "No server can take a new session right now. Please retry later.\n"
)

// routes returns the service's routes in match order. With a session marker (cookie,
// header, app-cookie): [WebSocket with marker, WebSocket,] with marker, catch-all; without
// one (source-ip, none): [WebSocket,] catch-all. WebSocket routes exist only when the
// service allows WebSockets. Routes with the marker forward without a retry policy; the
// others retry 503/connect failure/reset on another host, or, when no instance is
// available, answer the overload reply directly.
func routes(svc string, cfg registry.ServiceConfig, available bool, p *packer) []*routev3.Route {
	marker := markerMatcher(cfg.Affinity)
	perFilter := perFilterConfig(svc, cfg.Affinity, p)
	var out []*routev3.Route
	add := func(name string, ws, withMarker bool) {
		r := &routev3.Route{Name: svc + "/" + name, Match: match(cfg.PathPrefix)}
		if ws {
			r.Match.Headers = append(r.Match.Headers, webSocketMatcher())
		}
		if withMarker {
			r.Match.Headers = append(r.Match.Headers, marker)
		}
		if !withMarker && !available {
			setOverload(r, cfg.Overload)
		} else {
			r.Action = &routev3.Route_Route{Route: routeAction(svc, cfg, ws, !withMarker, p)}
			r.TypedPerFilterConfig = perFilter
		}
		out = append(out, r)
	}
	if cfg.WebSocket {
		if marker != nil {
			add("websocket-session", true, true)
		}
		add("websocket", true, false)
	}
	if marker != nil {
		add("session", false, true)
	}
	add("initial", false, false)
	return out
}

// match matches the service's path prefix: "/" and prefixes ending in "/" as plain prefixes,
// others as path-separated prefixes ("/app" matches /app and /app/x, not /apple).
func match(prefix string) *routev3.RouteMatch {
	if strings.HasSuffix(prefix, "/") {
		return &routev3.RouteMatch{PathSpecifier: &routev3.RouteMatch_Prefix{Prefix: prefix}}
	}
	return &routev3.RouteMatch{PathSpecifier: &routev3.RouteMatch_PathSeparatedPrefix{PathSeparatedPrefix: prefix}}
}

func webSocketMatcher() *routev3.HeaderMatcher {
	return &routev3.HeaderMatcher{
		Name: "upgrade",
		HeaderMatchSpecifier: &routev3.HeaderMatcher_StringMatch{StringMatch: &matcherv3.StringMatcher{
			MatchPattern: &matcherv3.StringMatcher_Exact{Exact: "websocket"},
			IgnoreCase:   true,
		}},
	}
}

// markerMatcher matches requests that carry the session marker, nil for modes without one.
// Cookies are matched with a regular expression on the Cookie header (the route-level
// cookie matcher is too recent for the Envoy versions Tether supports); Envoy joins
// repeated headers with ',', so both ';' and ',' separate cookies. An empty value is not
// a session.
func markerMatcher(a registry.Affinity) *routev3.HeaderMatcher {
	switch a.Mode {
	case registry.AffinityCookie, registry.AffinityAppCookie:
		return &routev3.HeaderMatcher{
			Name: "cookie",
			HeaderMatchSpecifier: &routev3.HeaderMatcher_StringMatch{StringMatch: &matcherv3.StringMatcher{
				MatchPattern: &matcherv3.StringMatcher_SafeRegex{SafeRegex: &matcherv3.RegexMatcher{
					Regex: `^(.*[;,])?[ \t]*` + regexp.QuoteMeta(a.CookieName) + `=[^;, \t].*$`,
				}},
			}},
		}
	case registry.AffinityHeader:
		return &routev3.HeaderMatcher{
			Name:                 a.HeaderName,
			HeaderMatchSpecifier: &routev3.HeaderMatcher_PresentMatch{PresentMatch: true},
		}
	}
	return nil
}

// routeAction forwards to the service's cluster. WebSocket routes have no timeout and a
// long idle timeout; initial requests (retry true) get the 503 retry policy.
func routeAction(svc string, cfg registry.ServiceConfig, ws, retry bool, p *packer) *routev3.RouteAction {
	ra := &routev3.RouteAction{
		ClusterSpecifier: &routev3.RouteAction_Cluster{Cluster: ClusterName(svc)},
		HashPolicy:       hashPolicy(cfg.Affinity),
	}
	r := cfg.RetryInitialOn503
	retrying := retry && r.Enabled && r.Attempts > 0
	if ws {
		ra.Timeout = durationpb.New(0)
		ra.IdleTimeout = durationpb.New(webSocketIdleTimeout)
	} else {
		timeout := defaultRouteTimeout
		if total := r.PerTryTimeout.D() * time.Duration(r.Attempts+1); retrying && total > timeout {
			timeout = total
		}
		ra.Timeout = durationpb.New(timeout)
	}
	if !cfg.WebSocket {
		ra.UpgradeConfigs = []*routev3.RouteAction_UpgradeConfig{{UpgradeType: "websocket", Enabled: wrapperspb.Bool(false)}}
	}
	if retrying {
		ra.RetryPolicy = retryPolicy(r, ws, p)
	}
	return ra
}

// retryPolicy resubmits an initial request refused with 503 (or whose connection failed or
// was reset) to a host not tried yet. The cluster's retry budget bounds concurrent retries.
// WebSocket routes get no per-try timeout: since Envoy 1.36 timeouts apply to the upgrade
// request, and a per-try timer must never be able to cut a long-lived socket.
func retryPolicy(r registry.Retry, ws bool, p *packer) *routev3.RetryPolicy {
	rp := &routev3.RetryPolicy{
		RetryOn:              retryOn,
		RetriableStatusCodes: []uint32{503},
		NumRetries:           u32(uint32(r.Attempts)),
		RetryHostPredicate: []*routev3.RetryPolicy_RetryHostPredicate{{
			Name: "envoy.retry_host_predicates.previous_hosts",
			ConfigType: &routev3.RetryPolicy_RetryHostPredicate_TypedConfig{
				TypedConfig: p.pack(&previoushostsv3.PreviousHostsPredicate{})},
		}},
		HostSelectionRetryMaxAttempts: hostSelectionAttempts,
	}
	if r.PerTryTimeout > 0 && !ws {
		rp.PerTryTimeout = durationpb.New(r.PerTryTimeout.D())
	}
	return rp
}

// hashPolicy gives the hash-based affinity modes their hash key. app-cookie hashes on the
// application's cookie without a ttl, so Envoy never generates that cookie.
func hashPolicy(a registry.Affinity) []*routev3.RouteAction_HashPolicy {
	switch a.Mode {
	case registry.AffinitySourceIP:
		return []*routev3.RouteAction_HashPolicy{{PolicySpecifier: &routev3.RouteAction_HashPolicy_ConnectionProperties_{
			ConnectionProperties: &routev3.RouteAction_HashPolicy_ConnectionProperties{SourceIp: true}}}}
	case registry.AffinityAppCookie:
		return []*routev3.RouteAction_HashPolicy{{PolicySpecifier: &routev3.RouteAction_HashPolicy_Cookie_{
			Cookie: &routev3.RouteAction_HashPolicy_Cookie{Name: a.CookieName}}}}
	}
	return nil
}

// perFilterConfig is the per-route configuration of the service's forwarding routes: the
// header_mutation filter sets ServiceHeader (scoping the local reply mappers), and the
// stateful session filter is turned on for cookie and header modes, off for the others.
func perFilterConfig(svc string, a registry.Affinity, p *packer) map[string]*anypb.Any {
	mut := &headermutationv3.HeaderMutationPerRoute{Mutations: &headermutationv3.Mutations{
		RequestMutations: []*mutationv3.HeaderMutation{{Action: &mutationv3.HeaderMutation_Append{
			Append: &corev3.HeaderValueOption{
				Header:       &corev3.HeaderValue{Key: ServiceHeader, Value: svc},
				AppendAction: corev3.HeaderValueOption_OVERWRITE_IF_EXISTS_OR_ADD,
			}}}},
	}}
	ss := &statefulsessionv3.StatefulSessionPerRoute{Override: &statefulsessionv3.StatefulSessionPerRoute_Disabled{Disabled: true}}
	var state *corev3.TypedExtensionConfig
	switch a.Mode {
	case registry.AffinityCookie:
		cookie := &httpv3.Cookie{Name: a.CookieName, Path: a.CookiePath, Ttl: durationpb.New(a.CookieTTL.D())}
		if a.SameSite != "" {
			cookie.Attributes = append(cookie.Attributes, &httpv3.CookieAttribute{Name: "SameSite", Value: a.SameSite})
		}
		if a.Secure {
			cookie.Attributes = append(cookie.Attributes, &httpv3.CookieAttribute{Name: "Secure"})
		}
		state = &corev3.TypedExtensionConfig{
			Name:        "envoy.http.stateful_session.cookie",
			TypedConfig: p.pack(&cookiev3.CookieBasedSessionState{Cookie: cookie}),
		}
	case registry.AffinityHeader:
		state = &corev3.TypedExtensionConfig{
			Name:        "envoy.http.stateful_session.header",
			TypedConfig: p.pack(&headerv3.HeaderBasedSessionState{Name: a.HeaderName}),
		}
	}
	if state != nil {
		ss.Override = &statefulsessionv3.StatefulSessionPerRoute_StatefulSession{
			StatefulSession: &statefulsessionv3.StatefulSession{SessionState: state, Strict: a.Strict},
		}
	}
	return map[string]*anypb.Any{
		headerMutationFilter:  p.pack(mut),
		statefulSessionFilter: p.pack(ss),
	}
}

// setOverload makes r answer the service's overload reply: a direct response with the
// overload status and Retry-After, or a 302 to returnUrl.
func setOverload(r *routev3.Route, o registry.Overload) {
	dr := &routev3.DirectResponseAction{Status: overloadStatus(o)}
	if o.ReturnURL == "" {
		dr.Body = &corev3.DataSource{Specifier: &corev3.DataSource_InlineString{InlineString: overloadBody}}
	}
	r.Action = &routev3.Route_DirectResponse{DirectResponse: dr}
	r.ResponseHeadersToAdd = overloadHeaders(o)
}

// overloadStatus is 302 when the overload reply redirects to returnUrl, else overload.status.
func overloadStatus(o registry.Overload) uint32 {
	if o.ReturnURL != "" {
		return 302
	}
	return uint32(o.Status)
}

// overloadHeaders are the headers of the overload reply: Location for a redirect,
// Retry-After otherwise, and no caching either way.
func overloadHeaders(o registry.Overload) []*corev3.HeaderValueOption {
	set := func(k, v string) *corev3.HeaderValueOption {
		return &corev3.HeaderValueOption{
			Header:       &corev3.HeaderValue{Key: k, Value: v},
			AppendAction: corev3.HeaderValueOption_OVERWRITE_IF_EXISTS_OR_ADD,
		}
	}
	h := []*corev3.HeaderValueOption{set("cache-control", "no-store")}
	switch {
	case o.ReturnURL != "":
		h = append(h, set("location", o.ReturnURL))
	case o.RetryAfterSeconds > 0:
		h = append(h, set("retry-after", strconv.Itoa(o.RetryAfterSeconds)))
	}
	return h
}
