package bench

import (
	"cmp"
	"fmt"
	"io"
	"slices"
	"strings"
	"text/tabwriter"
	"time"

	"github.com/tetherlb/tether/internal/xdsclient"
)

// Latency summarises latency samples, in milliseconds.
type Latency struct {
	Samples int     `json:"samples"`
	P50     float64 `json:"p50Ms"`
	P99     float64 `json:"p99Ms"`
	Max     float64 `json:"maxMs"`
}

// Summarize computes p50, p99 and max of samples (it sorts them in place).
func Summarize(samples []time.Duration) Latency {
	if len(samples) == 0 {
		return Latency{}
	}
	slices.Sort(samples)
	ms := func(d time.Duration) float64 { return float64(d.Microseconds()) / 1000 }
	rank := func(q float64) time.Duration {
		i := int(q*float64(len(samples))+0.5) - 1
		return samples[min(max(i, 0), len(samples)-1)]
	}
	return Latency{Samples: len(samples), P50: ms(rank(0.50)), P99: ms(rank(0.99)), Max: ms(samples[len(samples)-1])}
}

// VariantReport holds the figures of one ADS variant.
type VariantReport struct {
	Variant xdsclient.Variant `json:"variant"`
	Envoys  int               `json:"envoys"`
	// Propagation is from the etcd write returning to each simulated Envoy holding the change.
	Propagation Latency `json:"propagation"`
	// FloorRatio is Propagation.P50 / EtcdFloor.P50 and Propagation.P99 / EtcdFloor.P99.
	FloorRatioP50 float64 `json:"floorRatioP50"`
	FloorRatioP99 float64 `json:"floorRatioP99"`
	// Missed counts (change, Envoy) pairs not observed within the change timeout, leaving out
	// the lease expiries the control plane's guard held (Report.HeldExpiries).
	Missed int `json:"missed"`
	// BytesPerChangePerEnvoy is every xDS response byte received during the scenario, divided
	// by the changes and by the Envoys of this variant.
	BytesPerChangePerEnvoy float64 `json:"bytesPerChangePerEnvoy"`
	// LoadChangeBytesPerEnvoy is the bytes each Envoy received for one isolated load change
	// (mean over the probes run after the scenario).
	LoadChangeBytesPerEnvoy float64 `json:"loadChangeBytesPerEnvoy"`
	// FirstConfig is the time for a newly connected Envoy to hold the full configuration.
	FirstConfigMs float64 `json:"firstConfigMs"`
	// SpacedPropagation is, for the spaced single changes, from issuing the etcd write to each
	// Envoy holding the change; SpacedOverFloor is each Envoy's receive time minus the time
	// the harness's etcd watch saw the same change (what the control plane adds to etcd's
	// delivery); SpacedMissed counts (change, Envoy) pairs not observed in time.
	SpacedPropagation Latency `json:"spacedPropagation"`
	SpacedOverFloor   Latency `json:"spacedOverFloor"`
	SpacedMissed      int     `json:"spacedMissed"`
	// Diverged counts Envoys that, at the end of the run (see Report.SettledSeconds), did not
	// hold the endpoints the registry calls for: what a lost change leaves behind.
	Diverged int `json:"diverged"`
	// StreamErrors counts simulated Envoy streams that failed during the run.
	StreamErrors int `json:"streamErrors"`
}

