package controlplane

import (
	"context"
	"slices"
	"sort"
	"sync"
	"time"

	core "github.com/envoyproxy/go-control-plane/envoy/config/core/v3"
	discovery "github.com/envoyproxy/go-control-plane/envoy/service/discovery/v3"
	serverv3 "github.com/envoyproxy/go-control-plane/pkg/server/v3"
	"github.com/rs/zerolog"
)

// ClientInfo describes one connected Envoy stream.
type ClientInfo struct {
	StreamID    int64             `json:"streamId"`
	Variant     string            `json:"variant"` // sotw or delta
	NodeID      string            `json:"nodeId"`
	Group       string            `json:"group"`
	ConnectedAt time.Time         `json:"connectedAt"`
	Acked       map[string]string `json:"acked"` // resource type -> last ACKed version
	NACKs       int               `json:"nacks"`
	LastNACK    string            `json:"lastNack,omitempty"`
	// EnvoyVersion is the release the node reports (user_agent_build_version); empty when it
	// reports none. BelowMinVersion is set when it is older than MinEnvoyVersion, and
	// Missing lists what it loses of Tether's configuration.
	EnvoyVersion    string   `json:"envoyVersion,omitempty"`
	BelowMinVersion bool     `json:"belowMinVersion,omitempty"`
	Missing         []string `json:"missing,omitempty"`
}

// tracker follows connected streams, their ACKs and NACKs, for the admin API and metrics.
// The cache (xdscache) owns the streams' subscriptions and the gateway groups.
type tracker struct {
	log zerolog.Logger
	m   *metrics

	mu      sync.Mutex
	streams map[streamKey]*ClientInfo
	sent    map[streamKey]map[string]string // stream -> nonce -> type version sent
}

// streamKey names a stream: go-control-plane numbers state-of-the-world and delta streams
// separately, so an ID alone is ambiguous.
type streamKey struct {
	variant string
	id      int64
}

func newTracker(log zerolog.Logger, m *metrics) *tracker {
	return &tracker{log: log, m: m,
		streams: map[streamKey]*ClientInfo{}, sent: map[streamKey]map[string]string{}}
}

func (t *tracker) open(id streamKey) {
	t.mu.Lock()
	defer t.mu.Unlock()
	t.streams[id] = &ClientInfo{StreamID: id.id, Variant: id.variant, ConnectedAt: time.Now().UTC(), Acked: map[string]string{}}
	t.sent[id] = map[string]string{}
	t.m.streams.WithLabelValues(id.variant).Inc()
}

func (t *tracker) closed(id streamKey) {
	t.mu.Lock()
	defer t.mu.Unlock()
	if c, ok := t.streams[id]; ok {
		t.m.streams.WithLabelValues(c.Variant).Dec()
		if c.BelowMinVersion {
			t.m.oldEnvoys.Dec()
		}
		t.log.Info().Int64("stream", id.id).Str("node", c.NodeID).Str("group", c.Group).Str("variant", c.Variant).Msg("xDS stream closed")
	}
	delete(t.streams, id)
	delete(t.sent, id)
}

// request records a request: its node, and whether it ACKs or NACKs the response of nonce.
// Only a NACK of a nonce this stream was sent counts (in the metric, labelled by a type the
// cache has already checked is served): a client cannot mint metric series or log lines.
func (t *tracker) request(id streamKey, node *core.Node, typeURL, nonce string, nack *errorDetail) {
	t.mu.Lock()
	defer t.mu.Unlock()
	c, ok := t.streams[id]
	if !ok {
		return
	}
	if node != nil && c.NodeID == "" {
		c.NodeID, c.Group = node.GetId(), groupOf(node)
		t.log.Info().Int64("stream", id.id).Str("node", c.NodeID).Str("group", c.Group).Str("variant", c.Variant).Msg("xDS stream opened")
		if v, ok := envoyVersionOf(node); ok {
			c.EnvoyVersion = v.String()
			if v.less(minEnvoy) {
				c.BelowMinVersion, c.Missing = true, missingFeatures(v)
				t.m.oldEnvoys.Inc()
				t.log.Warn().Int64("stream", id.id).Str("node", c.NodeID).Str("group", c.Group).Str("envoyVersion", c.EnvoyVersion).
					Str("minVersion", MinEnvoyVersion).Strs("missing", c.Missing).Msg("Envoy older than Tether's minimum version: it accepts the configuration but loses part of it")
			}
		}
	}
	if nonce == "" {
		return
	}
	version, sent := t.sent[id][nonce]
	if !sent {
		return
	}
	delete(t.sent[id], nonce)
	if nack != nil {
		c.NACKs++
		c.LastNACK = truncate(nack.message, 1024)
		t.m.nacks.WithLabelValues(shortType(typeURL)).Inc()
		t.log.Error().Int64("stream", id.id).Str("node", c.NodeID).Str("group", c.Group).Str("type", shortType(typeURL)).
			Str("version", version).Int32("code", nack.code).Str("error", c.LastNACK).Msg("Envoy rejected configuration (NACK)")
	} else {
		c.Acked[shortType(typeURL)] = version
	}
}

