// Command tether-bench is Tether's load harness: it runs a real embedded etcd, the control
// plane as a child process and many simulated Envoys on loopback, drives a timed scenario of
// instance changes and prints propagation latency, cost and scale figures as a table and,
// with -json, as JSON. `tether-bench peer` (build tag peer) runs the control plane beside
// Traefik's etcd provider instead (peer.go). See docs/performance.md.
package main

import (
	"context"
	"encoding/json"
	"errors"
	"flag"
	"fmt"
	"io"
	"os"
	"os/signal"
	"path/filepath"
	"strings"
	"syscall"
	"time"

	"github.com/tetherlb/tether/internal/bench"
	"github.com/tetherlb/tether/internal/cli"
	"github.com/tetherlb/tether/internal/xdsclient"
)

func main() {
	os.Exit(run(os.Args[1:], os.Stdout, os.Stderr))
}

func run(args []string, stdout io.Writer, stderr *os.File) int {
	if len(args) > 0 && args[0] == "peer" {
		return peer(args[1:], stdout, stderr)
	}
	fs := flag.NewFlagSet("tether-bench", flag.ContinueOnError)
	fs.SetOutput(stderr)
	var base bench.Config
	fs.IntVar(&base.Instances, "n", 100, "instances (N)")
	fs.IntVar(&base.Envoys, "e", 10, "simulated Envoys (E); with -variant both, half delta and half state-of-the-world")
	fs.IntVar(&base.Services, "s", 0, "services (S); 0 means N/10")
	fs.Float64Var(&base.Rate, "rate", 200, "instance changes per second during the scenario")
	fs.DurationVar(&base.Duration, "duration", 0, "scenario length (default 30s)")
	base.Variant = bench.VariantBoth
	fs.Func("variant", "ADS variant of the simulated Envoys: sotw, delta or both (default both)", func(v string) error {
		base.Variant = xdsclient.Variant(v) // checked with the rest of the configuration
		return nil
	})
	fs.DurationVar(&base.ChangeTimeout, "change-timeout", 0, "longest wait for every Envoy to hold one change (default 10s)")
	fs.Uint64Var(&base.Seed, "seed", 1, "seed of the scenario's random choices")
	fs.IntVar(&base.Spaced, "spaced", 50, "single changes made after the scenario, one at a time on an idle control plane, compared with the etcd watch floor")
	fs.StringVar(&base.SpacedKind, "spaced-kind", "", "make every spaced change of this kind: load, state, register or expire (default: the scenario's mix)")
	fs.IntVar(&base.ClientsPerConn, "clients-per-conn", 100, "simulated Envoys sharing one gRPC connection (1: each on its own, as real Envoys)")
	fs.IntVar(&base.Bursts, "bursts", 0, "bursts made after the scenario, each of -burst-size load changes to as many services written in one etcd transaction, so that the control plane receives them at once")
	fs.IntVar(&base.BurstSize, "burst-size", 500, "changes in one burst (at most one per service)")
	fs.DurationVar(&base.SpacedGap, "spaced-gap", 250*time.Millisecond, "pause before each spaced change (longer than the coalescing window)")
	cpArgs := fs.String("cp-args", "", "extra flags for the control plane, space-separated, e.g. \"--coalesce-quiet 5ms --coalesce-max 50ms\"")
	scales := fs.String("scales", "", "comma-separated NxE list run one after another with S = N/10, e.g. 100x10,1000x100,10000x1000 (overrides -n, -e, -s)")
	jsonOut := fs.String("json", "", "also write the reports as JSON to this file")
	cpBin := fs.String("controlplane", "", "tether-controlplane binary to run (default: built with the go tool)")
	logLevel := fs.String("log-level", "info", "log level of the harness: debug, info, warn, error")
	fs.StringVar(&base.WorkDir, "workdir", "", "keep etcd's data and the control plane's log in this directory, one subdirectory per scale with -scales (default: a temporary one, removed at the end)")
	if err := fs.Parse(args); err != nil {
		if errors.Is(err, flag.ErrHelp) {
			return 0
		}
		return 2
	}
	log, err := cli.NewLogger(*logLevel, "", stderr)
	if err != nil {
		fmt.Fprintf(stderr, "tether-bench: %v\n", err)
		return 2
	}
	base.Logger = log
	base.ControlPlaneArgs = strings.Fields(*cpArgs)
	configs := []bench.Config{base}
	if *scales != "" {
		list, err := bench.ParseScales(*scales)
		if err != nil {
			fmt.Fprintf(stderr, "tether-bench: -scales: %v\n", err)
			return 2
		}
		configs = configs[:0]
		for _, sc := range list {
			c := base
			c.Instances, c.Envoys, c.Services = sc.Instances, sc.Envoys, 0
			if base.WorkDir != "" {
				c.WorkDir = filepath.Join(base.WorkDir, fmt.Sprintf("%dx%d", sc.Instances, sc.Envoys))
			}
			configs = append(configs, c)
		}
	}

	ctx, stop := signal.NotifyContext(context.Background(), os.Interrupt, syscall.SIGTERM)
	defer stop()
	if *cpBin == "" {
		dir, err := os.MkdirTemp("", "tether-bench-bin-")
		if err != nil {
			fmt.Fprintf(stderr, "tether-bench: %v\n", err)
			return 1
		}
		defer os.RemoveAll(dir)
		if *cpBin, err = bench.BuildControlPlane(ctx, dir); err != nil {
			fmt.Fprintf(stderr, "tether-bench: %v\n", err)
			return 1
		}
	}
	var reports []*bench.Report
	for _, c := range configs {
		c.ControlPlaneBin = *cpBin
		log.Info().Int("n", c.Instances).Int("e", c.Envoys).Float64("rate", c.Rate).Str("variant", string(c.Variant)).Msg("run")
		rep, err := bench.Run(ctx, c)
		if err != nil {
			fmt.Fprintf(stderr, "tether-bench: N=%d E=%d: %v\n", c.Instances, c.Envoys, err)
			return 1
		}
		reports = append(reports, rep)
	}
	if err := bench.WriteTable(stdout, reports); err != nil {
		fmt.Fprintf(stderr, "tether-bench: %v\n", err)
		return 1
	}
	if *jsonOut != "" {
		b, err := json.MarshalIndent(reports, "", "  ")
		if err == nil {
			err = os.WriteFile(*jsonOut, append(b, '\n'), 0o600)
		}
		if err != nil {
			fmt.Fprintf(stderr, "tether-bench: -json: %v\n", err)
			return 1
		}
	}
	return 0
}
