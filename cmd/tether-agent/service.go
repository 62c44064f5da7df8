package main

import (
	"cmp"
	"context"
	"errors"
	"fmt"
	"io"
	"maps"
	"os"
	"path/filepath"
	"slices"
	"strconv"
	"strings"
	"time"

	"github.com/rs/zerolog"
	"github.com/tetherlb/tether/agent"
	"github.com/tetherlb/tether/internal/winsvc"
)

const serviceUsage = `Usage:
  tether-agent service install [--name NAME] AGENT-FLAGS...
  tether-agent service start|stop|uninstall (--name NAME | --service S --port P)

install checks the agent flags and stores them in an automatic-start Windows service named
NAME (default tether-agent-<service>-<port>) that logs to the Windows event log under the same
name; the service runs "tether-agent service run AGENT-FLAGS...", which only the service
manager starts. stop drains the instance (as SIGTERM does) and waits until the service has
stopped.
`

// Service timings: the SCM's wait hint while draining, and what Windows shutting down grants.
const (
	serviceWaitHint      = 10 * time.Second
	serviceShutdownGrace = 30 * time.Second // drain on shutdown, then deregister
	servicePreshutdown   = serviceShutdownGrace + 15*time.Second
	serviceStartWait     = 30 * time.Second
	serviceStopWait      = 15 * time.Minute
	stopReportEvery      = 10 * time.Second
)

// pathFlags hold file paths: made absolute at install, as a service runs in System32.
var pathFlags = []string{"healthcheck-file", "etcd-ca", "etcd-cert", "etcd-key", "etcd-password-file", "cgroup"}

// serviceCommand runs `tether-agent service VERB ...`. Exit codes as the agent's: 0 done,
// 1 failed, 2 bad input.
func serviceCommand(args []string, stdout, stderr io.Writer) int {
	if len(args) == 0 || !slices.Contains([]string{"install", "uninstall", "start", "stop", "run"}, args[0]) {
		fmt.Fprint(stderr, serviceUsage)
		return 2
	}
	verb := args[0]
	if verb == "run" { // the SCM names the service
		return runService(args[1:], false)
	}
	name, rest, err := serviceName(args[1:])
	if err != nil {
		fmt.Fprintf(stderr, "tether-agent service %s: %v\n%s", verb, err, serviceUsage)
		return 2
	}
	switch verb {
	case "install":
		err = install(name, rest, stdout, stderr)
	case "uninstall":
		if err = winsvc.UninstallService(name); err == nil {
			fmt.Fprintf(stdout, "service %s removed (Windows deletes it once it has stopped)\n", name)
		}
	case "start":
		if err = winsvc.StartService(name, serviceStartWait); err == nil {
			fmt.Fprintf(stdout, "service %s running\n", name)
		}
	case "stop":
		fmt.Fprintf(stdout, "stopping %s: the instance drains first\n", name)
		r := stopReporter{every: stopReportEvery}
		err = winsvc.StopService(name, serviceStopWait, func(p winsvc.Progress) {
			if line := r.line(p); line != "" {
				fmt.Fprintln(stdout, line)
			}
		})
		if err == nil {
			fmt.Fprintf(stdout, "service %s stopped\n", name)
		}
	}
	if err == nil {
		return 0
	}
	fmt.Fprintf(stderr, "tether-agent service %s: %v\n", verb, err)
	if errors.As(err, new(usageError)) {
		return 2
	}
	return 1
}

// stopReporter turns the stopping service's status, polled every second, into a line every
// `every`: how long the drain has lasted, and whether the agent still shows progress (it
// raises its checkpoint at least once per wait hint while it drains; a stuck agent does not).
type stopReporter struct {
	every      time.Duration
	next       time.Duration // the drain's age at the next line
	checkPoint uint32
	changed    time.Duration // the drain's age when checkPoint last changed
}

func (r *stopReporter) line(p winsvc.Progress) string {
	if p.CheckPoint != r.checkPoint {
		r.checkPoint, r.changed = p.CheckPoint, p.Elapsed
	}
	r.next = cmp.Or(r.next, r.every)
	if p.Elapsed < r.next {
		return ""
	}
	for r.next <= p.Elapsed {
		r.next += r.every
	}
	age := p.Elapsed.Truncate(time.Second)
	if still := p.Elapsed - r.changed; p.WaitHint > 0 && still > p.WaitHint {
		return fmt.Sprintf("draining for %s: the agent has shown no progress for %s (it should within %s); see the event log",
			age, still.Truncate(time.Second), p.WaitHint)
	}
	return fmt.Sprintf("draining for %s: waiting for the instance's sessions to end (agent progress %d)", age, p.CheckPoint)
}

// usageError is bad input to a service command (exit 2).
type usageError struct{ error }