// Report is the outcome of one run at one scale.
type Report struct {
	Instances int     `json:"instances"`
	Services  int     `json:"services"`
	Envoys    int     `json:"envoys"`
	Rate      float64 `json:"ratePerSecond"`
	// Duration is the scenario's wall time.
	DurationSeconds float64 `json:"durationSeconds"`
	// Changes written during the scenario, by kind (load, state, register, expire).
	Changes map[string]int `json:"changes"`
	// Skipped counts scheduled changes not made because every service already had a change
	// in flight or the writers were saturated.
	Skipped int `json:"skipped"`
	// HeldExpiries are lease expiries that no Envoy held within the change timeout because the
	// control plane's mass-disappearance guard held them (an expiry storm, by design): at most
	// GuardHeldRemovals, the guard's count of removals it held during the scenario.
	HeldExpiries      int `json:"heldExpiries"`
	GuardHeldRemovals int `json:"guardHeldRemovals"`
	// EtcdFloor is the raw etcd floor: from issuing the write to a plain watch in the harness
	// seeing it. It is measured from the write's start because etcd delivers the watch event
	// no later than the write's reply: measured from the reply it is zero.
	EtcdFloor   Latency `json:"etcdFloor"`
	FloorMissed int     `json:"floorMissed"`
	// SpacedChanges is the number of spaced single changes made after the scenario, each on
	// an idle control plane; SpacedFloor their etcd floor (as EtcdFloor) and
	// SpacedFloorMissed those the harness's watch did not see before every Envoy held them.
	SpacedChanges     int     `json:"spacedChanges"`
	SpacedFloor       Latency `json:"spacedFloor"`
	SpacedFloorMissed int     `json:"spacedFloorMissed"`
	// SpacedTranslateMeanMs and SpacedEventToPushMeanMs are the control plane's own means over
	// the spaced changes: translating and handing one to the xDS cache, and from receiving
	// the etcd event to that (the rest of "over floor" is sending and the Envoys' reading).
	SpacedTranslateMeanMs   float64 `json:"spacedTranslateMeanMs"`
	SpacedEventToPushMeanMs float64 `json:"spacedEventToPushMeanMs"`
	// ControlPlaneArgs are the extra flags the control plane ran with.
	ControlPlaneArgs []string `json:"controlPlaneArgs,omitempty"`
	// EtcdWrite is the etcd write itself, from issuing it to its reply.
	EtcdWrite Latency         `json:"etcdWrite"`
	Variants  []VariantReport `json:"variants"`
	// ControlPlaneCPUSeconds is the control plane's CPU time during the scenario;
	// ControlPlaneCores divides it by the scenario's wall time.
	ControlPlaneCPUSeconds float64 `json:"controlPlaneCpuSeconds"`
	ControlPlaneCores      float64 `json:"controlPlaneCores"`
	// ControlPlanePeakRSSBytes is the control plane's peak resident memory over the whole run;
	// ConnectPeakRSSBytes its peak until every Envoy held the full configuration, and
	// ScenarioPeakRSSBytes its peak during the scenario (0 when the kernel could not reset the
	// peak in between). Memory the Go runtime kept from the connection is counted in both.
	ControlPlanePeakRSSBytes int64 `json:"controlPlanePeakRssBytes"`
	ConnectPeakRSSBytes      int64 `json:"connectPeakRssBytes"`
	ScenarioPeakRSSBytes     int64 `json:"scenarioPeakRssBytes"`
	// Bursts are the bursts made after the scenario (Config.Bursts); BurstPeakRSSBytes is the
	// control plane's peak over them (0 when the peak could not be reset before them).
	Bursts            []BurstReport `json:"bursts,omitempty"`
	BurstPeakRSSBytes int64         `json:"burstPeakRssBytes,omitempty"`
	// HarnessCores is the harness's own CPU use (etcd and simulated Envoys) during the scenario.
	HarnessCores float64 `json:"harnessCores"`
	// PushesPerSecond is snapshots published per second; ResponsesPerSecond is xDS responses
	// sent per second, all streams together.
	PushesPerSecond    float64 `json:"pushesPerSecond"`
	ResponsesPerSecond float64 `json:"responsesPerSecond"`
	// TranslateMeanMs is the control plane's mean time to translate and build one snapshot;
	// EventToPushMeanMs its mean time from an etcd event arriving to the snapshot holding it
	// being published (both from its own histograms, during the scenario).
	TranslateMeanMs   float64 `json:"translateMeanMs"`
	EventToPushMeanMs float64 `json:"eventToPushMeanMs"`
	// SettledSeconds is the wait, after the last change, until every Envoy held the endpoints
	// the registry calls for (at most a minute; see VariantReport.Diverged).
	SettledSeconds float64 `json:"settledSeconds"`
	// SeedSeconds is the time to write the initial registry; ControlPlaneReadySeconds the
	// time from starting the control plane to its first published snapshot; ConnectSeconds
	// the time for all Envoys to connect and hold the full configuration.
	SeedSeconds              float64 `json:"seedSeconds"`
	ControlPlaneReadySeconds float64 `json:"controlPlaneReadySeconds"`
	ConnectSeconds           float64 `json:"connectSeconds"`
}

