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
	// startingBody is the body of the reply while the only servers for new sessions are in
	// their first phase.
	startingBody = "A server is starting. Please retry in a few seconds.\n"
)

// Request headers that a forwarding route sets (or removes, so that a client cannot forge
// them) for the listener's fixed local reply mappers to read: the route carries the
// service's reply settings, so the listener never changes with the registry.
const (
	// replyHeader says which reply an Envoy "no healthy upstream" (UH) gets: replyOverload,
	// or replyGone on the session routes of a strict service.
	replyHeader   = "x-tether-reply"
	replyOverload = "overload"
	replyGone     = "gone"
	// retryAfterHeader carries overload.retryAfterSeconds (absent when 0).
	retryAfterHeader = "x-tether-retry-after"
	// returnURLHeader carries overload.returnUrl (absent when empty).
	returnURLHeader = "x-tether-return-url"
	// expireCookieHeader carries a Set-Cookie value that expires the session cookie, for the
	// reply of a strict service whose pinned server is gone (absent in header mode).
	expireCookieHeader = "x-tether-expire-cookie"
)

// placement is what a service's routes do with a request without a session marker: forward
// it (some instance takes new sessions), answer that a server is starting (every instance
// that could take it is in its first phase, which ends within startingIn seconds), or answer
// the overload reply.
type placement struct {
	forward    bool
	startingIn int
}