// serviceName takes --name out of args, or derives the name from --service and --port.
func serviceName(args []string) (string, []string, error) {
	var name, service, port string
	var rest []string
	for i := 0; i < len(args); i++ {
		a := args[i]
		key, val, hasVal := strings.Cut(strings.TrimLeft(a, "-"), "=")
		if !strings.HasPrefix(a, "-") {
			rest = append(rest, a)
			continue
		}
		if !hasVal && (key == "name" || key == "service" || key == "port") && i+1 < len(args) {
			i++
			val = args[i]
			if key != "name" {
				rest = append(rest, a, val)
			}
		} else if key != "name" {
			rest = append(rest, a)
		}
		switch key {
		case "name":
			name = val
		case "service":
			service = val
		case "port":
			port = val
		}
	}
	if name == "" && service != "" && port != "" {
		name = "tether-agent-" + service + "-" + port
	}
	if name == "" {
		return "", nil, errors.New("give --name, or --service and --port to name the service tether-agent-<service>-<port>")
	}
	if len(name) > 256 || strings.ContainsAny(name, `/\`) {
		return "", nil, fmt.Errorf("--name %q: at most 256 characters without / or \\", name)
	}
	return name, rest, nil
}

// install validates the agent flags as the service will see them (no environment of this
// session) and creates the service with them.
func install(name string, args []string, stdout, stderr io.Writer) error {
	o, err := parseFlags(args, func(string) (string, bool) { return "", false }, stderr)
	if err != nil {
		if strings.Contains(err.Error(), "TETHER_") {
			err = fmt.Errorf("%w (a service does not see this session's TETHER_* variables: use flags and --etcd-password-file)", err)
		}
		return usageError{err}
	}
	stored, err := serviceArgs(o)
	if err != nil {
		return usageError{err}
	}
	exe, err := os.Executable() // absolute, as the service's command line must be
	if err != nil {
		return fmt.Errorf("path of tether-agent: %w", err)
	}
	err = winsvc.InstallService(winsvc.InstallOptions{
		Name: name, DisplayName: "Tether agent " + o.cfg.Service + ":" + strconv.Itoa(o.cfg.Port),
		Description: "Registers " + o.cfg.Service + " on port " + strconv.Itoa(o.cfg.Port) + " with Tether and drains it on stop.",
		Exe:         exe, Args: append([]string{"service", "run"}, stored...), Preshutdown: servicePreshutdown,
	})
	if err != nil {
		return err
	}
	fmt.Fprintf(stdout, "service %s installed (automatic start): %s service run %s\nstart it with: tether-agent service start --name %s\n",
		name, exe, strings.Join(stored, " "), name)
	return nil
}

// serviceArgs is the command line stored for the service: every flag given, --name=value,
// in name order, with file paths made absolute.
func serviceArgs(o *options) ([]string, error) {
	out := make([]string, 0, len(o.given))
	for _, n := range slices.Sorted(maps.Keys(o.given)) {
		v := o.given[n]
		if slices.Contains(pathFlags, n) && v != "" {
			abs, err := filepath.Abs(v)
			if err != nil {
				return nil, fmt.Errorf("--%s: %w", n, err)
			}
			v = abs
		}
		out = append(out, "--"+n+"="+v)
	}
	return out, nil
}

// runService runs the agent under the Service Control Manager with the flags stored at
// install, logging to the event log. legacy is a command line stored without "service run".
func runService(args []string, legacy bool) int {
	err := winsvc.RunService(func(name string) (winsvc.RunFunc, winsvc.Options, error) {
		var out io.Writer = os.Stderr
		if el, err := winsvc.OpenEventLog(name); err == nil {
			out = el
		}
		o, err := parseFlags(args, os.LookupEnv, io.Discard)
		if err == nil {
			err = o.checkEnv(os.Environ())
		}
		if err != nil {
			l := zerolog.New(out)
			l.Error().Err(err).Msg("bad stored flags: reinstall the service")
			return nil, winsvc.Options{}, err
		}
		lvl, err := zerolog.ParseLevel(o.logLevel)
		if err != nil || o.logLevel == "" {
			lvl = zerolog.InfoLevel
		}
		log := zerolog.New(out).Level(lvl).With().Timestamp().Str("windowsService", name).Logger()
		if legacy {
			log.Warn().Msg(`installed by an older tether-agent: its command line lacks "service run"; ` +
				"run service uninstall, then service install with the same flags, to store it")
		}
		o.logDefaults(log)
		o.cfg.StopNow = fmt.Sprintf("Windows sends a stopping service no second stop: the wait ends when the sessions end, "+
			"at --drain-timeout (%s), or %s into a Windows shutdown", o.cfg.DrainTimeout, serviceShutdownGrace)
		run := func(ctx context.Context, skip <-chan struct{}) error { return agent.Run(ctx, o.cfg, log, skip) }
		return run, winsvc.Options{WaitHint: serviceWaitHint, ShutdownGrace: serviceShutdownGrace, Log: log}, nil
	})
	if err != nil {
		fmt.Fprintf(os.Stderr, "tether-agent: as a Windows service: %v\n", err)
		return 1
	}
	return 0
}
