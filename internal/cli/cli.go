// Package cli holds the command-line helpers shared by tether-agent and tether-controlplane:
// environment binding of flags, the --label flag and the logger (the etcd flags are in
// internal/etcdconn).
package cli

import (
	"errors"
	"flag"
	"fmt"
	"io"
	"os"
	"strings"
	"time"

	"github.com/mattn/go-isatty"
	"github.com/rs/zerolog"

	"github.com/tetherlb/tether/registry"
)

// Durations in logs read as durations ("uptime":"37h49m24.49s", "timeout":"10m0s"), not as
// zerolog's default bare number of milliseconds ("uptime":136164490.1). Set before main
// starts any goroutine, since zerolog reads it unguarded.
func init() { zerolog.DurationFieldFormat = zerolog.DurationFormatString }

// EnvName returns the environment variable that backs a flag: TETHER_ and the flag name in
// upper case with '-' replaced by '_' (max-sessions -> TETHER_MAX_SESSIONS).
func EnvName(flagName string) string {
	return "TETHER_" + strings.ToUpper(strings.ReplaceAll(flagName, "-", "_"))
}

// BindEnv sets each flag of fs that was not given on the command line from TETHER_<NAME>
// (upper case, '-' -> '_'); call after fs.Parse. A bad value yields an error naming the
// variable and the flag.
func BindEnv(fs *flag.FlagSet, lookup func(string) (string, bool)) error {
	set := map[string]bool{}
	fs.Visit(func(f *flag.Flag) { set[f.Name] = true })
	var errs []error
	fs.VisitAll(func(f *flag.Flag) {
		if set[f.Name] {
			return
		}
		env := EnvName(f.Name)
		v, ok := lookup(env)
		if !ok {
			return
		}
		if err := fs.Set(f.Name, v); err != nil {
			errs = append(errs, fmt.Errorf("environment %s=%q: invalid value for --%s: %w", env, v, f.Name, err))
		}
	})
	return errors.Join(errs...)
}

// UnknownEnv refuses TETHER_* variables of environ (KEY=VALUE entries, as os.Environ gives)
// that back no flag of fs and are not among also: a misspelt variable would otherwise be
// silently ignored (TETHER_MAX_SESIONS leaves the server without a session limit).
func UnknownEnv(fs *flag.FlagSet, environ []string, also ...string) error {
	known := map[string]bool{}
	for _, n := range also {
		known[n] = true
	}
	fs.VisitAll(func(f *flag.Flag) { known[EnvName(f.Name)] = true })
	var errs []error
	for _, kv := range environ {
		k, _, _ := strings.Cut(kv, "=")
		if !strings.HasPrefix(k, "TETHER_") || known[k] {
			continue
		}
		hint := ""
		if near := nearest(k, known); near != "" {
			hint = fmt.Sprintf(" (did you mean %s?)", near)
		}
		errs = append(errs, fmt.Errorf("environment %s: no such setting%s; every flag --x-y reads TETHER_X_Y", k, hint))
	}
	return errors.Join(errs...)
}

// nearest returns the name of known at most two edits from k, or "".
func nearest(k string, known map[string]bool) string {
	best, bestD := "", 3
	for n := range known {
		if d := EditDistance(k, n); d < bestD || (d == bestD && n < best) {
			best, bestD = n, d
		}
	}
	return best
}

// EditDistance is the Levenshtein distance between a and b (the agent's HealthCheck.json
// check suggests the nearest field with it too).
func EditDistance(a, b string) int {
	prev := make([]int, len(b)+1)
	cur := make([]int, len(b)+1)
	for j := range prev {
		prev[j] = j
	}
	for i := 1; i <= len(a); i++ {
		cur[0] = i
		for j := 1; j <= len(b); j++ {
			cost := 1
			if a[i-1] == b[j-1] {
				cost = 0
			}
			cur[j] = min(prev[j]+1, cur[j-1]+1, prev[j-1]+cost)
		}
		prev, cur = cur, prev
	}
	return prev[len(b)]
}

// Labels is the repeatable --label KEY=VALUE flag of the agent and of drain; one value may
// also hold a comma-separated list (as TETHER_LABEL must).
type Labels map[string]string

func (l Labels) String() string { return registry.LabelString(l) }

// Set takes KEY=VALUE, or a comma-separated list of them; a key given twice with two values
// is refused, since an instance has one value per label.
func (l Labels) Set(s string) error {
	for _, kv := range strings.Split(s, ",") {
		k, v, ok := strings.Cut(strings.TrimSpace(kv), "=")
		if !ok {
			return fmt.Errorf("%q is not KEY=VALUE, e.g. version=1.4.1", kv)
		}
		if err := registry.ValidateLabel(k, v); err != nil {
			return err
		}
		if old, dup := l[k]; dup && old != v {
			return fmt.Errorf("label %q given twice (%q and %q): an instance has one value per label", k, old, v)
		}
		l[k] = v
	}
	return nil
}

// NewLogger builds the zerolog logger: level debug|info|warn|error, format json|console
// ("" = console when w is a terminal, else json).
func NewLogger(level, format string, w *os.File) (zerolog.Logger, error) {
	var lvl zerolog.Level
	switch level {
	case "debug":
		lvl = zerolog.DebugLevel
	case "info", "":
		lvl = zerolog.InfoLevel
	case "warn":
		lvl = zerolog.WarnLevel
	case "error":
		lvl = zerolog.ErrorLevel
	default:
		return zerolog.Nop(), fmt.Errorf("--log-level: %q is not one of debug, info, warn, error", level)
	}
	if format == "" {
		format = "json"
		if isatty.IsTerminal(w.Fd()) || isatty.IsCygwinTerminal(w.Fd()) {
			format = "console"
		}
	}
	var out io.Writer
	switch format {
	case "json":
		out = w
	case "console":
		out = zerolog.ConsoleWriter{Out: w, TimeFormat: time.RFC3339}
	default:
		return zerolog.Nop(), fmt.Errorf("--log-format: %q is not one of json, console", format)
	}
	return zerolog.New(out).Level(lvl).With().Timestamp().Logger(), nil
}
