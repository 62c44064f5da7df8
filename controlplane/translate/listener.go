package translate

import (
	"fmt"

	accesslogv3 "github.com/envoyproxy/go-control-plane/envoy/config/accesslog/v3"
	corev3 "github.com/envoyproxy/go-control-plane/envoy/config/core/v3"
	listenerv3 "github.com/envoyproxy/go-control-plane/envoy/config/listener/v3"
	streamv3 "github.com/envoyproxy/go-control-plane/envoy/extensions/access_loggers/stream/v3"
	headermutationv3 "github.com/envoyproxy/go-control-plane/envoy/extensions/filters/http/header_mutation/v3"
	routerv3 "github.com/envoyproxy/go-control-plane/envoy/extensions/filters/http/router/v3"
	statefulsessionv3 "github.com/envoyproxy/go-control-plane/envoy/extensions/filters/http/stateful_session/v3"
	hcmv3 "github.com/envoyproxy/go-control-plane/envoy/extensions/filters/network/http_connection_manager/v3"
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
// (per-route service header), the stateful session filter (inert here: no session_state;
// each route turns it on or off), the router, an access log to stdout and the services'
// local reply mappers.
func listener(opts Options, mappers []*hcmv3.ResponseMapper) (*listenerv3.Listener, error) {
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
			{Name: statefulSessionFilter, ConfigType: &hcmv3.HttpFilter_TypedConfig{
				TypedConfig: p.pack(&statefulsessionv3.StatefulSession{})}},
			{Name: routerFilter, ConfigType: &hcmv3.HttpFilter_TypedConfig{
				TypedConfig: p.pack(&routerv3.Router{})}},
		},
		AccessLog: []*accesslogv3.AccessLog{{
			Name:       "envoy.access_loggers.stdout",
			ConfigType: &accesslogv3.AccessLog_TypedConfig{TypedConfig: p.pack(&streamv3.StdoutAccessLog{})},
		}},
	}
	if len(mappers) > 0 {
		hcm.LocalReplyConfig = &hcmv3.LocalReplyConfig{Mappers: mappers}
	}
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
