// Command tether-sim runs Tether's simulation (internal/sim): the real etcd, control planes and
// agents under seeded faults, with simulated Envoys, servers and users, checking that every
// user keeps their server. It prints a table of the runs and each violation with its seed,
// schedule and trace, and exits 1 when any invariant was broken.
package main

import (
	"context"
	"flag"
	"fmt"
	"math/rand/v2"
	"os"
	"os/signal"
	"strings"
	"syscall"
	"time"

	"github.com/tetherlb/tether/internal/sim"
)

func main() { os.Exit(run()) }

func run() int {
	fs := flag.NewFlagSet("tether-sim", flag.ContinueOnError)
	seed := fs.Int64("seed", 0, "run this seed alone (replays its schedule)")
	seeds := fs.String("seeds", "1-4", "seeds to run: a list and ranges, e.g. 1-4,9")
	soak := fs.Duration("soak", 0, "run random seeds until this much time has passed (overrides -seeds)")
	duration := fs.Duration("duration", 12*time.Second, "length of each run's faulted phase")
	users := fs.Int("users", 0, "simulated users (default 24)")
	faults := fs.String("faults", "", "comma-separated fault kinds to draw from (default all: "+strings.Join(sim.FaultKinds(), ",")+")")
	verbose := fs.Bool("v", false, "print events as they happen")
	summary := fs.String("summary", "", "also write the table and violations to this file")
	if err := fs.Parse(os.Args[1:]); err != nil {
		return 2
	}
	var list []int64
	switch {
	case *soak > 0:
	case *seed != 0:
		list = []int64{*seed}
	default:
		var err error
		if list, err = parseSeeds(*seeds); err != nil {
			fmt.Fprintf(os.Stderr, "tether-sim: -seeds: %v\n", err)
			return 2
		}
	}
	ctx, stop := signal.NotifyContext(context.Background(), os.Interrupt, syscall.SIGTERM)
	defer stop()
	dir, err := os.MkdirTemp("", "tether-sim-bin-")
	if err != nil {
		fmt.Fprintf(os.Stderr, "tether-sim: %v\n", err)
		return 1
	}
	defer os.RemoveAll(dir)
	bin, err := sim.BuildAgent(ctx, dir)
	if err != nil {
		fmt.Fprintf(os.Stderr, "tether-sim: %v\n", err)
		return 1
	}
	// A real Envoy joins the simulated ones when ENVOY_BIN names one, as for the e2e tests.
	opts := sim.Options{Duration: *duration, Users: *users, AgentBin: bin, EnvoyBin: os.Getenv("ENVOY_BIN")}
	if *faults != "" {
		opts.Faults = strings.Split(*faults, ",")
	}
	if *verbose {
		opts.Log = os.Stdout
	}
	var results []sim.Result
	end := time.Now().Add(*soak)
	for i := 0; ; i++ {
		if *soak > 0 {
			if time.Now().After(end) {
				break
			}
			list = append(list, rand.Int64N(1<<31))
		}
		if i >= len(list) || ctx.Err() != nil {
			break
		}
		o := opts
		o.Seed = list[i]
		r, err := sim.Run(ctx, o)
		if err != nil && ctx.Err() == nil {
			fmt.Fprintf(os.Stderr, "tether-sim: seed %d: %v\n", o.Seed, err)
			return 1
		}
		results = append(results, r)
		fmt.Printf("seed %d: %d requests, %d violations\n", r.Seed, r.Stats.Requests, len(r.Violations))
	}
	var b strings.Builder
	sim.WriteTable(&b, results)
	sim.WriteKinds(&b, results)
	for _, r := range results {
		sim.WriteViolations(&b, r, 12)
	}
	fmt.Print(b.String())
	if *summary != "" {
		if err := os.WriteFile(*summary, []byte(b.String()), 0o600); err != nil {
			fmt.Fprintf(os.Stderr, "tether-sim: %v\n", err)
		}
	}
	for _, r := range results {
		if len(r.Violations) > 0 {
			return 1
		}
	}
	return 0
}

// parseSeeds reads "1-4,9".
func parseSeeds(s string) ([]int64, error) {
	var out []int64
	for _, part := range strings.Split(s, ",") {
		var a, b int64
		if n, _ := fmt.Sscanf(part, "%d-%d", &a, &b); n == 2 {
			if b < a || b-a > 10000 {
				return nil, fmt.Errorf("bad range %q", part)
			}
			for x := a; x <= b; x++ {
				out = append(out, x)
			}
			continue
		}
		if _, err := fmt.Sscanf(part, "%d", &a); err != nil {
			return nil, fmt.Errorf("bad seed %q", part)
		}
		out = append(out, a)
	}
	return out, nil
}
