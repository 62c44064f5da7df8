package sim

import (
	"fmt"
	"io"
	"maps"
	"slices"
	"strings"
	"text/tabwriter"
)

// WriteTable prints one row per run: the seed, the faults injected by kind, the requests, the
// sessions kept and lost by cause, and the violations.
func WriteTable(w io.Writer, results []Result) {
	tw := tabwriter.NewWriter(w, 0, 0, 2, ' ', 0)
	fmt.Fprintln(tw, "seed\ttopology\tfaults\trequests\tsessions\tkept\tlost: died\tlost: stopped\trefused first\tmodel errors\tviolations")
	total := 0
	for _, r := range results {
		var fs []string
		for _, k := range slices.Sorted(maps.Keys(r.Faults)) {
			fs = append(fs, fmt.Sprintf("%s %d", k, r.Faults[k]))
		}
		fmt.Fprintf(tw, "%d\t%s\t%s\t%d\t%d\t%d\t%d\t%d\t%d\t%d\t%s\n", r.Seed, r.Topology, strings.Join(fs, ", "), r.Stats.Requests,
			r.Stats.Sessions, r.Stats.Kept, r.Stats.LostDied, r.Stats.LostStopped, r.Stats.Refused, r.Stats.Errors, violationSummary(r.Violations))
		total += len(r.Violations)
	}
	_ = tw.Flush()
	fmt.Fprintf(w, "%d runs, %d violations\n", len(results), total)
}

// violationSummary counts violations by invariant, e.g. "inv1 x3, inv2 x1"; "0" when none.
func violationSummary(vs []Violation) string {
	if len(vs) == 0 {
		return "0"
	}
	by := map[int]int{}
	for _, v := range vs {
		by[v.Invariant]++
	}
	var out []string
	for inv := 1; inv <= 6; inv++ {
		if by[inv] > 0 {
			out = append(out, fmt.Sprintf("inv%d x%d", inv, by[inv]))
		}
	}
	return strings.Join(out, ", ")
}

// Kinds counts a run's violations by invariant and kind.
func (r Result) Kinds() map[string]int {
	out := map[string]int{}
	for _, v := range r.Violations {
		out[fmt.Sprintf("%d: %s", v.Invariant, v.Kind)]++
	}
	return out
}

// WriteKinds prints, over all runs, each kind of violation with its count and the seeds that
// found it: the list of defects found.
func WriteKinds(w io.Writer, results []Result) {
	count := map[string]int{}
	seeds := map[string][]string{}
	for _, r := range results {
		for k, n := range r.Kinds() {
			count[k] += n
			seeds[k] = append(seeds[k], fmt.Sprint(r.Seed))
		}
	}
	if len(count) == 0 {
		return
	}
	fmt.Fprintln(w, "\nviolations by invariant and likely cause:")
	tw := tabwriter.NewWriter(w, 0, 0, 2, ' ', 0)
	for _, k := range slices.Sorted(maps.Keys(count)) {
		fmt.Fprintf(tw, "  invariant %s\t%d\tseeds %s\n", k, count[k], strings.Join(seeds[k], ","))
	}
	_ = tw.Flush()
}

// WriteViolations prints each violation of a run with the seed, the schedule and its trace,
// at most max violations (the first ones: later ones often follow from them).
func WriteViolations(w io.Writer, r Result, max int) {
	if len(r.Violations) == 0 {
		return
	}
	fmt.Fprintf(w, "\nseed %d: %d violations (replay: tether-sim -seed %d; logs in %s)\nschedule:\n", r.Seed, len(r.Violations), r.Seed, r.Dir)
	for _, f := range r.Schedule {
		fmt.Fprintf(w, "  %s\n", f)
	}
	// The first violation of each kind, then the others in order, up to max.
	var order []Violation
	seen := map[string]bool{}
	for _, v := range r.Violations {
		if k := fmt.Sprint(v.Invariant, v.Kind); !seen[k] {
			seen[k] = true
			order = append(order, v)
		}
	}
	for _, v := range r.Violations {
		if len(order) >= max+len(seen) {
			break
		}
		order = append(order, v)
	}
	for i, v := range order {
		if i == max {
			fmt.Fprintf(w, "(%d more)\n", len(r.Violations)-max)
			break
		}
		fmt.Fprintf(w, "invariant %d (%s) at %.3fs: %s\n  trace:\n", v.Invariant, v.Kind, v.At.Seconds(), v.What)
		for _, t := range v.Trace {
			fmt.Fprintf(w, "    %s\n", t)
		}
	}
}
