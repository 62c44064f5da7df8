// Package ctl holds tether-controlplane's operator commands, each a function of its
// arguments, environment and output that returns the exit code: status prints the registry;
// drain takes instances out of rotation (by ID, or every instance of a version by label) by
// writing a drain under <prefix>/drains/<service>/<name>, removes it with --undo, waits with
// --wait until the drained instances hold no sessions; drains lists the drains; service
// validates and writes a service's configuration. The binary's main only dispatches to them.
package ctl

import (
	"cmp"
	"context"
	"encoding/json"
	"errors"
	"flag"
	"fmt"
	"io"
	"maps"
	"slices"
	"strings"
	"time"

	clientv3 "go.etcd.io/etcd/client/v3"

	"github.com/tetherlb/tether/internal/cli"
	"github.com/tetherlb/tether/internal/etcdconn"
	"github.com/tetherlb/tether/internal/overview"
	"github.com/tetherlb/tether/registry"
)

// Command is one operator command: args follow its name; flags also read TETHER_<FLAG> from
// lookup. It returns the exit code.
type Command func(ctx context.Context, args []string, lookup func(string) (string, bool), stdout, stderr io.Writer) int

// Commands are tether-controlplane's operator commands by name.
var Commands = map[string]Command{"status": Status, "drain": Drain, "drains": Drains, "service": Service}

// Exit codes of the commands.
const (
	exitOK      = 0
	exitFailure = 1 // etcd unreachable, permission denied, the drain removed during --wait
	exitUsage   = 2 // bad arguments: unknown service, bad labels, ...
	exitTimeout = 3 // --wait reached --timeout with sessions left
	// exitInterrupted: Ctrl-C (or SIGTERM) during --wait, 128+SIGINT as shells report it; the
	// drain stays in place. Not exitFailure: nothing failed.
	exitInterrupted = 130
)

// Defaults.
const (
	defaultWaitTimeout = time.Hour
	defaultOpTimeout   = 10 * time.Second // one etcd request
)

// pollInterval is how often --wait reads the registry; tests shorten it.
var pollInterval = time.Second

// common holds the flags every command takes (etcd's, --prefix and a time limit) and where
// the command's errors go.
type common struct {
	etcd        etcdconn.Flags
	prefix      *string
	timeoutFlag string
	timeout     *time.Duration
	name        string
	stderr      io.Writer
}

// flags returns the flag set of `tether-controlplane name` with the common flags; -h prints
// usage, then the flags.
func (c *common) flags(name, usage string, stderr io.Writer, timeoutFlag, timeoutUsage string) *flag.FlagSet {
	c.name, c.stderr = name, stderr
	fs := flag.NewFlagSet("tether-controlplane "+name, flag.ContinueOnError)
	fs.SetOutput(stderr)
	fs.Usage = func() {
		fmt.Fprint(stderr, usage)
		fs.PrintDefaults()
	}
	c.etcd.Register(fs, "127.0.0.1:2379")
	c.prefix = fs.String("prefix", registry.DefaultPrefix, "etcd key prefix of the registry")
	c.timeoutFlag = timeoutFlag
	c.timeout = fs.Duration(timeoutFlag, defaultOpTimeout, timeoutUsage)
	return fs
}

// fail prints err as the command's error and returns code.
func (c *common) fail(code int, err error) int {
	fmt.Fprintf(c.stderr, "tether-controlplane %s: %v\n", c.name, err)
	return code
}

// check checks the common flags; its errors are usage errors. It returns the normalized
// prefix and the etcd client configuration.
func (c *common) check(lookup func(string) (string, bool)) (string, clientv3.Config, error) {
	if *c.timeout <= 0 {
		return "", clientv3.Config{}, fmt.Errorf("--%s: %s must be positive, e.g. 10s", c.timeoutFlag, *c.timeout)
	}
	p, err := registry.NormalizePrefix(*c.prefix)
	if err != nil {
		return "", clientv3.Config{}, fmt.Errorf("--prefix: %w", err)
	}
	ec, err := c.etcd.ClientConfig(lookup)
	return p, ec, err
}

