package sim

import (
	"context"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"strconv"
	"syscall"
	"time"
)

// BuildAgent builds the tether-agent binary into dir and returns its path. The simulation runs
// real agent processes, so that kill -9 is a real SIGKILL and a graceful stop a real SIGTERM.
func BuildAgent(ctx context.Context, dir string) (string, error) {
	bin := filepath.Join(dir, "tether-agent")
	cmd := exec.CommandContext(ctx, "go", "build", "-o", bin, "github.com/tetherlb/tether/cmd/tether-agent") //nolint:gosec // G204: the path is the run's own scratch directory
	if out, err := cmd.CombinedOutput(); err != nil {
		return "", fmt.Errorf("build tether-agent: %w: %s", err, out)
	}
	return bin, nil
}

// agentTimings are the agents' flags, shortened so that a run of seconds sees leases lapse,
// drains settle and heartbeats pass.
const (
	agentTTL          = 2 * time.Second
	agentInterval     = 100 * time.Millisecond
	agentHeartbeat    = time.Second
	agentDrainTimeout = 4 * time.Second
	agentDrainSettle  = 300 * time.Millisecond
)

// agentProc is one agent process beside a server.
type agentProc struct {
	withSessions bool // runs with --sessions-url
	cmd          *exec.Cmd
	done         chan struct{}
}

func (s *Sim) startAgent(srv *server, withSessions bool) (*agentProc, error) {
	base := "http://" + srv.addr()
	args := []string{
		"--etcd-endpoints", s.etcdEndpoint,
		"--service", srv.service, "--id", srv.id,
		"--address", "127.0.0.1", "--port", strconv.Itoa(srv.port),
		"--label", "version=" + strconv.Itoa(srv.version),
		"--health-url", base + "/health", "--available-url", base + "/ready",
		"--ttl", agentTTL.String(), "--interval", agentInterval.String(), "--heartbeat", agentHeartbeat.String(),
		"--drain-timeout", agentDrainTimeout.String(), "--drain-settle", agentDrainSettle.String(),
		"--probe-timeout", "500ms", "--metrics-addr", "", "--log-format", "json", "--log-level", "info",
	}
	if withSessions {
		args = append(args, "--sessions-url", base+"/sessions")
	}
	logf, err := os.OpenFile(filepath.Join(s.dir, "agent-"+srv.id+".log"), os.O_CREATE|os.O_APPEND|os.O_WRONLY, 0o600)
	if err != nil {
		return nil, err
	}
	cmd := exec.Command(s.opts.AgentBin, args...) //nolint:gosec // G204: the agent binary the run built or was given, with its own flags
	cmd.Stdout, cmd.Stderr = logf, logf
	if err := cmd.Start(); err != nil {
		_ = logf.Close()
		return nil, fmt.Errorf("start agent %s: %w", srv.id, err)
	}
	a := &agentProc{withSessions: withSessions, cmd: cmd, done: make(chan struct{})}
	go func() {
		_ = cmd.Wait()
		_ = logf.Close()
		close(a.done)
	}()
	return a, nil
}

// kill is kill -9: the agent's lease stays until its TTL.
func (a *agentProc) kill() {
	_ = a.cmd.Process.Signal(syscall.SIGKILL)
	<-a.done
}

// stop is a graceful stop (SIGTERM): the agent drains, deregisters and exits; it waits at
// most limit, then kills.
func (a *agentProc) stop(limit time.Duration) {
	_ = a.cmd.Process.Signal(syscall.SIGTERM)
	select {
	case <-a.done:
	case <-time.After(limit):
		a.kill()
	}
}

func (a *agentProc) running() bool {
	select {
	case <-a.done:
		return false
	default:
		return true
	}
}
