package ctl

import (
	"context"
	"strings"
	"testing"
	"time"

	"github.com/tetherlb/tether/internal/etcdtest"
	"github.com/tetherlb/tether/registry"
)

// TestStatusShowsDrains: status reads the drains and shows a drained instance as the control
// plane serves it (DRAINING, with the drain in its reason), an unhealthy one as unhealthy, and
// lists the drains.
func TestStatusShowsDrains(t *testing.T) {
	srv := etcdtest.Start(t)
	cli := srv.Client(t)
	seed(t, cli)
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	d := registry.Drain{Instance: "app-1", Reason: "new disk", CreatedAt: time.Now().UTC().Add(-90 * time.Second)}
	if _, _, err := registry.PutDrain(ctx, cli, "/tether", "app", "app-1", d); err != nil {
		t.Fatal(err)
	}
	code, out, errOut := runStatus(t, "--etcd-endpoints", srv.ClientURL)
	if code != 0 {
		t.Fatalf("exit %d: %s", code, errOut)
	}
	for _, want := range []string{
		"DRAINING   drained by operator (drain app-1)",
		"(1 available, 1 full, 2 draining, 0 unhealthy)",
		"1 drain:",
		"app      app-1  instance app-1  1m3",
	} {
		if !strings.Contains(out, want) {
			t.Errorf("status lacks %q:\n%s", want, out)
		}
	}
	code, out, _ = runStatus(t, "--etcd-endpoints", srv.ClientURL, "--json")
	if code != 0 || !strings.Contains(out, `"drain": {`) || !strings.Contains(out, `"matched": [`) || !strings.Contains(out, `"drained": 1`) {
		t.Errorf("status --json lacks the drain:\n%s", out)
	}
}
