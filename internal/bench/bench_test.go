package bench

import (
	"bytes"
	"context"
	"strings"
	"testing"
	"time"
)

// TestRunTiny runs the whole harness at a tiny scale and checks that the report is complete
// and sane. It asserts no timing thresholds.
func TestRunTiny(t *testing.T) {
	if testing.Short() {
		t.Skip("builds and runs the control plane")
	}
	ctx, cancel := context.WithTimeout(context.Background(), 4*time.Minute)
	defer cancel()
	bin, err := BuildControlPlane(ctx, t.TempDir())
	if err != nil {
		t.Fatal(err)
	}
	rep, err := Run(ctx, Config{Instances: 20, Envoys: 2, Rate: 20, Duration: 2 * time.Second,
		ControlPlaneBin: bin, WorkDir: t.TempDir(), LoadProbes: 2, Spaced: 5, SpacedGap: 50 * time.Millisecond})
	if err != nil {
		t.Fatal(err)
	}
	if rep.Services != 2 || rep.Envoys != 2 {
		t.Errorf("scale: got S=%d E=%d, want 2 and 2", rep.Services, rep.Envoys)
	}
	changes := 0
	for _, n := range rep.Changes {
		changes += n
	}
	if changes == 0 || rep.Changes[KindLoad] == 0 {
		t.Fatalf("no changes made (or no load change): %v", rep.Changes)
	}
	if rep.EtcdFloor.Samples != changes || rep.FloorMissed != 0 || rep.EtcdFloor.P50 <= 0 {
		t.Errorf("etcd floor: %+v with %d missed, want %d positive samples", rep.EtcdFloor, rep.FloorMissed, changes)
	}
	if len(rep.Variants) != 2 {
		t.Fatalf("got %d variants, want delta and sotw", len(rep.Variants))
	}
	for _, v := range rep.Variants {
		p := v.Propagation
		if v.Envoys != 1 || v.Missed != 0 || p.Samples != changes {
			t.Errorf("%s: %d Envoys, %d missed, %d samples; want 1, 0, %d (every change observed)", v.Variant, v.Envoys, v.Missed, p.Samples, changes)
		}
		if p.P50 <= 0 || p.P99 < p.P50 || p.Max < p.P99 {
			t.Errorf("%s: latency %+v is not positive and ordered", v.Variant, p)
		}
		if v.Diverged != 0 {
			t.Errorf("%s: %d Envoys do not hold the registry's endpoints after %.1f s", v.Variant, v.Diverged, rep.SettledSeconds)
		}
		if v.BytesPerChangePerEnvoy <= 0 || v.LoadChangeBytesPerEnvoy <= 0 || v.FirstConfigMs <= 0 || v.StreamErrors != 0 {
			t.Errorf("%s: incomplete figures %+v", v.Variant, v)
		}
	}
	if rep.SpacedChanges != 5 || rep.SpacedFloor.Samples+rep.SpacedFloorMissed != 5 || rep.SpacedFloor.P50 <= 0 {
		t.Errorf("spaced changes: %d made, floor %+v with %d missed; want 5, every one timed or missed", rep.SpacedChanges, rep.SpacedFloor, rep.SpacedFloorMissed)
	}
	for _, v := range rep.Variants {
		if v.SpacedMissed != 0 || v.SpacedPropagation.Samples != 5 || v.SpacedOverFloor.Samples != rep.SpacedFloor.Samples ||
			v.SpacedPropagation.P50 <= 0 || v.SpacedOverFloor.P50 > v.SpacedPropagation.P50 {
			t.Errorf("%s: spaced propagation %+v, over floor %+v, %d missed; want 5 samples each timed, over floor below propagation",
				v.Variant, v.SpacedPropagation, v.SpacedOverFloor, v.SpacedMissed)
		}
	}
	if rep.ConnectPeakRSSBytes <= 0 || rep.ScenarioPeakRSSBytes <= 0 || rep.ControlPlanePeakRSSBytes < rep.ConnectPeakRSSBytes {
		t.Errorf("peak RSS: connect %d, scenario %d, run %d; want positive, the run's at least the connection's",
			rep.ConnectPeakRSSBytes, rep.ScenarioPeakRSSBytes, rep.ControlPlanePeakRSSBytes)
	}
	if rep.ControlPlaneCPUSeconds <= 0 || rep.ControlPlanePeakRSSBytes <= 0 || rep.PushesPerSecond <= 0 {
		t.Errorf("control plane cost missing: cpu %v s, peak RSS %d, pushes/s %v", rep.ControlPlaneCPUSeconds, rep.ControlPlanePeakRSSBytes, rep.PushesPerSecond)
	}
	var buf bytes.Buffer
	if err := WriteTable(&buf, []*Report{rep}); err != nil {
		t.Fatal(err)
	}
	if lines := strings.Count(buf.String(), "\n"); lines != 8 {
		t.Errorf("tables have %d lines, want two, each a header and one row per variant, with a blank line and a title between:\n%s", lines, buf.String())
	}
}

func TestParseScales(t *testing.T) {
	got, err := ParseScales("100x10, 1000x100")
	if err != nil {
		t.Fatal(err)
	}
	if len(got) != 2 || got[0] != (Scale{100, 10}) || got[1] != (Scale{1000, 100}) {
		t.Errorf("got %v", got)
	}
	for _, bad := range []string{"", "100", "0x10", "10x", "axb"} {
		if _, err := ParseScales(bad); err == nil {
			t.Errorf("ParseScales(%q) accepted", bad)
		}
	}
}

func TestParseMetrics(t *testing.T) {
	m, err := parseMetrics(strings.NewReader(`# HELP x
tether_xds_responses_total{variant="sotw",type="Cluster"} 3
tether_xds_responses_total{variant="delta",type="Cluster"} 4
tether_snapshots_total 7
`))
	if err != nil {
		t.Fatal(err)
	}
	if m["tether_xds_responses_total"] != 7 || m["tether_snapshots_total"] != 7 {
		t.Errorf("got %v", m)
	}
}

func TestConfigSpacedKind(t *testing.T) {
	for _, k := range []string{"", KindLoad, KindState, KindRegister, KindExpire} {
		c := Config{SpacedKind: k}
		if err := c.withDefaults(); err != nil {
			t.Errorf("spaced kind %q: %v", k, err)
		}
	}
	c := Config{SpacedKind: "loads"}
	if err := c.withDefaults(); err == nil {
		t.Error("spaced kind \"loads\" accepted")
	}
}