// routes returns the service's routes in match order. With a session marker (cookie,
// header): [WebSocket with marker, WebSocket,] with marker, catch-all; without
// one (source-ip, none): [WebSocket,] catch-all. WebSocket routes exist only when the
// service allows WebSockets. Routes with the marker forward without a retry policy; the
// others retry 503/connect failure/reset on another host, or, when no instance is
// available, answer the overload reply directly.
func routes(svc string, cfg registry.ServiceConfig, pl placement, p *packer) []*routev3.Route {
	marker := markerMatcher(cfg.Affinity)
	perFilter := map[bool]map[string]*anypb.Any{
		false: perFilterConfig(svc, cfg, false, p),
		true:  perFilterConfig(svc, cfg, true, p),
	}
	var out []*routev3.Route
	add := func(name string, ws, withMarker bool) {
		r := &routev3.Route{Name: svc + "/" + name, Match: match(cfg.PathPrefix)}
		if ws {
			r.Match.Headers = append(r.Match.Headers, webSocketMatcher())
		}
		if withMarker {
			r.Match.Headers = append(r.Match.Headers, marker)
		}
		switch {
		case !withMarker && pl.startingIn > 0:
			setStarting(r, pl.startingIn)
		case !withMarker && !pl.forward:
			setOverload(r, cfg.Overload)
		default:
			r.Action = &routev3.Route_Route{Route: routeAction(svc, cfg, ws, !withMarker, marker != nil, p)}
			r.TypedPerFilterConfig = perFilter[withMarker]
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
// cookie matcher is too recent for the Envoy versions Tether supports), read as Envoy's
// cookie parser reads it (Http::Utility::parseCookieValue): cookies are separated by ';'
// alone, spaces (not tabs) may precede a name, and an empty value is not a session. A ','
// is part of a value there: accepting it as a separator sent a request Envoy does not pin
// down the session route, which never retries. (HTTP/2 and HTTP/3 cookie crumbs are joined
// with "; "; only an HTTP/1 client sending several Cookie lines, which RFC 6265 forbids,
// has them joined with ',' for route matching.)
func markerMatcher(a registry.Affinity) *routev3.HeaderMatcher {
	switch a.Mode {
	case registry.AffinityCookie:
		return &routev3.HeaderMatcher{
			Name: "cookie",
			HeaderMatchSpecifier: &routev3.HeaderMatcher_StringMatch{StringMatch: &matcherv3.StringMatcher{
				MatchPattern: &matcherv3.StringMatcher_SafeRegex{SafeRegex: &matcherv3.RegexMatcher{
					Regex: cookieMarkerRegex(a.CookieName),
				}},
			}},
		}
	case registry.AffinityHeader:
		return &routev3.HeaderMatcher{
			Name:                 a.HeaderName,
			HeaderMatchSpecifier: &routev3.HeaderMatcher_PresentMatch{PresentMatch: true},
		}
	case registry.AffinitySourceIP, registry.AffinityNone:
		// No marker: source-ip hashes the address, none pins nothing.
	}
	return nil
}

// cookieMarkerRegex is the regular expression that recognises a request carrying the
// cookie. A value starting with a space is refused too: it is never base64, and Envoy takes
// no host from it. Its RE2 program size is 33 plus the length of the name (QuoteMeta's
// escapes add none), so registry.MaxCookieName keeps it within Envoy's limit of 100.
func cookieMarkerRegex(name string) string {
	return `^(.*;)? *` + regexp.QuoteMeta(name) + `=[^; ].*$`
}

// routeAction forwards to the service's cluster. WebSocket routes have no timeout and a
// long idle timeout; HTTP routes have timeouts.request (none by default: a route timeout
// covers the whole response and would cut long polls and downloads) and timeouts.idle;
// initial requests (retry true) get the 503 retry policy.
func routeAction(svc string, cfg registry.ServiceConfig, ws, retry, hasMarker bool, p *packer) *routev3.RouteAction {
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
		ra.Timeout = durationpb.New(cfg.Timeouts.Request.D())
		ra.IdleTimeout = durationpb.New(cfg.Timeouts.Idle.D())
	}
	if !cfg.WebSocket {
		ra.UpgradeConfigs = []*routev3.RouteAction_UpgradeConfig{{UpgradeType: "websocket", Enabled: wrapperspb.Bool(false)}}
	}
	if retrying {
		ra.RetryPolicy = retryPolicy(r, ws || !hasMarker, p)
	}
	return ra
}

// retryPolicy resubmits an initial request refused with 503 (or whose connection failed or
// was reset) to a host not tried yet. The cluster's retry budget bounds concurrent retries.
//
// The per-try timeout only ever covers the wait for response headers: Envoy's
// UpstreamRequest::onPerTryTimeout ignores the timer once the downstream response has
// started, and FilterUtility::finalTimeout keeps it when the route timeout is 0 (it drops
// it only when it is >= a non-zero route timeout). So a slow first page is retried
// elsewhere, and a long response that has begun is never cut by it. Per-try timeouts
// count as local-origin failures for outlier detection, which is one reason Tether runs
// none (see outlier notes in cluster.go).
// WebSocket routes get no per-try timeout: since Envoy 1.36 timeouts apply to the upgrade
// request, and a per-try timer must never be able to cut a long-lived socket. Nor do the
// routes of modes without a session marker (source-ip, none): every request of theirs goes
// through the retrying route, long polls included, and a long poll sends no headers until
// it answers.
func retryPolicy(r registry.Retry, noPerTry bool, p *packer) *routev3.RetryPolicy {
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
	if r.PerTryTimeout > 0 && !noPerTry {
		rp.PerTryTimeout = durationpb.New(r.PerTryTimeout.D())
	}
	return rp
}

// hashPolicy gives source-ip mode its hash key.
func hashPolicy(a registry.Affinity) []*routev3.RouteAction_HashPolicy {
	if a.Mode == registry.AffinitySourceIP {
		return []*routev3.RouteAction_HashPolicy{{PolicySpecifier: &routev3.RouteAction_HashPolicy_ConnectionProperties_{
			ConnectionProperties: &routev3.RouteAction_HashPolicy_ConnectionProperties{SourceIp: true}}}}
	}
	return nil
}

// requestMutations are the request headers a forwarding route sets for the listener's local
// reply mappers (see the reply header constants), every one overwritten or removed so that a
// client cannot choose its own reply (an open redirect through returnURLHeader, say).
func requestMutations(svc string, cfg registry.ServiceConfig, session bool) []*mutationv3.HeaderMutation {
	var out []*mutationv3.HeaderMutation
	set := func(k, v string) {
		out = append(out, &mutationv3.HeaderMutation{Action: &mutationv3.HeaderMutation_Append{Append: overwrite(k, formatLiteral(v))}})
	}
	remove := func(k string) {
		out = append(out, &mutationv3.HeaderMutation{Action: &mutationv3.HeaderMutation_Remove{Remove: k}})
	}
	set(ServiceHeader, svc)
	a, o := cfg.Affinity, cfg.Overload
	gone := session && a.Strict
	if gone {
		set(replyHeader, replyGone)
	} else {
		set(replyHeader, replyOverload)
	}
	if !gone && o.RetryAfterSeconds > 0 {
		set(retryAfterHeader, strconv.Itoa(o.RetryAfterSeconds))
	} else {
		remove(retryAfterHeader)
	}
	if !gone && o.ReturnURL != "" {
		set(returnURLHeader, o.ReturnURL)
	} else {
		remove(returnURLHeader)
	}
	if gone && a.Mode == registry.AffinityCookie {
		set(expireCookieHeader, a.CookieName+"=; Path="+a.CookiePath+"; Max-Age=0; HttpOnly")
	} else {
		remove(expireCookieHeader)
	}
	return out
}

// formatLiteral escapes v for a header value that Envoy reads as a substitution format
// string: '%' starts a command there and "%%" is a literal '%' (Router::HeaderParser and
// Formatter::SubstitutionFormatParser), so a return URL such as ".../a%20b" is sent as is
// instead of making Envoy reject the configuration.
func formatLiteral(v string) string { return strings.ReplaceAll(v, "%", "%%") }

// perFilterConfig is the per-route configuration of the service's forwarding routes: the
// header_mutation filter sets the reply headers (requestMutations), and the stateful session
// filter is turned on for cookie and header modes, off for the others. session is true for
// the routes matching the session marker.
func perFilterConfig(svc string, cfg registry.ServiceConfig, session bool, p *packer) map[string]*anypb.Any {
	a := cfg.Affinity
	mut := &headermutationv3.HeaderMutationPerRoute{Mutations: &headermutationv3.Mutations{
		RequestMutations: requestMutations(svc, cfg, session),
	}}
	ss := &statefulsessionv3.StatefulSessionPerRoute{Override: &statefulsessionv3.StatefulSessionPerRoute_Disabled{Disabled: true}}
	var state *corev3.TypedExtensionConfig
	switch a.Mode {
	case registry.AffinityCookie:
		cookie := &httpv3.Cookie{Name: a.CookieName, Path: a.CookiePath, Ttl: durationpb.New(a.CookieTTL.D())}
		if ss := sameSite(a); ss != "" {
			cookie.Attributes = append(cookie.Attributes, &httpv3.CookieAttribute{Name: "SameSite", Value: ss})
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
	case registry.AffinitySourceIP, registry.AffinityNone:
		// No session state: the stateful session filter stays disabled on the route.
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

// sameSite is the cookie's SameSite attribute, "" for none. auto (the default) is None for a
// Secure cookie and none otherwise: a sign-in that returns by a cross-site POST (OpenID
// Connect form_post, SAML POST binding) carries no Lax or Strict cookie, so Envoy would place
// the user anew and overwrite their cookie; browsers send None cross-site, but only with
// Secure (registry.SameSiteAuto).
func sameSite(a registry.Affinity) string {
	if a.SameSite != registry.SameSiteAuto {
		return a.SameSite
	}
	if a.Secure {
		return "None"
	}
	return ""
}

// setOverload makes r answer the service's overload reply: a direct response with the
// overload status and Retry-After, or a 302 to returnUrl.
func setOverload(r *routev3.Route, o registry.Overload) {
	dr := &routev3.DirectResponseAction{Status: overloadStatus(o)}
	if o.ReturnURL == "" {
		dr.Body = inline(overloadBody)
	}
	r.Action = &routev3.Route_DirectResponse{DirectResponse: dr}
	r.ResponseHeadersToAdd = overloadHeaders(o)
}

// setStarting makes r answer new users while every server that could take them is in its
// first phase: a 503 telling them to retry after the phase's longest length. Never the
// overload reply: its Retry-After (600 s by default) or its page (returnUrl) would tell a user
// to come back much later than a wait that ends within seconds.
func setStarting(r *routev3.Route, seconds int) {
	r.Action = &routev3.Route_DirectResponse{DirectResponse: &routev3.DirectResponseAction{Status: 503, Body: inline(startingBody)}}
	r.ResponseHeadersToAdd = []*corev3.HeaderValueOption{overwrite("cache-control", "no-store"), overwrite("retry-after", strconv.Itoa(seconds))}
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
	h := []*corev3.HeaderValueOption{overwrite("cache-control", "no-store")}
	switch {
	case o.ReturnURL != "":
		h = append(h, overwrite("location", formatLiteral(o.ReturnURL)))
	case o.RetryAfterSeconds > 0:
		h = append(h, overwrite("retry-after", strconv.Itoa(o.RetryAfterSeconds)))
	}
	return h
}

// overwrite sets header key to value, replacing any value it has.
func overwrite(key, value string) *corev3.HeaderValueOption {
	return &corev3.HeaderValueOption{Header: &corev3.HeaderValue{Key: key, Value: value},
		AppendAction: corev3.HeaderValueOption_OVERWRITE_IF_EXISTS_OR_ADD}
}

// inline is a reply body given in the configuration.
func inline(body string) *corev3.DataSource {
	return &corev3.DataSource{Specifier: &corev3.DataSource_InlineString{InlineString: body}}
}