// connect checks the common flags and opens an etcd client for a command on service svc.
func (c *common) connect(ctx context.Context, lookup func(string) (string, bool), svc string, stdout io.Writer) (*command, int, error) {
	p, ec, err := c.check(lookup)
	if err != nil {
		return nil, exitUsage, err
	}
	cl, err := etcdconn.Open(ctx, ec)
	if err != nil {
		return nil, exitFailure, err
	}
	return &command{cli: cl, prefix: p, svc: svc, stdout: stdout, stderr: c.stderr, opTimeout: *c.timeout}, exitOK, nil
}

// parse parses flags placed before, between or after the positional arguments, then reads
// TETHER_<FLAG> into each flag not given, before the command reads any flag (a bad variable
// is said here). ok is false when the command ends with code: 0 for -h, 2 for a bad flag or
// variable.
func (c *common) parse(fs *flag.FlagSet, args []string, lookup func(string) (string, bool)) (pos []string, code int, ok bool) {
	for {
		if err := fs.Parse(args); errors.Is(err, flag.ErrHelp) {
			return nil, exitOK, false
		} else if err != nil {
			return nil, exitUsage, false
		}
		if fs.NArg() == 0 {
			break
		}
		pos = append(pos, fs.Arg(0))
		args = fs.Args()[1:]
	}
	if err := cli.BindEnv(fs, lookup); err != nil {
		return nil, c.fail(exitUsage, err), false
	}
	return pos, exitOK, true
}

// Drain runs `tether-controlplane drain`; args follow "drain". It returns the exit code.
func Drain(ctx context.Context, args []string, lookup func(string) (string, bool), stdout, stderr io.Writer) int {
	var c common
	fs := c.flags("drain", `Usage:
  tether-controlplane drain SERVICE/ID [flags]                  drain one instance
  tether-controlplane drain SERVICE --label KEY=VALUE [flags]   drain every instance with these labels
  tether-controlplane drain ... --undo                          remove the drain

A drained instance keeps the sessions it holds (their requests still reach it through the
session cookie) and gets no new session, whatever its agent reports, until the drain is
removed. In source-ip mode it leaves Envoy's hash ring and its users move at once. A label drain also drains instances that register later with those labels.

Exit codes: 0 done, 1 etcd failure, 2 bad arguments, 3 --wait timed out with sessions left,
130 --wait stopped by Ctrl-C (the drain stays in place).

Flags:
`, stderr, "request-timeout", "time limit of each etcd request")
	usage := fs.Usage
	labels := cli.Labels{}
	fs.Var(labels, "label", "select the instances carrying this label, KEY=VALUE (repeat, or comma-separate: all must match)")
	undo := fs.Bool("undo", false, "remove the drain: the instances take new sessions again")
	wait := fs.Bool("wait", false, "after draining, wait until the drained instances hold no sessions, printing the count as it falls")
	timeout := fs.Duration("timeout", defaultWaitTimeout, "with --wait: give up after this long (exit code 3)")
	reason := fs.String("reason", "", "a note stored with the drain and shown with the drained instances")
	force := fs.Bool("force", false, "drain anyway: a service the registry does not know yet (no configuration, no instance), a server of a source-ip service (its users move), or the last servers available for new sessions")
	// A bad flag gets its one-line error (printed by the flag package) and a pointer to -h,
	// not the whole usage; -h itself gets the usage alone.
	fs.Usage = func() {}
	pos, code, ok := c.parse(fs, args, lookup)
	switch {
	case !ok && code == exitOK:
		usage()
		return code
	case !ok:
		fmt.Fprintln(stderr, "see tether-controlplane drain -h")
		return code
	}
	svc, d, err := target(pos, labels)
	if err != nil {
		return c.fail(exitUsage, err)
	}
	d.Reason = *reason
	switch {
	case *undo && *wait:
		return c.fail(exitUsage, errors.New("--undo and --wait do not go together"))
	case *wait && *timeout <= 0:
		return c.fail(exitUsage, fmt.Errorf("--timeout: %s must be positive, e.g. 30m", *timeout))
	case len(d.Reason) > registry.MaxReason:
		return c.fail(exitUsage, fmt.Errorf("--reason: over %d characters", registry.MaxReason))
	}
	cmd, code, err := c.connect(ctx, lookup, svc, stdout)
	if err != nil {
		return c.fail(code, err)
	}
	defer cmd.cli.Close()
	if *undo {
		code, err = cmd.undo(ctx, d)
	} else {
		code, err = cmd.drain(ctx, d, *force, *wait, *timeout)
	}
	if err != nil {
		return c.fail(code, err)
	}
	return code
}

