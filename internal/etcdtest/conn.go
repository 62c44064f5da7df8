package etcdtest

import (
	"context"
	"sync"
	"testing"

	clientv3 "go.etcd.io/etcd/client/v3"
	"google.golang.org/grpc"
	"google.golang.org/grpc/connectivity"
	"google.golang.org/grpc/stats"
)

// ConnectionBreaks returns a channel closed once cli's connection to etcd leaves the ready
// state: the proof that an outage reached the client. etcd's client resumes a watch on a
// restarted server without an error reaching its caller, so a test that a watch survives a
// restart passes just as well when no outage happened unless it holds this proof. The
// connection must be ready when it is called (the client has answered a request).
func ConnectionBreaks(t testing.TB, cli *clientv3.Client) <-chan struct{} {
	t.Helper()
	conn := cli.ActiveConnection()
	if s := conn.GetState(); s != connectivity.Ready {
		t.Fatalf("etcd client connection %s, not ready, before the outage", s)
	}
	ctx, cancel := context.WithCancel(context.Background())
	t.Cleanup(cancel)
	broke := make(chan struct{})
	go func() {
		if conn.WaitForStateChange(ctx, connectivity.Ready) {
			close(broke)
		}
	}()
	return broke
}

// ConnWatch is ConnectionBreaks for an etcd client the test does not hold (a control
// plane's or an agent's own): a gRPC stats handler, given to the client through DialOption
// in its clientv3.Config.DialOptions, that sees each of the client's connections begin and
// end, and which member each stream was opened to.
type ConnWatch struct {
	mu      sync.Mutex
	open    int
	ended   chan struct{}     // closed, and replaced, at each connection end
	streams map[string]string // method -> the address of the last stream opened for it
}

// NewConnWatch returns a ConnWatch that has seen no connection yet.
func NewConnWatch() *ConnWatch {
	return &ConnWatch{ended: make(chan struct{}), streams: map[string]string{}}
}

// DialOption installs w in the client it is given to.
func (w *ConnWatch) DialOption() grpc.DialOption { return grpc.WithStatsHandler(w) }

// NextEnd returns a channel closed at the client's next connection end. A connection must be
// open when it is called (the client has answered a request): an end then proves the outage
// reached the client, where a client that never connected would see none.
func (w *ConnWatch) NextEnd(t testing.TB) <-chan struct{} {
	t.Helper()
	w.mu.Lock()
	defer w.mu.Unlock()
	if w.open == 0 {
		t.Fatal("no etcd client connection open before the outage")
	}
	return w.ended
}

// StreamTo returns the host:port the client last opened a stream of the full method name
// (as "/etcdserverpb.Lease/LeaseKeepAlive") to, or "" if it never did.
func (w *ConnWatch) StreamTo(method string) string {
	w.mu.Lock()
	defer w.mu.Unlock()
	return w.streams[method]
}

// HandleConn counts the connections open and announces each end.
func (w *ConnWatch) HandleConn(_ context.Context, s stats.ConnStats) {
	w.mu.Lock()
	defer w.mu.Unlock()
	switch s.(type) {
	case *stats.ConnBegin:
		w.open++
	case *stats.ConnEnd:
		w.open--
		close(w.ended)
		w.ended = make(chan struct{})
	}
}

// HandleRPC notes where each stream goes.
func (w *ConnWatch) HandleRPC(_ context.Context, s stats.RPCStats) {
	if h, ok := s.(*stats.OutHeader); ok && h.RemoteAddr != nil {
		w.mu.Lock()
		w.streams[h.FullMethod] = h.RemoteAddr.String()
		w.mu.Unlock()
	}
}

// TagConn completes stats.Handler.
func (w *ConnWatch) TagConn(ctx context.Context, _ *stats.ConnTagInfo) context.Context { return ctx }

// TagRPC completes stats.Handler.
func (w *ConnWatch) TagRPC(ctx context.Context, _ *stats.RPCTagInfo) context.Context { return ctx }
