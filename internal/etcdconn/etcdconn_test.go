package etcdconn_test

import (
	"context"
	"errors"
	"testing"
	"time"

	clientv3 "go.etcd.io/etcd/client/v3"

	"github.com/tetherlb/tether/internal/etcdconn"
)

// Dial keeps trying an unreachable etcd with growing waits, until its context ends.
func TestDialRetriesUntilCanceled(t *testing.T) {
	ctx, cancel := context.WithCancel(context.Background())
	defer cancel()
	var waits []time.Duration
	_, err := etcdconn.Dial(ctx, clientv3.Config{
		Endpoints: []string{"http://127.0.0.1:1"}, Username: "u", Password: "p", DialTimeout: 50 * time.Millisecond,
	}, func(_ error, wait time.Duration) {
		waits = append(waits, wait)
		if len(waits) == 4 {
			cancel()
		}
	})
	if !errors.Is(err, context.Canceled) || len(waits) != 4 {
		t.Fatalf("Dial: %v after %d retries; want context.Canceled after 4", err, len(waits))
	}
	if waits[0] >= etcdconn.BackoffMin || waits[3] < 4*etcdconn.BackoffMin {
		t.Errorf("waits %v do not grow from below %s", waits, etcdconn.BackoffMin)
	}
}

func TestBackoffBounds(t *testing.T) {
	var b etcdconn.Backoff
	var last time.Duration
	for i := range 20 {
		d := b.Next()
		if d < etcdconn.BackoffMin/2 || d >= etcdconn.BackoffMax {
			t.Fatalf("attempt %d: delay %s outside [%s, %s)", i, d, etcdconn.BackoffMin/2, etcdconn.BackoffMax)
		}
		last = d
	}
	if last < etcdconn.BackoffMax/2 {
		t.Fatalf("after 20 attempts the delay is %s, want it capped near %s", last, etcdconn.BackoffMax)
	}
	b.Reset()
	if d := b.Next(); d >= etcdconn.BackoffMin {
		t.Fatalf("after reset: %s, want below %s", d, etcdconn.BackoffMin)
	}
}