// target reads SERVICE/ID or SERVICE with labels into a service and a drain.
func target(pos []string, labels cli.Labels) (string, registry.Drain, error) {
	var d registry.Drain
	if len(pos) != 1 {
		return "", d, errors.New("give one target: SERVICE/ID, or SERVICE with --label KEY=VALUE (see -h)")
	}
	svc, id, byID := strings.Cut(pos[0], "/")
	if err := registry.ValidateServiceName(svc); err != nil {
		return "", d, err
	}
	switch {
	case byID && len(labels) > 0:
		return "", d, fmt.Errorf("%s names one instance: drop --label, or drain %s --label ... for a selection", pos[0], svc)
	case byID:
		if err := registry.ValidateInstanceID(id); err != nil {
			return "", d, err
		}
		d.Instance = id
	case len(labels) == 0:
		return "", d, fmt.Errorf("%s is a whole service: give SERVICE/ID for one instance, or --label KEY=VALUE for a selection (draining every instance would leave no server for new sessions)", svc)
	default:
		d.Labels = maps.Clone(labels)
	}
	return svc, d, nil
}

type command struct {
	opTimeout time.Duration
	cli       *clientv3.Client
	prefix    string
	svc       string
	stdout    io.Writer
	stderr    io.Writer
}

// snapshot is the registry at one revision, with each key's ModRevision.
type snapshot struct {
	st   *registry.State // drains applied
	mods map[string]int64
}

// read lists the registry once, at one revision, within --request-timeout.
func (c *command) read(ctx context.Context) (*snapshot, error) {
	ctx, cancel := context.WithTimeout(ctx, c.opTimeout)
	defer cancel()
	return read(ctx, c.cli, c.prefix, true)
}

// read lists the registry under prefix once, at one revision, and applies the drains (and,
// unless allowLoopback, the refusal of loopback addresses) as the control plane does, so
// that every command shows the states the control plane serves.
func read(ctx context.Context, cli *clientv3.Client, prefix string, allowLoopback bool) (*snapshot, error) {
	l, err := registry.List(ctx, cli, prefix)
	if err != nil {
		return nil, fmt.Errorf("read etcd %v: %w", cli.Endpoints(), err)
	}
	st := registry.BuildState(prefix, l.Revision, l.KVs, nil)
	if !allowLoopback {
		refuseLoopback(st, prefix)
	}
	s := &snapshot{st: registry.ApplyDrains(st), mods: make(map[string]int64, len(l.KVs))}
	for _, kv := range l.KVs {
		s.mods[string(kv.Key)] = kv.ModRevision
	}
	return s, nil
}

// matched returns the IDs of the service's instances d selects, sorted.
func matched(st *registry.State, svc string, d registry.Drain) []string {
	var ids []string
	if s := st.Services[svc]; s != nil {
		for id, in := range s.Instances {
			if d.Matches(&in) {
				ids = append(ids, id)
			}
		}
	}
	slices.Sort(ids)
	return ids
}

