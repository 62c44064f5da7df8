package translate

import (
	"fmt"

	xdscorev3 "github.com/cncf/xds/go/xds/core/v3"
	xdsmatcherv3 "github.com/cncf/xds/go/xds/type/matcher/v3"
	accesslogv3 "github.com/envoyproxy/go-control-plane/envoy/config/accesslog/v3"
	corev3 "github.com/envoyproxy/go-control-plane/envoy/config/core/v3"
	listenerv3 "github.com/envoyproxy/go-control-plane/envoy/config/listener/v3"
	routev3 "github.com/envoyproxy/go-control-plane/envoy/config/route/v3"
	streamv3 "github.com/envoyproxy/go-control-plane/envoy/extensions/access_loggers/stream/v3"
	matchingv3 "github.com/envoyproxy/go-control-plane/envoy/extensions/common/matching/v3"
	skipv3 "github.com/envoyproxy/go-control-plane/envoy/extensions/filters/common/matcher/action/v3"
	headermutationv3 "github.com/envoyproxy/go-control-plane/envoy/extensions/filters/http/header_mutation/v3"
	routerv3 "github.com/envoyproxy/go-control-plane/envoy/extensions/filters/http/router/v3"
	statefulsessionv3 "github.com/envoyproxy/go-control-plane/envoy/extensions/filters/http/stateful_session/v3"
	hcmv3 "github.com/envoyproxy/go-control-plane/envoy/extensions/filters/network/http_connection_manager/v3"
	matcherv3 "github.com/envoyproxy/go-control-plane/envoy/type/matcher/v3"
	"google.golang.org/protobuf/proto"
	"google.golang.org/protobuf/types/known/anypb"
	"google.golang.org/protobuf/types/known/wrapperspb"
)

// packer packs typed configs into Any, validating each message first, and keeps the first
// error so that builders stay linear.
type packer struct{ err error }

func (p *packer) pack(m proto.Message) *anypb.Any {
	a := &anypb.Any{}
	if v, ok := m.(interface{ ValidateAll() error }); ok {
		if err := v.ValidateAll(); err != nil && p.err == nil {
			p.err = fmt.Errorf("invalid %s: %w", m.ProtoReflect().Descriptor().FullName(), err)
		}
	}
	if err := anypb.MarshalFrom(a, m, proto.MarshalOptions{Deterministic: true}); err != nil && p.err == nil {
		p.err = fmt.Errorf("marshal %s: %w", m.ProtoReflect().Descriptor().FullName(), err)
	}
	return a
}

// listener builds the single HTTP listener: HCM with RDS over ADS, WebSocket upgrades
// (disabled per route for services that do not allow them), the header_mutation filter
// (per-route reply headers), the stateful session filter (inert here: no session_state;
// each route turns it on or off) wrapped so that a refused response sets no cookie
// (statefulSessionHTTPFilter), the router, an access log to stdout and the fixed local
// reply mappers.
//
// It depends on opts alone, never on the registry: when a listener's filter chain changes,
// Envoy drains the old chain (ListenerManagerImpl::drainFilterChains) and closes every
// connection still on it when the drain time ends, WebSockets included. Everything that
// differs per service lives in routes (RDS) and clusters, which update in place.
func listener(opts Options) (*listenerv3.Listener, error) {
	var p packer
	hcm := &hcmv3.HttpConnectionManager{
		StatPrefix: ListenerName,
		CodecType:  hcmv3.HttpConnectionManager_AUTO,
		RouteSpecifier: &hcmv3.HttpConnectionManager_Rds{Rds: &hcmv3.Rds{
			ConfigSource:    adsSource(),
			RouteConfigName: RouteConfigName,
		}},
		UseRemoteAddress: wrapperspb.Bool(true),
		NormalizePath:    wrapperspb.Bool(true),
		MergeSlashes:     true,
		UpgradeConfigs:   []*hcmv3.HttpConnectionManager_UpgradeConfig{{UpgradeType: "websocket"}},
		HttpFilters: []*hcmv3.HttpFilter{
			{Name: headerMutationFilter, ConfigType: &hcmv3.HttpFilter_TypedConfig{
				TypedConfig: p.pack(&headermutationv3.HeaderMutation{})}},
			statefulSessionHTTPFilter(&p),
			{Name: routerFilter, ConfigType: &hcmv3.HttpFilter_TypedConfig{
				TypedConfig: p.pack(&routerv3.Router{})}},
		},
		AccessLog: []*accesslogv3.AccessLog{{
			Name:       "envoy.access_loggers.stdout",
			ConfigType: &accesslogv3.AccessLog_TypedConfig{TypedConfig: p.pack(&streamv3.StdoutAccessLog{})},
		}},
	}
	hcm.LocalReplyConfig = &hcmv3.LocalReplyConfig{Mappers: localReplyMappers()}
	l := &listenerv3.Listener{
		Name: ListenerName,
		Address: &corev3.Address{Address: &corev3.Address_SocketAddress{SocketAddress: &corev3.SocketAddress{
			Address:       "0.0.0.0",
			PortSpecifier: &corev3.SocketAddress_PortValue{PortValue: opts.ListenPort},
		}}},
		FilterChains: []*listenerv3.FilterChain{{
			Filters: []*listenerv3.Filter{{
				Name:       hcmFilterName,
				ConfigType: &listenerv3.Filter_TypedConfig{TypedConfig: p.pack(hcm)},
			}},
		}},
	}
	if p.err != nil {
		return l, fmt.Errorf("listener %s: %w", ListenerName, p.err)
	}
	return l, nil
}

