package xdscache

import (
	"cmp"
	"maps"
	"slices"
	"strings"
	"time"

	core "github.com/envoyproxy/go-control-plane/envoy/config/core/v3"
	rpcstatus "google.golang.org/genproto/googleapis/rpc/status"
)

// StreamKey names a stream: go-control-plane numbers SotW and delta streams apart, so an ID
// alone is ambiguous.
type StreamKey struct {
	Delta bool
	ID    int64
}

// Variant is "sotw" or "delta".
func (k StreamKey) Variant() string {
	if k.Delta {
		return "delta"
	}
	return "sotw"
}

// ClientInfo is what the admin API shows of one connected Envoy stream.
type ClientInfo struct {
	StreamID    int64             `json:"streamId"`
	Variant     string            `json:"variant"` // sotw or delta
	NodeID      string            `json:"nodeId"`
	Group       string            `json:"group"`
	ConnectedAt time.Time         `json:"connectedAt"`
	Acked       map[string]string `json:"acked"` // short type -> last ACKed version
	NACKs       int               `json:"nacks"`
	LastNACK    string            `json:"lastNack,omitempty"`
	// EnvoyVersion is the release the node reports (user_agent_build_version); empty when it
	// reports none. BelowMinVersion is set when it is older than the control plane's minimum,
	// and Missing lists what it loses of the configuration (set by Observer.Named).
	EnvoyVersion    string   `json:"envoyVersion,omitempty"`
	BelowMinVersion bool     `json:"belowMinVersion,omitempty"`
	Missing         []string `json:"missing,omitempty"`
}

// Observer is told what the streams do, for logs and metrics. The cache calls it under its
// lock: it must neither block nor call the cache, nor keep the ClientInfo it is handed.
type Observer interface {
	Opened(key StreamKey)
	// Named: the stream's first request named its node (nil for a client that sends none).
	// It may fill in info's Envoy version fields.
	Named(info *ClientInfo, node *core.Node)
	// Responded: the server sends a response of typeURL.
	Responded(key StreamKey, typeURL string)
	// NACKed: the Envoy refused the response of version it was sent; info counts it already.
	NACKed(info *ClientInfo, typeURL, version string, code int32)
	Closed(info *ClientInfo)
}

// ShortType turns a type URL into its last element, e.g. "Cluster".
func ShortType(typeURL string) string {
	return typeURL[strings.LastIndexByte(typeURL, '.')+1:]
}

// responded records the nonce of a response the server sends, for the answer that names it.
func (c *Cache) responded(key StreamKey, typeURL, nonce, version string) {
	c.mu.Lock()
	defer c.mu.Unlock()
	if c.opts.Observer != nil {
		c.opts.Observer.Responded(key, typeURL)
	}
	if st := c.streams[key]; st != nil && nonce != "" {
		// Bound the map: Envoy ACKs or NACKs every nonce, but a misbehaving client may not.
		if len(st.sent) > 256 {
			clear(st.sent)
		}
		st.sent[nonce] = version
	}
}

// answered records whether a request ACKs or NACKs the response of nonce, for the admin API
// (two-phase publication reads the watchers' own record, see Acks). Only an answer to a nonce
// this stream was sent counts (a NACK in the Observer's metric, labelled by a type the
// callbacks have checked is served): a client cannot mint metric series or log lines.
func (c *Cache) answered(st *stream, typeURL, nonce string, nack *rpcstatus.Status) {
	if nonce == "" {
		return
	}
	version, sent := st.sent[nonce]
	if !sent {
		return
	}
	delete(st.sent, nonce)
	if nack == nil || (nack.GetCode() == 0 && nack.GetMessage() == "") {
		st.info.Acked[ShortType(typeURL)] = version
		return
	}
	st.info.NACKs++
	st.info.LastNACK = truncate(nack.GetMessage(), 1024)
	if c.opts.Observer != nil {
		c.opts.Observer.NACKed(&st.info, typeURL, version, nack.GetCode())
	}
}

// truncate bounds a client-supplied string kept in memory and logs.
func truncate(s string, n int) string {
	if len(s) <= n {
		return s
	}
	return s[:n] + "..."
}

// Streams returns the connected streams, by stream ID.
func (c *Cache) Streams() []ClientInfo {
	c.mu.Lock()
	defer c.mu.Unlock()
	out := make([]ClientInfo, 0, len(c.streams))
	for _, st := range c.streams {
		ci := st.info
		ci.Missing = slices.Clone(ci.Missing)
		ci.Acked = maps.Clone(ci.Acked)
		out = append(out, ci)
	}
	slices.SortFunc(out, func(a, b ClientInfo) int {
		return cmp.Or(cmp.Compare(a.StreamID, b.StreamID), strings.Compare(a.Variant, b.Variant))
	})
	return out
}