func (c *command) what(d registry.Drain) string {
	if d.Instance != "" {
		return c.svc + "/" + d.Instance
	}
	return "the instances of " + c.svc + " with labels " + registry.LabelString(d.Labels)
}

func (c *command) drain(ctx context.Context, d registry.Drain, force, wait bool, timeout time.Duration) (int, error) {
	snap, err := c.read(ctx)
	if err != nil {
		return exitFailure, err
	}
	st := snap.st
	if st.Services[c.svc] == nil && len(st.Drains[c.svc]) == 0 && !force {
		list := cmp.Or(strings.Join(slices.Sorted(maps.Keys(st.Services)), ", "), "none")
		return exitUsage, fmt.Errorf("unknown service %q: it has no configuration and no instance under %s (known services: %s); pass --force to drain it before it exists", c.svc, c.prefix, list)
	}
	ids := matched(st, c.svc, d)
	if err := refusal(st.Services[c.svc], ids); err != nil && !force {
		return exitUsage, fmt.Errorf("%w; nothing written (pass --force to drain anyway)", err)
	}
	name := registry.DrainName(d)
	d.CreatedAt = time.Now().UTC().Truncate(time.Second)
	octx, cancel := context.WithTimeout(ctx, c.opTimeout)
	stored, created, err := registry.PutDrain(octx, c.cli, c.prefix, c.svc, name, d)
	cancel()
	if errors.Is(err, registry.ErrDrainNameTaken) {
		return exitUsage, fmt.Errorf("%w; remove or rename it first (etcdctl del %s)", err, registry.DrainKey(c.prefix, c.svc, name))
	}
	if err != nil {
		return exitFailure, err
	}
	if len(ids) == 0 {
		if d.Instance != "" {
			fmt.Fprintf(c.stderr, "warning: no instance %s is registered now; it will start drained when it registers\n", c.what(d))
		} else {
			fmt.Fprintf(c.stderr, "warning: no instance of %s has labels %s now; instances that register with them will start drained%s\n",
				c.svc, registry.LabelString(d.Labels), labelsInUse(st.Services[c.svc], d.Labels))
		}
	}
	if err := refusal(st.Services[c.svc], ids); err != nil {
		fmt.Fprintf(c.stderr, "warning (--force): %v\n", err)
	}
	if created {
		fmt.Fprintf(c.stdout, "drained %s (drain %s): %s\n", c.what(d), name, describe(st, c.svc, ids))
	} else {
		fmt.Fprintf(c.stdout, "%s already drained since %s (drain %s): %s\n", c.what(d), since(stored.CreatedAt), name, describe(st, c.svc, ids))
	}
	if !wait {
		return exitOK, nil
	}
	return c.wait(ctx, name, stored, timeout, st.Revision, ids)
}

// refusal says why draining ids of s needs --force, or nil: a drained server of a source-ip
// service loses its users (Envoy's hash ring leaves out a DRAINING host, so they hash to
// another server at their next request), and a drain that leaves no instance available for
// new sessions sends every new user the overload reply.
func refusal(s *registry.Service, ids []string) error {
	if s == nil || len(ids) == 0 {
		return nil
	}
	var errs []error
	if s.Config.Affinity.Mode == registry.AffinitySourceIP {
		errs = append(errs, fmt.Errorf("%s uses source-ip affinity: the users of %s move to other servers at their next request and lose their sessions",
			s.Name, strings.Join(ids, ", ")))
	}
	if !anyAvailable(s, ids) {
		errs = append(errs, fmt.Errorf("no other instance of %s is available for new sessions now: new users get the service's overload reply until one is (start the new instances first)", s.Name))
	}
	return errors.Join(errs...)
}

