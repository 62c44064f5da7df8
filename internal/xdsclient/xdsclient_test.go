package xdsclient_test

import (
	"context"
	"errors"
	"net"
	"strings"
	"testing"
	"time"

	"google.golang.org/grpc"
	"google.golang.org/grpc/credentials/insecure"

	"github.com/tetherlb/tether/internal/xdsclient"
)

// deadServer is a gRPC server on loopback that serves no ADS: every stream fails at once.
func deadServer(t *testing.T) *grpc.ClientConn {
	t.Helper()
	l, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	srv := grpc.NewServer()
	go func() { _ = srv.Serve(l) }()
	t.Cleanup(srv.Stop)
	conn, err := grpc.NewClient(l.Addr().String(), grpc.WithTransportCredentials(insecure.NewCredentials()))
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { conn.Close() })
	return conn
}

// TestWaitForEndsWhenTheStreamFails: a client whose stream failed can receive nothing more,
// so WaitFor says so at once with the stream's error instead of waiting out its deadline.
func TestWaitForEndsWhenTheStreamFails(t *testing.T) {
	conn := deadServer(t)
	for _, v := range []xdsclient.Variant{xdsclient.SotW, xdsclient.Delta} {
		c := xdsclient.New(v, "envoy-1", "default")
		done := c.Start(context.Background(), conn)
		ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
		began := time.Now()
		err := c.WaitFor(ctx, func(xdsclient.View) bool { return false })
		cancel()
		if !errors.Is(err, xdsclient.ErrStopped) || !strings.Contains(err.Error(), "Unimplemented") {
			t.Fatalf("%s: WaitFor on a failed stream: %v; want ErrStopped with the stream's error", v, err)
		}
		if waited := time.Since(began); waited > 5*time.Second {
			t.Errorf("%s: WaitFor took %s to see the failed stream", v, waited)
		}
		if runErr := <-done; runErr == nil || c.Err() == nil {
			t.Errorf("%s: Run returned %v, Err() %v; want the stream's error from both", v, runErr, c.Err())
		}
		// A condition that already holds is still reported as met.
		if err := c.WaitFor(context.Background(), func(xdsclient.View) bool { return true }); err != nil {
			t.Errorf("%s: WaitFor with a condition that holds: %v", v, err)
		}
	}
}

// TestWaitForWaitsForANewRun: once Start returns, the earlier run's failure no longer counts;
// a run ended by its own context is no failure either.
func TestWaitForWaitsForANewRun(t *testing.T) {
	dead := deadServer(t)
	c := xdsclient.New(xdsclient.Delta, "envoy-1", "default")
	if err := <-c.Start(context.Background(), dead); err == nil {
		t.Fatal("a run against a server without ADS succeeded")
	}
	// A new run on a connection to a server that never answers: it ends only with its context.
	mute, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	defer mute.Close()
	idle, err := grpc.NewClient(mute.Addr().String(), grpc.WithTransportCredentials(insecure.NewCredentials()))
	if err != nil {
		t.Fatal(err)
	}
	defer idle.Close()
	runCtx, stop := context.WithCancel(context.Background())
	done := c.Start(runCtx, idle)
	ctx, cancel := context.WithTimeout(context.Background(), 300*time.Millisecond)
	err = c.WaitFor(ctx, func(xdsclient.View) bool { return false })
	cancel()
	if !errors.Is(err, xdsclient.ErrTimeout) {
		t.Errorf("WaitFor during a new run: %v; want ErrTimeout, not the earlier run's failure", err)
	}
	stop()
	if err := <-done; err != nil {
		t.Logf("run ended by its context: %v", err)
	}
	if err := c.Err(); err != nil {
		t.Errorf("Err() after a run ended by its context: %v; want nil", err)
	}
}