// truncate bounds a client-supplied string kept in memory and logs.
func truncate(s string, n int) string {
	if len(s) <= n {
		return s
	}
	return s[:n] + "..."
}

func (t *tracker) response(id streamKey, typeURL, nonce, version string) {
	t.m.responses.WithLabelValues(id.variant, shortType(typeURL)).Inc()
	t.mu.Lock()
	defer t.mu.Unlock()
	if s, ok := t.sent[id]; ok && nonce != "" {
		// Bound the map: Envoy ACKs or NACKs every nonce, but a misbehaving client may not.
		if len(s) > 256 {
			clear(s)
		}
		s[nonce] = version
	}
}

// clients returns the connected streams, by stream ID.
func (t *tracker) clients() []ClientInfo {
	t.mu.Lock()
	defer t.mu.Unlock()
	out := make([]ClientInfo, 0, len(t.streams))
	for _, c := range t.streams {
		cp := *c
		cp.Missing = slices.Clone(c.Missing)
		cp.Acked = make(map[string]string, len(c.Acked))
		for k, v := range c.Acked {
			cp.Acked[k] = v
		}
		out = append(out, cp)
	}
	sort.Slice(out, func(i, j int) bool {
		if out[i].StreamID != out[j].StreamID {
			return out[i].StreamID < out[j].StreamID
		}
		return out[i].Variant < out[j].Variant
	})
	return out
}

type errorDetail struct {
	code    int32
	message string
}

func detail(s interface {
	GetCode() int32
	GetMessage() string
}) *errorDetail {
	if s == nil || (s.GetCode() == 0 && s.GetMessage() == "") {
		return nil
	}
	return &errorDetail{code: s.GetCode(), message: s.GetMessage()}
}

// callbacks wires the tracker into go-control-plane's server.
func (t *tracker) callbacks() serverv3.Callbacks {
	return serverv3.CallbackFuncs{
		StreamOpenFunc: func(_ context.Context, id int64, _ string) error {
			t.open(streamKey{"sotw", id})
			return nil
		},
		StreamClosedFunc: func(id int64, _ *core.Node) { t.closed(streamKey{"sotw", id}) },
		StreamRequestFunc: func(id int64, req *discovery.DiscoveryRequest) error {
			t.request(streamKey{"sotw", id}, req.GetNode(), req.GetTypeUrl(), req.GetResponseNonce(), detail(req.GetErrorDetail()))
			return nil
		},
		StreamResponseFunc: func(_ context.Context, id int64, _ *discovery.DiscoveryRequest, resp *discovery.DiscoveryResponse) {
			t.response(streamKey{"sotw", id}, resp.GetTypeUrl(), resp.GetNonce(), resp.GetVersionInfo())
		},
		DeltaStreamOpenFunc: func(_ context.Context, id int64, _ string) error {
			t.open(streamKey{"delta", id})
			return nil
		},
		DeltaStreamClosedFunc: func(id int64, _ *core.Node) { t.closed(streamKey{"delta", id}) },
		StreamDeltaRequestFunc: func(id int64, req *discovery.DeltaDiscoveryRequest) error {
			t.request(streamKey{"delta", id}, req.GetNode(), req.GetTypeUrl(), req.GetResponseNonce(), detail(req.GetErrorDetail()))
			return nil
		},
		StreamDeltaResponseFunc: func(id int64, _ *discovery.DeltaDiscoveryRequest, resp *discovery.DeltaDiscoveryResponse) {
			t.response(streamKey{"delta", id}, resp.GetTypeUrl(), resp.GetNonce(), resp.GetSystemVersionInfo())
		},
	}
}