// refusedStatus is the response status that must never place a session: the refusal of a
// full server, and Envoy's own 503s (no healthy upstream, connect failure, circuit-breaker
// overflow), which the initial route retries on another server.
const refusedStatus = "503"

// statefulSessionHTTPFilter is the stateful session filter wrapped in match_delegate, with a
// matcher that skips it when the response status is 503.
//
// Envoy's StatefulSession::encodeHeaders writes the cookie for the upstream host whatever the
// response status, and after retries that host is the last attempt's: a first request that
// every attempt saw refused would pin the user to the last server that refused them, and
// their later requests take the session route, which never retries. The wrapper
// (DelegatingStreamFilter, source/extensions/filters/http/match_delegate/config.cc) evaluates
// the matcher on each call: in decodeHeaders the response headers are not there yet
// (HttpResponseHeadersDataInput answers NotAvailable, the match is incomplete), so the filter's
// decodeHeaders runs and still overrides the host; in encodeHeaders the status is known and a
// 503 skips the filter's encodeHeaders, so no cookie is set. Any other status (a 500 the
// application may have answered after creating a session, a 302 local reply) runs it as before.
//
// The wrapper keeps the filter's name: the wrapped filter shares the wrapper's callbacks, and
// both look their route config up by that name (ActiveStreamFilterBase::mostSpecificPerFilterConfig
// with filter_context_.config_name). The routes put a StatefulSessionPerRoute there, which the
// stateful session factory builds (PerFilterConfigs chooses the factory by type URL); the
// wrapper's own lookup casts it to its FilterConfigPerRoute, gets nothing, and keeps the
// matcher below. The matcher is fixed, so the listener still never changes with the registry.
func statefulSessionHTTPFilter(p *packer) *hcmv3.HttpFilter {
	m := &xdsmatcherv3.Matcher{MatcherType: &xdsmatcherv3.Matcher_MatcherList_{MatcherList: &xdsmatcherv3.Matcher_MatcherList{
		Matchers: []*xdsmatcherv3.Matcher_MatcherList_FieldMatcher{{
			Predicate: &xdsmatcherv3.Matcher_MatcherList_Predicate{MatchType: &xdsmatcherv3.Matcher_MatcherList_Predicate_SinglePredicate_{
				SinglePredicate: &xdsmatcherv3.Matcher_MatcherList_Predicate_SinglePredicate{
					Input: &xdscorev3.TypedExtensionConfig{
						Name:        "response-status",
						TypedConfig: p.pack(&matcherv3.HttpResponseHeaderMatchInput{HeaderName: ":status"}),
					},
					Matcher: &xdsmatcherv3.Matcher_MatcherList_Predicate_SinglePredicate_ValueMatch{
						ValueMatch: &xdsmatcherv3.StringMatcher{MatchPattern: &xdsmatcherv3.StringMatcher_Exact{Exact: refusedStatus}},
					},
				},
			}},
			OnMatch: &xdsmatcherv3.Matcher_OnMatch{OnMatch: &xdsmatcherv3.Matcher_OnMatch_Action{Action: &xdscorev3.TypedExtensionConfig{
				Name:        "skip",
				TypedConfig: p.pack(&skipv3.SkipFilter{}),
			}}},
		}},
	}}}
	wrapped := &matchingv3.ExtensionWithMatcher{
		XdsMatcher: m,
		ExtensionConfig: &corev3.TypedExtensionConfig{
			Name:        statefulSessionFilter,
			TypedConfig: p.pack(&statefulsessionv3.StatefulSession{}),
		},
	}
	return &hcmv3.HttpFilter{Name: statefulSessionFilter, ConfigType: &hcmv3.HttpFilter_TypedConfig{TypedConfig: p.pack(wrapped)}}
}