// labelsInUse lists the values the instances of s carry for the label keys of want, to spot
// a typo: " (instances of app carry version=1.4.1 (3), version=1.4.2 (2))".
func labelsInUse(s *registry.Service, want map[string]string) string {
	if s == nil {
		return ""
	}
	counts := map[string]int{}
	for _, in := range s.Instances {
		for k, v := range in.Labels {
			if _, ok := want[k]; ok {
				counts[k+"="+v]++
			}
		}
	}
	if len(counts) == 0 {
		keys := map[string]bool{}
		for _, in := range s.Instances {
			for k := range in.Labels {
				keys[k] = true
			}
		}
		if len(keys) == 0 {
			return " (its instances carry no labels)"
		}
		return " (its instances carry no such label key; their keys: " + strings.Join(slices.Sorted(maps.Keys(keys)), ", ") + ")"
	}
	parts := make([]string, 0, len(counts))
	for _, kv := range slices.Sorted(maps.Keys(counts)) {
		parts = append(parts, fmt.Sprintf("%s (%d)", kv, counts[kv]))
	}
	return " (instances of " + s.Name + " carry " + strings.Join(parts, ", ") + ")"
}

// anyAvailable reports whether an instance of s outside drained takes new sessions.
func anyAvailable(s *registry.Service, drained []string) bool {
	for id, in := range s.Instances {
		if in.State == registry.StateAvailable && !slices.Contains(drained, id) {
			return true
		}
	}
	return false
}

func since(t time.Time) string {
	if t.IsZero() {
		return "an unknown time"
	}
	return t.Local().Format(time.DateTime)
}

// describe says what the drain means for the instances it selects now.
func describe(st *registry.State, svc string, ids []string) string {
	if len(ids) == 0 {
		return "no instance selected now"
	}
	s := st.Services[svc]
	n, unknown := 0, []string{}
	for _, id := range ids {
		in := s.Instances[id]
		n += in.Load.Sessions
		if !in.Load.SessionsKnown() {
			unknown = append(unknown, id)
		}
	}
	if s.Config.Affinity.Mode == registry.AffinitySourceIP {
		// Envoy's hash ring holds healthy hosts only: a drained (DRAINING) server leaves it,
		// and the source address is the only session source-ip has (envoy-rules row 12).
		return fmt.Sprintf("%s takes no new sessions, and its users move to other servers at their next request (source-ip affinity)", strings.Join(ids, ", "))
	}
	count := overview.Plural(n, "session")
	if len(unknown) > 0 {
		count = fmt.Sprintf("sessions (%s counted; unknown on %s, whose agents measure none)", count, strings.Join(unknown, ", "))
	}
	if len(ids) == 1 {
		return fmt.Sprintf("%s keeps its %s and takes no new ones", ids[0], count)
	}
	return fmt.Sprintf("%s (%s) keep their %s and take no new ones", overview.Plural(len(ids), "instance"), strings.Join(ids, ", "), count)
}

