package agent_test

import (
	"net/http"
	"net/http/httptest"
	"strings"
	"sync/atomic"
	"testing"
	"time"

	"github.com/tetherlb/tether/internal/agenttest"
	"github.com/tetherlb/tether/internal/etcdtest"
	"github.com/tetherlb/tether/registry"
)

// TestBackendHangOrCrashIsUnhealthy: a backend whose health URL stops answering (hangs past
// --probe-timeout), then one that is gone (connection refused), is published unhealthy with
// the reason, and healthy again once it answers.
func TestBackendHangOrCrashIsUnhealthy(t *testing.T) {
	etcd := etcdtest.Start(t)
	cli := etcd.Client(t)
	b := agenttest.NewBackend(t)
	hang := make(chan struct{})
	var hanging atomic.Bool
	health := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		if hanging.Load() {
			select {
			case <-r.Context().Done():
			case <-hang:
			}
			return
		}
		w.WriteHeader(http.StatusAccepted)
	}))
	defer health.Close()
	defer close(hang)
	cfg := config(etcd, b, "app-1")
	cfg.HealthURL = health.URL + "/healthcheck"
	cfg.ProbeTimeout = 200 * time.Millisecond
	start(t, cfg)
	etcdtest.WaitInstance(t, cli, "app-1", 5*time.Second, "available at start", state(registry.StateAvailable))
	w := etcdtest.WatchInstance(t, cli, "app-1")

	hanging.Store(true)
	in := w.Next(t, 5*time.Second, "unhealthy while the health URL hangs", state(registry.StateUnhealthy), state(registry.StateAvailable))
	if !strings.HasPrefix(in.Reason, "health check failed:") || !strings.Contains(in.Reason, "Timeout") && !strings.Contains(in.Reason, "deadline") {
		t.Errorf("reason %q; want the health check's timeout", in.Reason)
	}
	hanging.Store(false)
	w.Next(t, 5*time.Second, "healthy again", state(registry.StateAvailable), state(registry.StateUnhealthy))

	health.Close() // the backend is gone: connection refused
	in = w.Next(t, 5*time.Second, "unhealthy once the backend is gone", state(registry.StateUnhealthy), state(registry.StateAvailable))
	if !strings.Contains(in.Reason, "refused") {
		t.Errorf("reason %q; want the refused connection", in.Reason)
	}
}
