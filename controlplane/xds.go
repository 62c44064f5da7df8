package controlplane

import (
	"cmp"

	core "github.com/envoyproxy/go-control-plane/envoy/config/core/v3"
	"github.com/envoyproxy/go-control-plane/pkg/cache/types"
	"github.com/rs/zerolog"

	"github.com/tetherlb/tether/controlplane/xdscache"
)

// DefaultGroup is the gateway group of an Envoy whose node.cluster is empty.
const DefaultGroup = "default"

// groupName is the gateway group of a node cluster.
func groupName(cluster string) string { return cmp.Or(cluster, DefaultGroup) }

// streamLog logs and counts what the xDS streams do, and checks each Envoy's version against
// MinEnvoyVersion (xdscache.Observer: called under the cache's lock).
type streamLog struct {
	log zerolog.Logger
	m   *metrics
}

func (s streamLog) Opened(k xdscache.StreamKey) { s.m.streams.WithLabelValues(k.Variant()).Inc() }

func (s streamLog) Named(c *xdscache.ClientInfo, node *core.Node) {
	s.log.Info().Int64("stream", c.StreamID).Str("node", c.NodeID).Str("group", c.Group).Str("variant", c.Variant).Msg("xDS stream opened")
	if v, ok := envoyVersionOf(node); ok {
		c.EnvoyVersion = v.String()
		if v.less(minEnvoy) {
			c.BelowMinVersion, c.Missing = true, missingFeatures(v)
			s.m.oldEnvoys.Inc()
			s.log.Warn().Int64("stream", c.StreamID).Str("node", c.NodeID).Str("group", c.Group).Str("envoyVersion", c.EnvoyVersion).
				Str("minVersion", MinEnvoyVersion).Strs("missing", c.Missing).Msg("Envoy older than Tether's minimum version: it accepts the configuration but loses part of it")
		}
	}
}

func (s streamLog) Responded(k xdscache.StreamKey, typeURL string) {
	s.m.responses.WithLabelValues(k.Variant(), xdscache.ShortType(typeURL)).Inc()
}

func (s streamLog) NACKed(c *xdscache.ClientInfo, typeURL, version string, code int32) {
	s.m.nacks.WithLabelValues(xdscache.ShortType(typeURL)).Inc()
	s.log.Error().Int64("stream", c.StreamID).Str("node", c.NodeID).Str("group", c.Group).Str("type", xdscache.ShortType(typeURL)).
		Str("version", version).Int32("code", code).Str("error", c.LastNACK).Msg("Envoy rejected configuration (NACK)")
}

func (s streamLog) Closed(c *xdscache.ClientInfo) {
	s.m.streams.WithLabelValues(c.Variant).Dec()
	if c.BelowMinVersion {
		s.m.oldEnvoys.Dec()
	}
	s.log.Info().Int64("stream", c.StreamID).Str("node", c.NodeID).Str("group", c.Group).Str("variant", c.Variant).Msg("xDS stream closed")
}

// newXDSCache returns the cache serving every gateway group: each resource is checked by
// Envoy's own proto validation and marshalled once, when it changes; its streams are logged
// on log and counted in m.
// in (if not nil) is told, without blocking, when an Envoy ACKs or NACKs or a stream closes.
// maxServices (0: the cache's default) sizes the names an Envoy may ask for before the first
// publication: one assignment per service, twice over for a registry replaced meanwhile.
// maxInflight bounds the response bytes in flight (0: the default, negative: none).
func newXDSCache(log zerolog.Logger, m *metrics, in *answers, initialSyncs, maxServices int, maxInflight int64) *xdscache.Cache {
	var before int
	if maxServices > 0 {
		before = 2*maxServices + xdscache.DefaultNameMargin
	}
	opts := xdscache.Options{Check: validate, GroupOf: groupName, Logger: log.With().Str("component", "xds-cache").Logger(),
		Observer: streamLog{log, m}, MaxInitialSyncs: initialSyncs, NamesBeforeUpdate: before, MaxInflightBytes: maxInflight,
		OnRefuse: func(reason string) { m.refused.WithLabelValues(reason).Inc() }}
	if in != nil {
		opts.OnAnswer, opts.OnClose, opts.HoldFirstEndpoints = in.signal, in.closed, in.hold.Load
	}
	return xdscache.New(opts)
}

// validate runs Envoy's own proto validation on a resource.
func validate(m types.Resource) error {
	if v, ok := m.(interface{ ValidateAll() error }); ok {
		return v.ValidateAll()
	}
	return nil
}
