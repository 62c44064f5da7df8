package agent

import (
	"net/http"
	"sync/atomic"

	"github.com/prometheus/client_golang/prometheus"
	"github.com/prometheus/client_golang/prometheus/collectors"
	"github.com/prometheus/client_golang/prometheus/promhttp"
	"github.com/tetherlb/tether/registry"
)

// metrics are the agent's own Prometheus metrics, on a private registry.
type metrics struct {
	reg        *prometheus.Registry
	state      *prometheus.GaugeVec
	registered prometheus.Gauge
	sessions   prometheus.Gauge
	cpu        prometheus.Gauge
	memory     prometheus.Gauge
	memoryMB   prometheus.Gauge
	writes     *prometheus.CounterVec
	etcdErrors *prometheus.CounterVec
	probeFails *prometheus.CounterVec
	isReg      atomic.Bool
	// warning is said by /healthz beside "ok": what a control plane may refuse (set before
	// the server starts).
	warning string
}

func newMetrics(service, id string) *metrics {
	m := &metrics{
		reg: prometheus.NewRegistry(),
		state: prometheus.NewGaugeVec(prometheus.GaugeOpts{
			Name: "tether_agent_state", Help: "1 for the instance's current state, 0 for the others.",
		}, []string{"state"}),
		registered: prometheus.NewGauge(prometheus.GaugeOpts{
			Name: "tether_agent_registered", Help: "1 while the instance key is held under the agent's lease.",
		}),
		sessions: prometheus.NewGauge(prometheus.GaugeOpts{Name: "tether_agent_sessions", Help: "Last sampled session count."}),
		cpu:      prometheus.NewGauge(prometheus.GaugeOpts{Name: "tether_agent_cpu_percent", Help: "Last sampled CPU load, percent."}),
		memory:   prometheus.NewGauge(prometheus.GaugeOpts{Name: "tether_agent_memory_percent", Help: "Last sampled memory use, percent."}),
		memoryMB: prometheus.NewGauge(prometheus.GaugeOpts{Name: "tether_agent_memory_bytes", Help: "Last sampled memory use, bytes."}),
		writes: prometheus.NewCounterVec(prometheus.CounterOpts{
			Name: "tether_agent_etcd_writes_total", Help: "Instance writes to etcd, by cause (register, state, load, heartbeat, leaving, drain).",
		}, []string{"cause"}),
		etcdErrors: prometheus.NewCounterVec(prometheus.CounterOpts{
			Name: "tether_agent_etcd_errors_total", Help: "Failed etcd operations, by operation.",
		}, []string{"op"}),
		probeFails: prometheus.NewCounterVec(prometheus.CounterOpts{
			Name: "tether_agent_probe_failures_total", Help: "Failed samples or probes, by probe (health, available, sessions, load, address).",
		}, []string{"probe"}),
	}
	info := prometheus.NewGauge(prometheus.GaugeOpts{
		Name: "tether_agent_info", Help: "Agent version and instance identity.",
		ConstLabels: prometheus.Labels{"version": Version, "service": service, "instance": id},
	})
	info.Set(1)
	m.reg.MustRegister(m.state, m.registered, m.sessions, m.cpu, m.memory, m.memoryMB, m.writes, m.etcdErrors, m.probeFails, info,
		collectors.NewGoCollector(), collectors.NewProcessCollector(collectors.ProcessCollectorOpts{}))
	// Every label value is exported from the start, at zero, so that an alert on increase()
	// needs no absent() for the time before the first event.
	for _, cause := range []string{"register", writeState, writeLoad, writeHeartbeat, writeLeaving, writeDrain} {
		m.writes.WithLabelValues(cause)
	}
	for _, op := range []string{"create", "update", "delete", "revoke", "adopt"} {
		m.etcdErrors.WithLabelValues(op)
	}
	for _, probe := range []string{"health", "available", "sessions", "load", "address"} {
		m.probeFails.WithLabelValues(probe)
	}
	return m
}

func (m *metrics) setRegistered(ok bool) {
	m.isReg.Store(ok)
	if ok {
		m.registered.Set(1)
	} else {
		m.registered.Set(0)
	}
}

func (m *metrics) observe(in registry.Instance) {
	for _, s := range []registry.InstanceState{registry.StateAvailable, registry.StateFull, registry.StateDraining, registry.StateUnhealthy} {
		v := 0.0
		if s == in.State {
			v = 1
		}
		m.state.WithLabelValues(string(s)).Set(v)
	}
	m.sessions.Set(float64(in.Load.Sessions))
	m.cpu.Set(in.Load.CPU)
	m.memory.Set(in.Load.Memory)
	m.memoryMB.Set(in.Load.MemoryMB * mib)
}

// handler serves /metrics and /healthz (200 while registered, 503 otherwise).
func (m *metrics) handler() http.Handler {
	mux := http.NewServeMux()
	mux.Handle("GET /metrics", promhttp.HandlerFor(m.reg, promhttp.HandlerOpts{}))
	mux.HandleFunc("GET /healthz", func(w http.ResponseWriter, _ *http.Request) {
		if m.isReg.Load() {
			if m.warning != "" {
				_, _ = w.Write([]byte("ok, but " + m.warning + "\n"))
				return
			}
			_, _ = w.Write([]byte("ok\n"))
			return
		}
		http.Error(w, "not registered in etcd", http.StatusServiceUnavailable)
	})
	return mux
}
