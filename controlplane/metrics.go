package controlplane

import (
	"github.com/prometheus/client_golang/prometheus"
	"github.com/prometheus/client_golang/prometheus/collectors"
	"github.com/prometheus/client_golang/prometheus/promauto"

	"github.com/tetherlb/tether/controlplane/xdscache"
)

// metrics are the control plane's Prometheus metrics, on a private registry.
type metrics struct {
	reg            *prometheus.Registry
	instances      *prometheus.GaugeVec
	services       prometheus.Gauge
	rejected       *prometheus.CounterVec
	rejectedNow    prometheus.Gauge
	problems       prometheus.Gauge
	streams        *prometheus.GaugeVec
	responses      *prometheus.CounterVec
	nacks          *prometheus.CounterVec
	snapshots      prometheus.Counter
	snapshotErrors prometheus.Counter
	translate      prometheus.Histogram
	eventToPush    prometheus.Histogram
	etcdEvents     prometheus.Counter
	revision       prometheus.Gauge
	ready          prometheus.Gauge
	held           prometheus.Gauge
	vanished       prometheus.Gauge
	unconfirmed    prometheus.Gauge
	drained        prometheus.Gauge
	massRemovals   *prometheus.CounterVec
	firstPhase     prometheus.Gauge
	promotions     *prometheus.HistogramVec
	lagging        prometheus.Gauge
	laggingTotal   prometheus.Counter
	oldEnvoys      prometheus.Gauge
	refused        *prometheus.CounterVec
	overLimit      *prometheus.GaugeVec
}

