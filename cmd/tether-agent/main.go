// Command tether-agent registers one backend instance in Tether's etcd registry, keeps its
// state and load up to date, and drains it on SIGTERM or SIGINT (a second signal skips the
// wait). Exit codes: 0 clean drain, 1 runtime failure, 2 bad flags. On Windows it runs as a
// service too: `tether-agent service install|uninstall|start|stop`, where a service stop drains
// as SIGTERM does; the installed service runs `tether-agent service run FLAGS...`.
package main

import (
	"context"
	"fmt"
	"os"
	"os/signal"
	"syscall"

	"github.com/tetherlb/tether/agent"
	"github.com/tetherlb/tether/internal/cli"
	"github.com/tetherlb/tether/internal/version"
	"github.com/tetherlb/tether/internal/winsvc"
)

func main() {
	os.Exit(run(os.Args[1:], os.LookupEnv, os.Stderr))
}

func run(args []string, lookup func(string) (string, bool), stderr *os.File) int {
	if version.Requested(args) {
		version.Print(os.Stdout, "tether-agent")
		return 0
	}
	if len(args) > 0 && args[0] == "service" {
		return serviceCommand(args[1:], os.Stdout, stderr)
	}
	// The command line of a service installed before `service run` existed holds the flags
	// alone: such a process is recognised by its parent, the SCM in session 0. Under Wine it is
	// never recognised (all runs in session 1), and a console run never is.
	if isService, err := winsvc.IsService(); err == nil && isService {
		return runService(args, true)
	}
	o, err := parseFlags(args, lookup, stderr)
	if err == nil {
		err = o.checkEnv(os.Environ())
	}
	if err != nil {
		if isHelp(err) {
			return 0
		}
		fmt.Fprintf(stderr, "tether-agent: %v\n", err)
		return 2
	}
	log, err := cli.NewLogger(o.logLevel, o.logFormat, stderr)
	if err != nil {
		fmt.Fprintf(stderr, "tether-agent: %v\n", err)
		return 2
	}
	o.logDefaults(log)

	ctx, cancel := context.WithCancel(context.Background())
	defer cancel()
	skip := make(chan struct{})
	sigs := make(chan os.Signal, 2)
	signal.Notify(sigs, os.Interrupt, syscall.SIGTERM)
	defer signal.Stop(sigs)
	go func() {
		s := <-sigs
		log.Info().Str("signal", s.String()).Msg("shutting down: draining")
		cancel()
		s = <-sigs
		log.Info().Str("signal", s.String()).Msg("second signal: skipping the drain wait")
		close(skip)
	}()
	if err := agent.Run(ctx, o.cfg, log, skip); err != nil {
		log.Error().Err(err).Msg("agent failed")
		return 1
	}
	return 0
}
