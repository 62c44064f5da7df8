// Package winsvc runs tether-agent as a Windows service. The control logic (Serve) is plain
// Go, driven through a small interface (requests in, status reports out), so that the path
// stop -> drain -> exit code is tested on every platform; the Service Control Manager
// adapter, installation and the event log are in the Windows-only files.
package winsvc

import (
	"context"
	"errors"
	"time"

	"github.com/rs/zerolog"
)

// Request is a control request from the Service Control Manager, reduced to what the agent
// acts on.
type Request int

const (
	Interrogate Request = iota // report the current status again
	Stop                       // sc stop, the Services console, tether-agent service stop
	Shutdown                   // Windows is shutting down (preshutdown or shutdown)
)

// State is the service state reported to the SCM.
type State int

const (
	StartPending State = iota
	Running
	StopPending
	Stopped
)

// Status is one report to the SCM. While stopping, CheckPoint grows at least once per
// WaitHint so that the SCM sees progress during a long drain.
type Status struct {
	State      State
	CheckPoint uint32
	WaitHint   time.Duration
}

// RunFunc is the agent: it runs until ctx is canceled, then drains and returns; closing skip
// ends the drain's wait (as a second signal does).
type RunFunc func(ctx context.Context, skip <-chan struct{}) error

// Options tune Serve.
type Options struct {
	// WaitHint is the longest time the SCM should wait between two progress reports.
	WaitHint time.Duration
	// ShutdownGrace bounds the drain when Windows shuts down: the backend goes down with the
	// host, so after this the wait is skipped and the instance deregistered, inside the
	// preshutdown time Windows grants the service.
	ShutdownGrace time.Duration
	Log           zerolog.Logger
}

// Exit codes returned to the SCM as service-specific codes, the same as the command's.
const (
	ExitOK      = 0
	ExitFailure = 1
)

// Serve runs run as a service: it reports StartPending then Running, turns the first Stop or
// Shutdown into a drain (like SIGTERM), ShutdownGrace after a Shutdown (even one that comes
// during a drain) into skipping the drain's wait, reports StopPending with a growing
// checkpoint while the drain lasts, and returns the exit code once run has returned (after
// reporting Stopped). It returns when run returns on its own too (a failure such as a
// duplicate instance ID).
func Serve(requests <-chan Request, report func(Status), run RunFunc, opt Options) uint32 {
	if opt.WaitHint <= 0 {
		opt.WaitHint = 10 * time.Second
	}
	cur := Status{State: StartPending, WaitHint: opt.WaitHint}
	send := func(s Status) { cur = s; report(s) }
	send(cur)

	ctx, cancel := context.WithCancel(context.Background())
	defer cancel()
	skip := make(chan struct{})
	done := make(chan error, 1)
	go func() { done <- run(ctx, skip) }()
	send(Status{State: Running})

	var progress, grace <-chan time.Time
	shutdown := false
	for {
		select {
		case req := <-requests:
			if req == Interrogate {
				report(cur)
				continue
			}
			if req == Shutdown && !shutdown { // also during a drain a stop began
				shutdown = true
				grace = time.After(opt.ShutdownGrace)
			}
			if cur.State == Running {
				opt.Log.Info().Bool("shutdown", shutdown).Msg("service stopping: draining")
				cancel()
				tick := time.NewTicker(opt.WaitHint / 2)
				defer tick.Stop()
				progress = tick.C
				send(Status{State: StopPending, CheckPoint: 1, WaitHint: opt.WaitHint})
			}
		case <-grace:
			grace = nil
			opt.Log.Info().Msg("Windows is shutting down: skipping the drain wait")
			close(skip)
		case <-progress:
			send(Status{State: StopPending, CheckPoint: cur.CheckPoint + 1, WaitHint: opt.WaitHint})
		case err := <-done:
			code := uint32(ExitOK)
			if err != nil {
				code = ExitFailure
				opt.Log.Error().Err(err).Msg("agent failed")
			}
			send(Status{State: Stopped})
			return code
		}
	}
}

// Progress is what the stop command sees of a stopping service, polled once a second.
type Progress struct {
	Elapsed    time.Duration // since the stop request
	CheckPoint uint32        // the agent raises it at least once per WaitHint while it drains
	WaitHint   time.Duration
}

// Setup prepares the agent once the SCM has named the service: its run function, options and
// the log it writes to.
type Setup func(serviceName string) (RunFunc, Options, error)

// InstallOptions describe a service to install.
type InstallOptions struct {
	Name, DisplayName, Description string
	Exe                            string   // absolute path of tether-agent.exe
	Args                           []string // the agent's flags, stored in the service's command line
	// Preshutdown is the time Windows grants the service to drain when it shuts down.
	Preshutdown time.Duration
}

// ErrNotWindows is returned by the service commands on other systems.
var ErrNotWindows = errors.New("service commands work only on Windows, where services exist")