func newMetrics() *metrics {
	reg := prometheus.NewRegistry()
	reg.MustRegister(collectors.NewGoCollector(), collectors.NewProcessCollector(collectors.ProcessCollectorOpts{}))
	// Each metric is registered as it is made: none can be left out of the registry.
	f := promauto.With(reg)
	gauge := func(name, help string) prometheus.Gauge {
		return f.NewGauge(prometheus.GaugeOpts{Name: name, Help: help})
	}
	counter := func(name, help string) prometheus.Counter {
		return f.NewCounter(prometheus.CounterOpts{Name: name, Help: help})
	}
	gauges := func(name, help string, labels ...string) *prometheus.GaugeVec {
		return f.NewGaugeVec(prometheus.GaugeOpts{Name: name, Help: help}, labels)
	}
	counters := func(name, help string, labels ...string) *prometheus.CounterVec {
		return f.NewCounterVec(prometheus.CounterOpts{Name: name, Help: help}, labels)
	}
	latency := func(name, help string) prometheus.Histogram {
		return f.NewHistogram(prometheus.HistogramOpts{Name: name, Help: help,
			Buckets: []float64{.0005, .001, .0025, .005, .01, .025, .05, .1, .25, .5, 1, 2.5}})
	}
	m := &metrics{
		reg:         reg,
		instances:   gauges("tether_registry_instances", "Registered instances by state.", "state"),
		services:    gauge("tether_registry_services", "Services in the registry (configured or with instances)."),
		rejected:    counters("tether_registry_rejected_entries_total", "Registry values rejected by decoding or validation.", "kind"),
		rejectedNow: gauge("tether_registry_rejected_entries", "Registry keys whose current value is rejected."),
		problems: gauge("tether_translate_problems",
			"Conflicts found by the last translation (e.g. two services claiming one domain and path)."),
		streams:   gauges("tether_xds_streams", "Connected xDS streams by variant (sotw, delta).", "variant"),
		responses: counters("tether_xds_responses_total", "xDS responses sent, by variant and resource type.", "variant", "type"),
		nacks:     counters("tether_xds_nacks_total", "xDS NACKs received from Envoys, by resource type.", "type"),
		snapshots: counter("tether_snapshots_total", "Configuration snapshots published (pushes)."),
		snapshotErrors: counter("tether_snapshot_errors_total",
			"Translations not published because the snapshot was invalid; the last good one stays."),
		translate: latency("tether_translate_duration_seconds",
			"Time to translate the registry into Envoy resources and build the snapshot."),
		eventToPush: latency("tether_event_to_push_seconds",
			"Time from receiving an etcd change to publishing the snapshot holding it."),
		etcdEvents: counter("tether_etcd_events_total", "etcd watch events applied to the registry."),
		revision:   gauge("tether_registry_revision", "etcd revision of the last published snapshot."),
		drained: gauge("tether_drained_instances",
			"Instances an operator's drain selects (served DRAINING whatever their agents report)."),
		held: gauge("tether_held_instances",
			"Instances gone from the registry but held in the configuration by the mass-disappearance guard."),
		vanished: gauge("tether_vanished_instances",
			"Instances gone from the registry without draining, kept as DRAINING for --vanish-grace for their agents to come back."),
		unconfirmed: gauge("tether_etcd_unconfirmed",
			"1 while this replica has not confirmed etcd's revision for longer than --stale-after (/readyz fails, xDS streams were closed)."),
		massRemovals: counters("tether_mass_removals_total",
			"Instances held back for the grace period by the mass-disappearance guard, by service.", "service"),
		firstPhase: gauge("tether_first_phase_endpoints",
			"Endpoints published as DRAINING until every Envoy knows them (two-phase publication)."),
		promotions: f.NewHistogramVec(prometheus.HistogramOpts{
			Name: "tether_promotion_seconds", Help: "Promotions of new endpoints from their first phase, and how long it lasted; outcome acked (every Envoy knew it) or settled (--publish-settle ended first).",
			Buckets: []float64{.005, .01, .025, .05, .1, .25, .5, 1, 2.5, 5, 10, 30},
		}, []string{"outcome"}),
		lagging: gauge("tether_lagging_envoys", "Envoys that held a promotion past --publish-settle and have not caught up."),
		oldEnvoys: gauge("tether_envoys_below_min_version",
			"Connected Envoys older than Tether's minimum version ("+MinEnvoyVersion+"): they silently lose part of the configuration."),
		refused: counters("tether_xds_refused_total",
			"xDS streams and connections refused for going over a bound, by reason (names, field-size, connections-per-peer).", "reason"),
		overLimit: gauges("tether_registry_over_limit",
			"Services and instances left out for being past --max-services or --max-instances-per-service (the newest are left out), by kind.", "kind"),
		laggingTotal: counter("tether_lagging_envoys_total",
			"Times an Envoy was reported lagging (held a promotion past --publish-settle)."),
		ready: gauge("tether_ready", "1 once the first full registry list is translated and published."),
	}
	// Every label value known in advance is exported from the start, at zero: an alert on
	// increase() or rate() then needs no absent() for the time before the first event.
	for _, kind := range []string{"service", "instance", "drain", "unknown"} {
		m.rejected.WithLabelValues(kind)
	}
	for _, variant := range []string{"sotw", "delta"} {
		m.streams.WithLabelValues(variant)
		for _, typ := range xdsTypes {
			m.responses.WithLabelValues(variant, typ)
		}
	}
	for _, typ := range xdsTypes {
		m.nacks.WithLabelValues(typ)
	}
	for _, outcome := range []string{"acked", "settled"} {
		m.promotions.WithLabelValues(outcome)
	}
	// Every state's series exists from the start, at zero: a dashboard or an alert on it
	// needs no absent() before the first state is published.
	for _, st := range countedStates {
		m.instances.WithLabelValues(string(st)).Set(0)
	}
	return m
}

// xdsTypes are the short names (xdscache.ShortType) of the resource types served.
var xdsTypes = []string{"Listener", "RouteConfiguration", "Cluster", "ClusterLoadAssignment"}

// budget exports the xDS cache's byte budget (xdscache/budget.go), read at each scrape.
func (m *metrics) budget(read func() xdscache.BudgetStats) {
	m.reg.MustRegister(
		prometheus.NewGaugeFunc(prometheus.GaugeOpts{
			Name: "tether_xds_inflight_bytes", Help: "Bytes of xDS responses sent and not yet answered (ACK or NACK), all Envoys together; bounded by --max-inflight-bytes.",
		}, func() float64 { return float64(read().InFlight) }),
		prometheus.NewGaugeFunc(prometheus.GaugeOpts{
			Name: "tether_xds_inflight_waiting", Help: "Envoys' responses waiting for room under --max-inflight-bytes.",
		}, func() float64 { return float64(read().Waiting) }),
		prometheus.NewCounterFunc(prometheus.CounterOpts{
			Name: "tether_xds_inflight_waits_total", Help: "xDS responses that waited for room under --max-inflight-bytes.",
		}, func() float64 { return float64(read().Waited) }),
		prometheus.NewCounterFunc(prometheus.CounterOpts{
			Name: "tether_xds_inflight_timeouts_total", Help: "xDS responses whose bytes were given back because the Envoy did not answer within 10 s.",
		}, func() float64 { return float64(read().TimedOut) }),
	)
}
