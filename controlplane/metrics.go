package controlplane

import (
	"github.com/prometheus/client_golang/prometheus"
	"github.com/prometheus/client_golang/prometheus/collectors"

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
	latency := []float64{.0005, .001, .0025, .005, .01, .025, .05, .1, .25, .5, 1, 2.5}
	m := &metrics{
		reg: reg,
		instances: prometheus.NewGaugeVec(prometheus.GaugeOpts{
			Name: "tether_registry_instances", Help: "Registered instances by state.",
		}, []string{"state"}),
		services: prometheus.NewGauge(prometheus.GaugeOpts{
			Name: "tether_registry_services", Help: "Services in the registry (configured or with instances).",
		}),
		rejected: prometheus.NewCounterVec(prometheus.CounterOpts{
			Name: "tether_registry_rejected_entries_total", Help: "Registry values rejected by decoding or validation.",
		}, []string{"kind"}),
		rejectedNow: prometheus.NewGauge(prometheus.GaugeOpts{
			Name: "tether_registry_rejected_entries", Help: "Registry keys whose current value is rejected.",
		}),
		problems: prometheus.NewGauge(prometheus.GaugeOpts{
			Name: "tether_translate_problems", Help: "Conflicts found by the last translation (e.g. two services claiming one domain and path).",
		}),
		streams: prometheus.NewGaugeVec(prometheus.GaugeOpts{
			Name: "tether_xds_streams", Help: "Connected xDS streams by variant (sotw, delta).",
		}, []string{"variant"}),
		responses: prometheus.NewCounterVec(prometheus.CounterOpts{
			Name: "tether_xds_responses_total", Help: "xDS responses sent, by variant and resource type.",
		}, []string{"variant", "type"}),
		nacks: prometheus.NewCounterVec(prometheus.CounterOpts{
			Name: "tether_xds_nacks_total", Help: "xDS NACKs received from Envoys, by resource type.",
		}, []string{"type"}),
		snapshots: prometheus.NewCounter(prometheus.CounterOpts{
			Name: "tether_snapshots_total", Help: "Configuration snapshots published (pushes).",
		}),
		snapshotErrors: prometheus.NewCounter(prometheus.CounterOpts{
			Name: "tether_snapshot_errors_total", Help: "Translations not published because the snapshot was invalid; the last good one stays.",
		}),
		translate: prometheus.NewHistogram(prometheus.HistogramOpts{
			Name: "tether_translate_duration_seconds", Help: "Time to translate the registry into Envoy resources and build the snapshot.", Buckets: latency,
		}),
		eventToPush: prometheus.NewHistogram(prometheus.HistogramOpts{
			Name: "tether_event_to_push_seconds", Help: "Time from receiving an etcd change to publishing the snapshot holding it.", Buckets: latency,
		}),
		etcdEvents: prometheus.NewCounter(prometheus.CounterOpts{
			Name: "tether_etcd_events_total", Help: "etcd watch events applied to the registry.",
		}),
		revision: prometheus.NewGauge(prometheus.GaugeOpts{
			Name: "tether_registry_revision", Help: "etcd revision of the last published snapshot.",
		}),
		drained: prometheus.NewGauge(prometheus.GaugeOpts{
			Name: "tether_drained_instances", Help: "Instances an operator's drain selects (served DRAINING whatever their agents report).",
		}),
		held: prometheus.NewGauge(prometheus.GaugeOpts{
			Name: "tether_held_instances", Help: "Instances gone from the registry but held in the configuration by the mass-disappearance guard.",
		}),
		vanished: prometheus.NewGauge(prometheus.GaugeOpts{
			Name: "tether_vanished_instances", Help: "Instances gone from the registry without draining, kept as DRAINING for --vanish-grace for their agents to come back.",
		}),
		unconfirmed: prometheus.NewGauge(prometheus.GaugeOpts{
			Name: "tether_etcd_unconfirmed", Help: "1 while this replica has not confirmed etcd's revision for longer than --stale-after (/readyz fails, xDS streams were closed).",
		}),
		massRemovals: prometheus.NewCounterVec(prometheus.CounterOpts{
			Name: "tether_mass_removals_total", Help: "Instances held back for the grace period by the mass-disappearance guard, by service.",
		}, []string{"service"}),
		firstPhase: prometheus.NewGauge(prometheus.GaugeOpts{
			Name: "tether_first_phase_endpoints", Help: "Endpoints published as DRAINING until every Envoy knows them (two-phase publication).",
		}),
		promotions: prometheus.NewHistogramVec(prometheus.HistogramOpts{
			Name: "tether_promotion_seconds", Help: "Promotions of new endpoints from their first phase, and how long it lasted; outcome acked (every Envoy knew it) or settled (--publish-settle ended first).",
			Buckets: []float64{.005, .01, .025, .05, .1, .25, .5, 1, 2.5, 5, 10, 30},
		}, []string{"outcome"}),
		lagging: prometheus.NewGauge(prometheus.GaugeOpts{
			Name: "tether_lagging_envoys", Help: "Envoys that held a promotion past --publish-settle and have not caught up.",
		}),
		oldEnvoys: prometheus.NewGauge(prometheus.GaugeOpts{
			Name: "tether_envoys_below_min_version", Help: "Connected Envoys older than Tether's minimum version (" + MinEnvoyVersion + "): they silently lose part of the configuration.",
		}),
		refused: prometheus.NewCounterVec(prometheus.CounterOpts{
			Name: "tether_xds_refused_total", Help: "xDS streams and connections refused for going over a bound, by reason (names, field-size, connections-per-peer).",
		}, []string{"reason"}),
		overLimit: prometheus.NewGaugeVec(prometheus.GaugeOpts{
			Name: "tether_registry_over_limit", Help: "Services and instances left out for being past --max-services or --max-instances-per-service (the newest are left out), by kind.",
		}, []string{"kind"}),
		laggingTotal: prometheus.NewCounter(prometheus.CounterOpts{
			Name: "tether_lagging_envoys_total", Help: "Times an Envoy was reported lagging (held a promotion past --publish-settle).",
		}),
		ready: prometheus.NewGauge(prometheus.GaugeOpts{
			Name: "tether_ready", Help: "1 once the first full registry list is translated and published.",
		}),
	}
	reg.MustRegister(m.instances, m.services, m.rejected, m.rejectedNow, m.problems, m.streams,
		m.responses, m.nacks, m.snapshots, m.snapshotErrors, m.translate, m.eventToPush,
		m.etcdEvents, m.revision, m.ready, m.held, m.vanished, m.unconfirmed, m.drained, m.massRemovals, m.firstPhase, m.promotions, m.lagging, m.laggingTotal, m.oldEnvoys, m.refused, m.overLimit,
		collectors.NewGoCollector(), collectors.NewProcessCollector(collectors.ProcessCollectorOpts{}))
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
