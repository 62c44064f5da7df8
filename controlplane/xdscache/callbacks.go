package xdscache

import (
	"context"
	"strings"

	core "github.com/envoyproxy/go-control-plane/envoy/config/core/v3"
	discovery "github.com/envoyproxy/go-control-plane/envoy/service/discovery/v3"
	serverv3 "github.com/envoyproxy/go-control-plane/pkg/server/v3"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/status"
)

// Callbacks returns the server callbacks the cache needs, calling next's after its own: they
// open and close streams (a group with no stream left is forgotten), bind each request to its
// stream for the CreateWatch that follows, record the nonces sent and answered (Streams), and
// end a stream that asks for a type not served before anything (next included) sees the request.
func (c *Cache) Callbacks(next serverv3.Callbacks) serverv3.Callbacks {
	if next == nil {
		next = serverv3.CallbackFuncs{}
	}
	return callbacks{c: c, next: next}
}

type callbacks struct {
	c    *Cache
	next serverv3.Callbacks
}

// errType refuses a type not served: each one would add a watch to the stream.
// The type is the client's: it is cut so that the error carries no client-sized text.
func errType(typeURL string) error {
	return status.Errorf(codes.InvalidArgument, "type %q is not served; this control plane serves %s", truncate(typeURL, MaxFieldBytes), strings.Join(Types, ", "))
}

func (b callbacks) OnStreamOpen(ctx context.Context, id int64, typeURL string) error {
	if err := b.next.OnStreamOpen(ctx, id, typeURL); err != nil {
		return err
	}
	b.c.open(StreamKey{false, id}, typeURL)
	return nil
}

func (b callbacks) OnStreamClosed(id int64, node *core.Node) {
	b.c.closeStream(StreamKey{false, id})
	b.next.OnStreamClosed(id, node)
}

func (b callbacks) OnStreamRequest(id int64, req *discovery.DiscoveryRequest) error {
	if typeIndex(req.GetTypeUrl()) < 0 {
		return errType(req.GetTypeUrl())
	}
	if err := b.c.checkSotw(id, req); err != nil {
		return err
	}
	if err := b.next.OnStreamRequest(id, req); err != nil {
		return err
	}
	return b.c.bindSotw(id, req)
}

func (b callbacks) OnStreamResponse(ctx context.Context, id int64, req *discovery.DiscoveryRequest, resp *discovery.DiscoveryResponse) {
	b.c.responded(StreamKey{false, id}, resp.GetTypeUrl(), resp.GetNonce(), resp.GetVersionInfo())
	b.next.OnStreamResponse(ctx, id, req, resp)
}

func (b callbacks) OnDeltaStreamOpen(ctx context.Context, id int64, typeURL string) error {
	if err := b.next.OnDeltaStreamOpen(ctx, id, typeURL); err != nil {
		return err
	}
	b.c.open(StreamKey{true, id}, typeURL)
	return nil
}

func (b callbacks) OnDeltaStreamClosed(id int64, node *core.Node) {
	b.c.closeStream(StreamKey{true, id})
	b.next.OnDeltaStreamClosed(id, node)
}

func (b callbacks) OnStreamDeltaRequest(id int64, req *discovery.DeltaDiscoveryRequest) error {
	// The delta server fills in the type of a single-type stream after this callback; an ADS
	// request without one is refused by the server itself.
	if t := req.GetTypeUrl(); t != "" && typeIndex(t) < 0 {
		return errType(t)
	}
	if err := b.c.checkDelta(id, req); err != nil {
		return err
	}
	if err := b.next.OnStreamDeltaRequest(id, req); err != nil {
		return err
	}
	return b.c.bindDelta(id, req)
}

func (b callbacks) OnStreamDeltaResponse(id int64, req *discovery.DeltaDiscoveryRequest, resp *discovery.DeltaDiscoveryResponse) {
	b.c.responded(StreamKey{true, id}, resp.GetTypeUrl(), resp.GetNonce(), resp.GetSystemVersionInfo())
	b.next.OnStreamDeltaResponse(id, req, resp)
}

func (b callbacks) OnFetchRequest(ctx context.Context, req *discovery.DiscoveryRequest) error {
	return b.next.OnFetchRequest(ctx, req)
}

func (b callbacks) OnFetchResponse(req *discovery.DiscoveryRequest, resp *discovery.DiscoveryResponse) {
	b.next.OnFetchResponse(req, resp)
}
