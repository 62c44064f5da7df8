package sim

import (
	"context"
	"os"
	"strings"
	"testing"
	"time"
)

// agentBin is the tether-agent binary every run of this package uses, built once.
var agentBin string

func TestMain(m *testing.M) {
	dir, err := os.MkdirTemp("", "tether-sim-test-")
	if err != nil {
		panic(err)
	}
	ctx, cancel := context.WithTimeout(context.Background(), 5*time.Minute)
	agentBin, err = BuildAgent(ctx, dir)
	cancel()
	if err != nil {
		_ = os.RemoveAll(dir)
		panic(err)
	}
	code := m.Run()
	_ = os.RemoveAll(dir)
	os.Exit(code)
}

// knownOpen are the kinds of violation the simulation still finds on main, each with the open
// issue that is to fix it. A kind not listed fails the test; a kind listed that no seed finds
// any more is reported, so that the list only shrinks. Nothing here is hidden: `make sim`
// prints every violation with its trace.
// Empty since seeds 1-10 found none (the replica gap and the restart's unphased first
// publication fixed, docs/reliability.md).
var knownOpen = map[string]string{}

// testSeeds are the seeds `make test` runs; each found at least one defect of main before its
// fix (docs/reliability.md, "The simulation").
var testSeeds = []int64{1, 2, 6}

// TestSimulation runs the fixed seeds and checks every invariant.
func TestSimulation(t *testing.T) {
	if testing.Short() {
		t.Skip("the simulation runs real processes for about 20 s a seed")
	}
	found := map[string]bool{}
	for _, seed := range testSeeds {
		r := runSim(t, Options{Seed: seed, Duration: 10 * time.Second})
		if r.Stats.Sessions == 0 || r.Stats.Requests < 1000 {
			t.Errorf("seed %d: %d requests and %d sessions: the users did not get going", seed, r.Stats.Requests, r.Stats.Sessions)
		}
		if r.Stats.Errors > 0 {
			t.Errorf("seed %d: the Envoy model failed %d times (see the log)", seed, r.Stats.Errors)
		}
		var b strings.Builder
		var unexpected []Violation
		for _, v := range r.Violations {
			k := kindKey(v)
			found[k] = true
			if knownOpen[k] == "" {
				unexpected = append(unexpected, v)
			}
		}
		if len(unexpected) > 0 {
			WriteViolations(&b, Result{Seed: r.Seed, Violations: unexpected, Schedule: r.Schedule, Dir: r.Dir}, 6)
			t.Errorf("seed %d: %d violations of no open issue:%s", seed, len(unexpected), b.String())
		}
	}
	for k, issue := range knownOpen {
		if !found[k] {
			t.Logf("known open violation %q (%s) was not found by these seeds: if its issue is fixed, remove it from knownOpen", k, issue)
		}
	}
}

func kindKey(v Violation) string { return strings.TrimSpace(strings.Split(v.Kind, "(")[0]) }

func runSim(t *testing.T, o Options) Result {
	t.Helper()
	o.AgentBin = agentBin
	if testing.Verbose() {
		o.Log = testWriter{t}
	}
	ctx, cancel := context.WithTimeout(context.Background(), o.Duration+2*time.Minute)
	defer cancel()
	r, err := Run(ctx, o)
	if err != nil {
		t.Fatalf("seed %d: %v", o.Seed, err)
	}
	var b strings.Builder
	WriteTable(&b, []Result{r})
	t.Logf("\n%s", b.String())
	return r
}

type testWriter struct{ t *testing.T }

func (w testWriter) Write(p []byte) (int, error) {
	w.t.Log(strings.TrimRight(string(p), "\n"))
	return len(p), nil
}

// TestScheduleIsTheSeeds: a seed gives the same schedule every time, and another seed another.
func TestScheduleIsTheSeeds(t *testing.T) {
	a, b, c := makeSchedule(7, 12*time.Second, nil, topology{3, 2}), makeSchedule(7, 12*time.Second, nil, topology{3, 2}), makeSchedule(8, 12*time.Second, nil, topology{3, 2})
	if len(a) == 0 {
		t.Fatal("no fault scheduled in 12 s")
	}
	if len(a) != len(b) {
		t.Fatalf("seed 7 gave %d and %d faults", len(a), len(b))
	}
	for i := range a {
		if a[i] != b[i] {
			t.Fatalf("seed 7's fault %d: %v, then %v", i, a[i], b[i])
		}
	}
	same := len(a) == len(c)
	for i := 0; same && i < len(a); i++ {
		same = a[i] == c[i]
	}
	if same {
		t.Error("seeds 7 and 8 gave the same schedule")
	}
	for _, f := range makeSchedule(7, 12*time.Second, []string{FaultJoin}, topology{1, 1}) {
		if f.kind != FaultJoin {
			t.Fatalf("a schedule restricted to joins has %s", f.kind)
		}
	}
}

// TestSimulationThroughARealEnvoy runs a seed with a real Envoy in the gateway group beside the
// modelled ones (ENVOY_BIN), so that the invariants hold against Envoy itself and not only
// against the model of it.
func TestSimulationThroughARealEnvoy(t *testing.T) {
	bin := os.Getenv("ENVOY_BIN")
	if bin == "" {
		t.Skip("ENVOY_BIN not set: the simulation runs its Envoy model only")
	}
	r := runSim(t, Options{Seed: testSeeds[0], Duration: 10 * time.Second, EnvoyBin: bin})
	for _, v := range r.Violations {
		if knownOpen[kindKey(v)] == "" {
			t.Errorf("invariant %d (%s): %s", v.Invariant, v.Kind, v.What)
		}
	}
}
