package etcdtest

import (
	"context"
	"testing"

	clientv3 "go.etcd.io/etcd/client/v3"
	"google.golang.org/grpc/connectivity"
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
