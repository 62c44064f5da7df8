package agenttest

import (
	"context"
	"sync"
	"testing"
	"time"

	"github.com/rs/zerolog"

	"github.com/tetherlb/tether/agent"
)

// Agent is a real agent run in-process by a test (agent.Run, as the binary runs it).
type Agent struct {
	cancel   context.CancelFunc
	skip     chan struct{}
	skipOnce sync.Once
	done     chan struct{}
	err      error // Run's result, once done is closed
}

// Run starts an agent of cfg logging warnings to the test; it is stopped without waiting for
// its sessions (StopNow) when the test ends, and the test fails if it does not stop in 15 s.
func Run(t testing.TB, cfg agent.Config) *Agent {
	t.Helper()
	ctx, cancel := context.WithCancel(context.Background())
	a := &Agent{cancel: cancel, skip: make(chan struct{}), done: make(chan struct{})}
	log := zerolog.New(zerolog.NewTestWriter(t)).Level(zerolog.WarnLevel)
	go func() { a.err = agent.Run(ctx, cfg, log, a.skip); close(a.done) }()
	t.Cleanup(func() {
		a.StopNow()
		select {
		case <-a.done:
			if a.err != nil {
				t.Logf("agent %s stopped: %v", cfg.ID, a.err)
			}
		case <-time.After(15 * time.Second):
			t.Errorf("agent %s did not stop within 15s", cfg.ID)
		}
	})
	return a
}

// Stop stops the agent as a first signal does: it drains, and leaves once its sessions end.
func (a *Agent) Stop() { a.cancel() }

// StopNow stops the agent as a second signal does: no wait for its sessions.
func (a *Agent) StopNow() {
	a.skipOnce.Do(func() { close(a.skip) })
	a.cancel()
}

// Stopped waits up to timeout for Run to return, and says whether it did.
func (a *Agent) Stopped(timeout time.Duration) bool {
	select {
	case <-a.done:
		return true
	case <-time.After(timeout):
		return false
	}
}
