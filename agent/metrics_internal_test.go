package agent

import (
	"io"
	"net/http"
	"net/http/httptest"
	"strings"
	"testing"

	"github.com/tetherlb/tether/registry"
)

func get(t *testing.T, h http.Handler, path string) (int, string) {
	t.Helper()
	rec := httptest.NewRecorder()
	h.ServeHTTP(rec, httptest.NewRequest(http.MethodGet, path, nil))
	body, _ := io.ReadAll(rec.Result().Body)
	return rec.Code, string(body)
}

// TestMetricsSayWhatWasObserved: the gauges follow the last observed instance and the
// registration; /healthz answers 200 only while registered, with the warning when there is
// one; every counter's labels are exported at zero from the start.
func TestMetricsSayWhatWasObserved(t *testing.T) {
	m := newMetrics("app", "app-1")
	h := m.handler()
	if code, body := get(t, h, "/healthz"); code != http.StatusServiceUnavailable || !strings.Contains(body, "not registered") {
		t.Errorf("/healthz before registration: %d %q, want 503 saying not registered", code, body)
	}
	m.setRegistered(true)
	if code, body := get(t, h, "/healthz"); code != http.StatusOK || body != "ok\n" {
		t.Errorf("/healthz registered: %d %q, want 200 ok", code, body)
	}
	m.observe(registry.Instance{State: registry.StateFull, Load: registry.Load{Sessions: 12, CPU: 45.5, Memory: 67.5, MemoryMB: 3}})
	_, body := get(t, h, "/metrics")
	for _, want := range []string{
		`tether_agent_registered 1`,
		`tether_agent_state{state="full"} 1`,
		`tether_agent_state{state="available"} 0`,
		`tether_agent_state{state="draining"} 0`,
		`tether_agent_state{state="unhealthy"} 0`,
		`tether_agent_sessions 12`,
		`tether_agent_cpu_percent 45.5`,
		`tether_agent_memory_percent 67.5`,
		`tether_agent_memory_bytes 3.145728e+06`,
		`tether_agent_info{instance="app-1",service="app",version="` + Version + `"} 1`,
		`tether_agent_etcd_writes_total{cause="register"} 0`,
		`tether_agent_etcd_writes_total{cause="drain"} 0`,
		`tether_agent_etcd_errors_total{op="adopt"} 0`,
		`tether_agent_probe_failures_total{probe="address"} 0`,
	} {
		if !strings.Contains(body, want+"\n") {
			t.Errorf("/metrics lacks %s", want)
		}
	}
	m.setRegistered(false)
	if _, body := get(t, h, "/metrics"); !strings.Contains(body, "tether_agent_registered 0\n") {
		t.Error("/metrics: tether_agent_registered is not 0 once unregistered")
	}
	if code, _ := get(t, h, "/healthz"); code != http.StatusServiceUnavailable {
		t.Errorf("/healthz unregistered again: %d, want 503", code)
	}
	m.warning = "address 127.0.0.1 is loopback"
	m.setRegistered(true)
	if code, body := get(t, h, "/healthz"); code != http.StatusOK || body != "ok, but address 127.0.0.1 is loopback\n" {
		t.Errorf("/healthz with a warning: %d %q", code, body)
	}
}