// undo deletes every drain of the service with d's selector.
func (c *command) undo(ctx context.Context, d registry.Drain) (int, error) {
	snap, err := c.read(ctx)
	if err != nil {
		return exitFailure, err
	}
	var names []string
	for name, other := range snap.st.Drains[c.svc] {
		if other.Instance == d.Instance && maps.Equal(other.Labels, d.Labels) {
			names = append(names, name)
		}
	}
	// A value that failed validation still deserves removal under the command's own name.
	if _, bad := snap.st.Rejected[registry.DrainKey(c.prefix, c.svc, registry.DrainName(d))]; bad {
		names = append(names, registry.DrainName(d))
	}
	slices.Sort(names)
	names = slices.Compact(names)
	if len(names) == 0 {
		if d.Instance != "" {
			if s := snap.st.Services[c.svc]; s != nil {
				if m, ok := s.Drained[d.Instance]; ok {
					dd := snap.st.Drains[c.svc][m.Name]
					return exitUsage, fmt.Errorf("%s is not drained by itself but by drain %s (%s): undo that one, e.g. tether-controlplane drain %s --label %s --undo",
						c.what(d), m.Name, dd.Selector(), c.svc, strings.ReplaceAll(registry.LabelString(dd.Labels), ",", " --label "))
				}
			}
		}
		verb := "is"
		if d.Instance == "" {
			verb = "are" // "the instances of ... are"
		}
		return exitUsage, fmt.Errorf("%s %s not drained: nothing to undo (tether-controlplane drains lists the drains)", c.what(d), verb)
	}
	for _, name := range names {
		octx, cancel := context.WithTimeout(ctx, c.opTimeout)
		_, err := registry.DeleteDrain(octx, c.cli, c.prefix, c.svc, name)
		cancel()
		if err != nil {
			return exitFailure, err
		}
	}
	ids := matched(snap.st, c.svc, d)
	fmt.Fprintf(c.stdout, "undrained %s (drain %s): ", c.what(d), strings.Join(names, ", "))
	still := []string{}
	rest := maps.Clone(snap.st.Drains[c.svc])
	for _, n := range names {
		delete(rest, n)
	}
	for _, id := range ids {
		in := snap.st.Services[c.svc].Instances[id]
		if m, ok := registry.DrainFor(rest, &in); ok {
			still = append(still, id+" (drain "+m.Name+")")
		}
	}
	switch {
	case len(ids) == 0:
		fmt.Fprintln(c.stdout, "no instance was selected")
	case len(still) > 0:
		fmt.Fprintf(c.stdout, "%s may take new sessions again; still drained by another drain: %s\n", strings.Join(ids, ", "), strings.Join(still, ", "))
	default:
		fmt.Fprintf(c.stdout, "%s may take new sessions again\n", strings.Join(ids, ", "))
	}
	return exitOK, nil
}

// Drains runs `tether-controlplane drains`; args follow "drains".
func Drains(ctx context.Context, args []string, lookup func(string) (string, bool), stdout, stderr io.Writer) int {
	var c common
	fs := c.flags("drains", "Usage: tether-controlplane drains [SERVICE] [flags]\n\nLists the operators' drains: what each selects, since when, the instances it drains now and their sessions.\n\nFlags:\n",
		stderr, "request-timeout", "time limit of each etcd request")
	asJSON := fs.Bool("json", false, "print the drains as JSON")
	pos, code, ok := c.parse(fs, args, lookup)
	if !ok {
		return code
	}
	if len(pos) > 1 {
		return c.fail(exitUsage, fmt.Errorf("unexpected argument %q (see -h)", pos[1]))
	}
	svc := ""
	if len(pos) == 1 {
		svc = pos[0]
		if err := registry.ValidateServiceName(svc); err != nil {
			return c.fail(exitUsage, err)
		}
	}
	cmd, code, err := c.connect(ctx, lookup, svc, stdout)
	if err != nil {
		return c.fail(code, err)
	}
	defer cmd.cli.Close()
	snap, err := cmd.read(ctx)
	if err != nil {
		return c.fail(exitFailure, err)
	}
	drains := overview.FromState(snap.st).Drains
	if svc != "" {
		drains = slices.DeleteFunc(drains, func(d overview.Drain) bool { return d.Service != svc })
	}
	var bad []string
	for key := range snap.st.Rejected {
		if strings.HasPrefix(key, registry.DrainsPrefix(cmd.prefix)) {
			bad = append(bad, key)
		}
	}
	slices.Sort(bad)
	if *asJSON {
		enc := json.NewEncoder(stdout)
		enc.SetIndent("", "  ")
		if err := enc.Encode(drains); err != nil {
			return c.fail(exitFailure, err)
		}
	} else if len(drains) == 0 {
		fmt.Fprintln(stdout, "no drains")
	} else if err := overview.WriteDrains(stdout, drains, time.Now()); err != nil {
		return c.fail(exitFailure, err)
	}
	for _, key := range bad {
		fmt.Fprintf(stderr, "warning: %s is not a valid drain and is ignored: %s\n", key, strings.ReplaceAll(snap.st.Rejected[key], "\n", "; "))
	}
	return exitOK
}