// WriteTable prints reports as an aligned text table, one row per scale and variant.
func WriteTable(w io.Writer, reports []*Report) error {
	tw := tabwriter.NewWriter(w, 0, 0, 2, ' ', tabwriter.AlignRight)
	cols := []string{"N", "S", "E", "variant", "changes", "p50 ms", "p99 ms", "max ms", "etcd p50", "etcd p99",
		"ratio p99", "missed", "guard held", "diverged", "B/chg/Envoy", "B/load chg", "first cfg ms", "pushes/s", "CP cores", "CP MB connect", "CP MB scenario", "harness cores", ""}
	fmt.Fprintln(tw, strings.Join(cols, "\t"))
	for _, r := range reports {
		total := 0
		for _, n := range r.Changes {
			total += n
		}
		for _, v := range r.Variants {
			fmt.Fprintf(tw, "%d\t%d\t%d\t%s\t%d\t%.1f\t%.1f\t%.1f\t%.2f\t%.2f\t%.1f\t%d\t%d\t%d\t%.0f\t%.0f\t%.0f\t%.1f\t%.2f\t%.0f\t%.0f\t%.2f\t\n",
				r.Instances, r.Services, v.Envoys, v.Variant, total, v.Propagation.P50, v.Propagation.P99, v.Propagation.Max,
				r.EtcdFloor.P50, r.EtcdFloor.P99, v.FloorRatioP99, v.Missed, r.HeldExpiries, v.Diverged, v.BytesPerChangePerEnvoy, v.LoadChangeBytesPerEnvoy,
				v.FirstConfigMs, r.PushesPerSecond, r.ControlPlaneCores, float64(r.ConnectPeakRSSBytes)/(1<<20), float64(r.ScenarioPeakRSSBytes)/(1<<20), r.HarnessCores)
		}
	}
	if err := tw.Flush(); err != nil {
		return fmt.Errorf("write table: %w", err)
	}
	fmt.Fprintln(w, "\nSpaced single changes (each on an idle control plane), ms from issuing the etcd write:")
	tw = tabwriter.NewWriter(w, 0, 0, 2, ' ', tabwriter.AlignRight)
	cols = []string{"N", "S", "E", "variant", "CP flags", "changes", "etcd floor p50", "floor p99", "propagation p50", "p99", "over floor p50", "over floor p99", "over floor max", "missed", "CP event to push", "CP translate", ""}
	fmt.Fprintln(tw, strings.Join(cols, "\t"))
	for _, r := range reports {
		for _, v := range r.Variants {
			fmt.Fprintf(tw, "%d\t%d\t%d\t%s\t%s\t%d\t%.2f\t%.2f\t%.2f\t%.2f\t%.2f\t%.2f\t%.2f\t%d\t%.2f\t%.2f\t\n",
				r.Instances, r.Services, v.Envoys, v.Variant, r.cpFlags(), r.SpacedChanges, r.SpacedFloor.P50, r.SpacedFloor.P99,
				v.SpacedPropagation.P50, v.SpacedPropagation.P99, v.SpacedOverFloor.P50, v.SpacedOverFloor.P99, v.SpacedOverFloor.Max, v.SpacedMissed,
				r.SpacedEventToPushMeanMs, r.SpacedTranslateMeanMs)
		}
	}
	if err := tw.Flush(); err != nil {
		return fmt.Errorf("write table: %w", err)
	}
	return writeBursts(w, reports)
}

// cpFlags are the control plane's extra flags as the tables show them.
func (r *Report) cpFlags() string { return cmp.Or(strings.Join(r.ControlPlaneArgs, " "), "defaults") }

// writeBursts prints the bursts of the reports that made any.
func writeBursts(w io.Writer, reports []*Report) error {
	if !slices.ContainsFunc(reports, func(r *Report) bool { return len(r.Bursts) > 0 }) {
		return nil
	}
	fmt.Fprintln(w, "\nBursts (changes written in one etcd transaction), ms from the transaction's reply:")
	tw := tabwriter.NewWriter(w, 0, 0, 2, ' ', tabwriter.AlignRight)
	fmt.Fprintln(tw, strings.Join([]string{"N", "S", "E", "CP flags", "burst", "changes", "p50", "p99", "all held", "missed", "CP MB bursts", ""}, "\t"))
	for _, r := range reports {
		for i, b := range r.Bursts {
			fmt.Fprintf(tw, "%d\t%d\t%d\t%s\t%d\t%d\t%.1f\t%.1f\t%.1f\t%d\t%.0f\t\n", r.Instances, r.Services, r.Envoys, r.cpFlags(), i+1, b.Changes,
				b.Propagation.P50, b.Propagation.P99, b.AllHeldMs, b.Missed, float64(r.BurstPeakRSSBytes)/(1<<20))
		}
	}
	if err := tw.Flush(); err != nil {
		return fmt.Errorf("write table: %w", err)
	}
	return nil
}

// Scale is one (instances, Envoys) point of a run.
type Scale struct{ Instances, Envoys int }

// ParseScales parses a comma-separated list of NxE scales, e.g. "100x10,1000x100".
func ParseScales(s string) ([]Scale, error) {
	var out []Scale
	for _, part := range strings.Split(s, ",") {
		part = strings.TrimSpace(part)
		n, e, ok := strings.Cut(part, "x")
		var sc Scale
		_, err1 := fmt.Sscanf(n, "%d", &sc.Instances)
		_, err2 := fmt.Sscanf(e, "%d", &sc.Envoys)
		if !ok || err1 != nil || err2 != nil || sc.Instances <= 0 || sc.Envoys <= 0 {
			return nil, fmt.Errorf("scale %q: want NxE with positive numbers, e.g. 1000x100", part)
		}
		out = append(out, sc)
	}
	return out, nil
}
