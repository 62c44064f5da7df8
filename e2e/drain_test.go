package e2e_test

import (
	"context"
	"fmt"
	"testing"
	"time"

	"github.com/tetherlb/tether/registry"
)

// TestEnvoyOperatorDrainKeepsSessions: an operator's drain of app1 makes it DRAINING in a
// real Envoy while its agent keeps running: the sessions pinned to app1 keep reaching it, new
// clients start elsewhere; removing the drain makes app1 HEALTHY again.
func TestEnvoyOperatorDrainKeepsSessions(t *testing.T) {
	e, ev := envoyEnv(t, envConfig{})
	cli := e.etcd.Client(t)
	ctx, cancel := context.WithTimeout(context.Background(), 2*time.Minute)
	defer cancel()

	pins := pin(t, ev.base, []string{"app1"}, 2, 60)["app1"]
	if _, _, err := registry.PutDrain(ctx, cli, registry.DefaultPrefix, e.service, "app1",
		registry.Drain{Instance: "app1", Reason: "e2e", CreatedAt: time.Now().UTC()}); err != nil {
		t.Fatal(err)
	}
	want := allHealthy()
	want["app1"] = "DRAINING"
	e.waitEnvoy(t, ev, "app1 drained (DRAINING) in Envoy", want)
	for i := range 10 {
		for j, p := range pins {
			p.next(t, fmt.Sprintf("session %d on the drained app1, round %d", j, i))
		}
		if p := newBrowser(t, ev.base).mustPage(t); p.Instance == "app1" || p.Counter != 1 {
			t.Fatalf("new client %d: %s counter %d, want a new session elsewhere", i, p.Instance, p.Counter)
		}
	}
	if ok, err := registry.DeleteDrain(ctx, cli, registry.DefaultPrefix, e.service, "app1"); err != nil || !ok {
		t.Fatalf("undo: %v %v", ok, err)
	}
	e.waitEnvoy(t, ev, "app1 back (HEALTHY) in Envoy", allHealthy())
	for j, p := range pins {
		p.next(t, fmt.Sprintf("session %d after the undo", j))
	}
}
