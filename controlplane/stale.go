package controlplane

import (
	"context"
	"errors"
	"fmt"
	"sync"
	"time"

	"google.golang.org/grpc"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/status"
)

// DefaultStaleAfter bounds how long a replica serves without confirming etcd's revision
// before it steps down (/readyz fails, its xDS streams are closed): three of the watcher's
// linearizable reads (registry.DefaultProgressInterval, 5 s), so that one slow or lost read
// is not enough.
const DefaultStaleAfter = 15 * time.Second

// errUnconfirmed ends the xDS streams of a replica that stepped down.
var errUnconfirmed = errors.New("this control plane has lost etcd: its configuration may be stale; connect to another replica")

// unconfirmedFor returns how long the replica has gone without confirming etcd's revision,
// and whether that is past the bound (false before the first listing, when /readyz fails
// anyway, and when the bound is off).
func (cp *ControlPlane) unconfirmedFor(now time.Time) (time.Duration, bool) {
	if cp.cfg.StaleAfter <= 0 {
		return 0, false
	}
	at := cp.watcher.Confirmed()
	if at.IsZero() {
		return 0, false
	}
	age := now.Sub(at)
	return age, age > cp.cfg.StaleAfter
}

// watchConfirmation steps the replica down once it has gone StaleAfter without confirming
// etcd's revision: it logs, sets tether_etcd_unconfirmed and closes every xDS stream once,
// with Unavailable, so that Envoys reconnect, through their list of control planes or the
// address in front of them, to a replica that follows etcd (an Envoy keeps its configuration
// while it reconnects). Streams that connect meanwhile are served the last configuration:
// with a single replica, or etcd lost by every replica, that is the best there is, and it is
// what Envoy keeps anyway. /readyz fails for the whole time (see admin.Handler). When a
// confirmation comes again, the replica is ready again.
func (cp *ControlPlane) watchConfirmation(ctx context.Context) {
	if cp.cfg.StaleAfter <= 0 {
		return
	}
	t := time.NewTicker(staleCheckEvery(cp.cfg.StaleAfter))
	defer t.Stop()
	down := false
	for {
		select {
		case <-ctx.Done():
			return
		case <-t.C:
		}
		age, stale := cp.unconfirmedFor(time.Now())
		switch {
		case stale && !down:
			down = true
			cp.m.unconfirmed.Set(1)
			n := cp.cutter.closeAll(errUnconfirmed)
			cp.log.Error().Dur("unconfirmedFor", age).Dur("bound", cp.cfg.StaleAfter).Int("streamsClosed", n).
				Msg("etcd's revision not confirmed within the bound: /readyz fails and the xDS streams are closed, so that Envoys move to a current replica")
		case !stale && down:
			down = false
			cp.m.unconfirmed.Set(0)
			cp.log.Info().Msg("etcd's revision confirmed again: ready")
		}
	}
}

// staleCheckEvery is how often watchConfirmation looks: a tenth of the bound, so that a
// replica steps down within a tenth of it past it, and not under 10 ms (a bound under 10 ns
// would make a ticker of zero, which panics).
func staleCheckEvery(bound time.Duration) time.Duration {
	return max(bound/10, 10*time.Millisecond)
}

// streamCutter is a gRPC stream interceptor that can end every open stream at once.
type streamCutter struct {
	mu      sync.Mutex
	streams map[*cutStream]struct{}
}

func newStreamCutter() *streamCutter { return &streamCutter{streams: map[*cutStream]struct{}{}} }

// intercept runs a stream under a context closeAll can cancel; a stream it cancelled ends
// with Unavailable and the cause.
func (c *streamCutter) intercept(srv any, ss grpc.ServerStream, _ *grpc.StreamServerInfo, handler grpc.StreamHandler) error {
	ctx, cancel := context.WithCancelCause(ss.Context())
	s := &cutStream{ServerStream: ss, ctx: ctx, cancel: cancel}
	c.mu.Lock()
	c.streams[s] = struct{}{}
	c.mu.Unlock()
	defer func() {
		c.mu.Lock()
		delete(c.streams, s)
		c.mu.Unlock()
		cancel(nil)
	}()
	err := handler(srv, s)
	if cause := context.Cause(ctx); errors.Is(cause, errUnconfirmed) {
		return status.Error(codes.Unavailable, cause.Error())
	}
	return err
}

// closeAll ends every open stream with cause and returns how many there were.
func (c *streamCutter) closeAll(cause error) int {
	c.mu.Lock()
	defer c.mu.Unlock()
	for s := range c.streams {
		s.cancel(cause)
	}
	return len(c.streams)
}

// cutStream is a stream whose context and receives end when it is cut: go-control-plane's
// server reads a stream in a goroutine blocked in Recv, which a context alone does not wake.
type cutStream struct {
	grpc.ServerStream
	ctx    context.Context
	cancel context.CancelCauseFunc
}

func (s *cutStream) Context() context.Context { return s.ctx }

// RecvMsg receives in a goroutine so that a cut ends it at once. The abandoned receive ends
// when the handler returns and gRPC cancels the stream; the caller never reads m after an
// error.
func (s *cutStream) RecvMsg(m any) error {
	if err := s.ctx.Err(); err != nil {
		return fmt.Errorf("xDS stream cut: %w", context.Cause(s.ctx))
	}
	done := make(chan error, 1)
	go func() { done <- s.ServerStream.RecvMsg(m) }()
	select {
	case err := <-done:
		return err
	case <-s.ctx.Done():
		return fmt.Errorf("xDS stream cut: %w", context.Cause(s.ctx))
	}
}
