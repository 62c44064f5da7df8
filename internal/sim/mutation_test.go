//go:build simmutate

package sim

import (
	"strings"
	"testing"
	"time"

	"github.com/tetherlb/tether/internal/mutation"
)

// TestSimulationCatchesMutations breaks the product on purpose, one guarantee at a time, and
// checks that the simulation sees each break as a broken invariant of the expected kind, where
// the same seed and faults without the break show none of that kind: a test of the test.
// Run by `make test` with -tags simmutate.
func TestSimulationCatchesMutations(t *testing.T) {
	cases := []struct {
		mutation string
		faults   []string
		kind     string // the start of the violation kind the break must cause
		duration time.Duration
		noVanish bool // the guard alone: --vanish-grace would keep the vanished servers too
		seed     int64
	}{
		// A full server's users must keep reaching it: served UNHEALTHY, they are moved.
		{mutation.FullUnhealthy, []string{FaultFull, FaultDrainID}, "server's endpoint UNHEALTHY", 7 * time.Second, false, 7},
		// Every instance gone in one revision is a mass disappearance the guard holds.
		{mutation.GuardHoldsNothing, []string{FaultMassDelete}, "a server dropped in a lease storm", 7 * time.Second, true, 7},
		// A new server taking sessions before a slow Envoy knows it moves those users there.
		{mutation.PromoteAtOnce, []string{FaultSlowJoin}, "server missing from the Envoy's assignment", 12 * time.Second, false, 1},
		// A replica cut off from etcd past the settle time while a server joins: the other
		// must wait for it, or users it places there lose it at the cut-off one's Envoys.
		{mutation.PeerSettleOnly, []string{FaultCutOff}, "a server one replica promoted is unknown", 12 * time.Second, false, 3},
	}
	// Seeds 7 and 1 run one etcd member and one control plane: the mutations act within a
	// replica. Seed 1 starts with its three Envoys (seed 7 with one, and a new server reaches
	// a lone Envoy at once whatever the mutation: 0 or 1 violations). Seed 3 runs two replicas.
	for _, c := range cases {
		t.Run(c.mutation, func(t *testing.T) {
			o := Options{Seed: c.seed, Duration: c.duration, Faults: c.faults, NoVanishGrace: c.noVanish}
			base := runSim(t, o)
			if n := countKind(base, c.kind); n > 0 {
				t.Fatalf("without the mutation, %d violations of kind %q already: the test cannot tell", n, c.kind)
			}
			o.Mutations = []string{c.mutation}
			broken := runSim(t, o)
			if n := countKind(broken, c.kind); n == 0 {
				t.Errorf("with %s, no violation of kind %q: the simulation misses this break (violations: %v)", c.mutation, c.kind, broken.Kinds())
			} else {
				t.Logf("with %s: %d violations of kind %q", c.mutation, n, c.kind)
			}
		})
	}
}

func countKind(r Result, prefix string) int {
	n := 0
	for _, v := range r.Violations {
		if v.Invariant == 1 && strings.HasPrefix(v.Kind, prefix) {
			n++
		}
	}
	return n
}