// Bodies of the local replies.
const (
	overflowBody = "This service has reached its limit of concurrent requests. Please retry in a moment.\n"
	goneBody     = "The server that held your session is no longer available, so your session has ended. " +
		"Reload the page to start a new one.\n"
)

// localReplyMappers turn Envoy's own 503s into Tether's replies. They are fixed: each
// forwarding route states its service's reply in request headers (requestMutations), which
// the mappers match and copy through %REQ(...)% (LocalReply ResponseMapper::matchAndRewrite
// evaluates headers_to_add with the request headers; a status_code left unset keeps Envoy's
// 503). The first match wins:
//  1. circuit-breaker overflow (UO): a plain "retry in a moment", never the overload reply
//     and its long Retry-After, since the request may belong to a session whose server is
//     there;
//  2. no healthy upstream (UH) on a strict service's session route: the server is gone, and
//     the session cookie is expired so that a reload starts a new session;
//  3. UH with a return URL: 302 to it;
//  4. UH: the overload reply, with Retry-After when the service has one.
//
// UH happens when the routes still forward but no host can be chosen (the instances became
// unavailable between two route updates, or the pinned server of a session is gone and no
// other can take it); when no instance is available at translation time, the route itself
// answers the overload reply with the service's own status. These fallbacks keep Envoy's 503.
func localReplyMappers() []*hcmv3.ResponseMapper {
	flag := func(f string) *accesslogv3.AccessLogFilter {
		return &accesslogv3.AccessLogFilter{FilterSpecifier: &accesslogv3.AccessLogFilter_ResponseFlagFilter{
			ResponseFlagFilter: &accesslogv3.ResponseFlagFilter{Flags: []string{f}}}}
	}
	header := func(name, exact string) *accesslogv3.AccessLogFilter {
		m := &routev3.HeaderMatcher{Name: name, HeaderMatchSpecifier: &routev3.HeaderMatcher_PresentMatch{PresentMatch: true}}
		if exact != "" {
			m.HeaderMatchSpecifier = &routev3.HeaderMatcher_StringMatch{StringMatch: &matcherv3.StringMatcher{
				MatchPattern: &matcherv3.StringMatcher_Exact{Exact: exact}}}
		}
		return &accesslogv3.AccessLogFilter{FilterSpecifier: &accesslogv3.AccessLogFilter_HeaderFilter{
			HeaderFilter: &accesslogv3.HeaderFilter{Header: m}}}
	}
	and := func(fs ...*accesslogv3.AccessLogFilter) *accesslogv3.AccessLogFilter {
		return &accesslogv3.AccessLogFilter{FilterSpecifier: &accesslogv3.AccessLogFilter_AndFilter{
			AndFilter: &accesslogv3.AndFilter{Filters: fs}}}
	}
	noStore := overwrite("cache-control", "no-store")
	fromReq := func(h string) string { return "%REQ(" + h + ")%" }
	return []*hcmv3.ResponseMapper{
		{Filter: and(flag("UO"), header(replyHeader, "")),
			Body: inline(overflowBody), HeadersToAdd: []*corev3.HeaderValueOption{noStore}},
		{Filter: and(flag("UH"), header(replyHeader, replyGone), header(expireCookieHeader, "")),
			Body:         inline(goneBody),
			HeadersToAdd: []*corev3.HeaderValueOption{noStore, overwrite("set-cookie", fromReq(expireCookieHeader))}},
		{Filter: and(flag("UH"), header(replyHeader, replyGone)),
			Body: inline(goneBody), HeadersToAdd: []*corev3.HeaderValueOption{noStore}},
		{Filter: and(flag("UH"), header(replyHeader, replyOverload), header(returnURLHeader, "")),
			StatusCode:   u32(302),
			Body:         inline("No server can take a new session right now.\n"),
			HeadersToAdd: []*corev3.HeaderValueOption{noStore, overwrite("location", fromReq(returnURLHeader))}},
		{Filter: and(flag("UH"), header(replyHeader, replyOverload), header(retryAfterHeader, "")),
			Body:         inline(overloadBody),
			HeadersToAdd: []*corev3.HeaderValueOption{noStore, overwrite("retry-after", fromReq(retryAfterHeader))}},
		{Filter: and(flag("UH"), header(replyHeader, replyOverload)),
			Body: inline(overloadBody), HeadersToAdd: []*corev3.HeaderValueOption{noStore}},
	}
}
