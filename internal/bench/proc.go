package bench

import (
	"bufio"
	"bytes"
	"context"
	"errors"
	"fmt"
	"io"
	"net"
	"net/http"
	"os"
	"os/exec"
	"path/filepath"
	"strconv"
	"strings"
	"syscall"
	"time"

	"github.com/prometheus/common/expfmt"
	"github.com/prometheus/common/model"
	"github.com/shirou/gopsutil/v4/process"
)

// controlPlanePkg is the import path of the control plane's main package.
const controlPlanePkg = "github.com/tetherlb/tether/cmd/tether-controlplane"

// BuildControlPlane compiles tether-controlplane into dir with the go tool and returns the
// binary's path. It must run inside the module (make bench and go test do).
func BuildControlPlane(ctx context.Context, dir string) (string, error) {
	bin := filepath.Join(dir, "tether-controlplane")
	cmd := exec.CommandContext(ctx, "go", "build", "-o", bin, controlPlanePkg)
	if out, err := cmd.CombinedOutput(); err != nil {
		return "", fmt.Errorf("go build %s: %w: %s", controlPlanePkg, err, bytes.TrimSpace(out))
	}
	return bin, nil
}

// Child is a process the harness started, its output in a log file, so that its CPU time and
// memory are its own and not mixed with the harness's.
type Child struct {
	cmd  *exec.Cmd
	proc *process.Process
	log  *os.File
	done chan struct{}
	err  error
}

// StartChild starts bin with args, its stdout and stderr in logPath.
func StartChild(logPath, bin string, args ...string) (*Child, error) {
	logf, err := os.Create(logPath)
	if err != nil {
		return nil, fmt.Errorf("log of %s: %w", bin, err)
	}
	cmd := exec.Command(bin, args...)
	cmd.Stdout, cmd.Stderr = logf, logf
	if err := cmd.Start(); err != nil {
		logf.Close()
		return nil, fmt.Errorf("start %s: %w", bin, err)
	}
	c := &Child{cmd: cmd, log: logf, done: make(chan struct{})}
	go func() {
		c.err = cmd.Wait()
		close(c.done)
	}()
	if c.proc, err = process.NewProcess(int32(cmd.Process.Pid)); err != nil {
		return nil, errors.Join(fmt.Errorf("inspect process of %s: %w", bin, err), c.Stop())
	}
	return c, nil
}

// ControlPlane is tether-controlplane running as a child process.
type ControlPlane struct {
	*Child
	XDSAddr string // where it serves xDS
	admin   string
}

// FreeAddr returns a loopback address with a port that was free a moment ago.
func FreeAddr() (string, error) {
	l, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		return "", fmt.Errorf("find a free port: %w", err)
	}
	defer l.Close()
	return l.Addr().String(), nil
}

// StartControlPlane starts bin against etcd endpoints with extra flags and waits until
// /readyz answers 200. The control plane's logs (warnings and errors) go to logPath.
func StartControlPlane(ctx context.Context, bin string, endpoints []string, logPath string, extra []string) (*ControlPlane, error) {
	xds, err := FreeAddr()
	if err != nil {
		return nil, err
	}
	admin, err := FreeAddr()
	if err != nil {
		return nil, err
	}
	child, err := StartChild(logPath, bin, append([]string{
		"--etcd-endpoints", strings.Join(endpoints, ","),
		"--xds-addr", xds, "--admin-addr", admin,
		"--log-level", "warn", "--log-format", "json"}, extra...)...)
	if err != nil {
		return nil, err
	}
	c := &ControlPlane{Child: child, XDSAddr: xds, admin: admin}
	if err := c.waitReady(ctx); err != nil {
		return nil, errors.Join(err, c.Stop())
	}
	return c, nil
}

func (c *ControlPlane) waitReady(ctx context.Context) error {
	ctx, cancel := context.WithTimeout(ctx, readyTimeout)
	defer cancel()
	client := &http.Client{Timeout: time.Second}
	tick := time.NewTicker(20 * time.Millisecond)
	defer tick.Stop()
	for {
		req, err := http.NewRequestWithContext(ctx, http.MethodGet, "http://"+c.admin+"/readyz", nil)
		if err != nil {
			return fmt.Errorf("readyz request: %w", err)
		}
		if resp, err := client.Do(req); err == nil {
			_, _ = io.Copy(io.Discard, resp.Body) // drained only so the connection is reused
			resp.Body.Close()
			if resp.StatusCode == http.StatusOK {
				return nil
			}
		}
		select {
		case <-c.done:
			return fmt.Errorf("control plane exited before it was ready: %v (log: %s)", c.err, c.log.Name())
		case <-ctx.Done():
			return fmt.Errorf("control plane not ready after %s (log: %s)", readyTimeout, c.log.Name())
		case <-tick.C:
		}
	}
}

// Usage is a process's CPU time so far and its peak resident memory.
type Usage struct {
	CPUSeconds float64
	PeakRSS    int64
}

// Usage reads the process's CPU time and peak resident memory.
func (c *Child) Usage(ctx context.Context) (Usage, error) {
	t, err := c.proc.TimesWithContext(ctx)
	if err != nil {
		return Usage{}, fmt.Errorf("CPU times of %s: %w", c.cmd.Path, err)
	}
	hwm, err := peakRSS(c.cmd.Process.Pid)
	if err != nil {
		return Usage{}, err
	}
	return Usage{CPUSeconds: t.User + t.System, PeakRSS: hwm}, nil
}

// resetPeakRSS starts a new VmHWM measurement of the control plane (Linux's clear_refs 5),
// so that the scenario's peak is told apart from the initial connection of every Envoy.
func (c *ControlPlane) resetPeakRSS() error {
	if err := os.WriteFile(fmt.Sprintf("/proc/%d/clear_refs", c.cmd.Process.Pid), []byte("5"), 0); err != nil {
		return fmt.Errorf("reset peak RSS: %w", err)
	}
	return nil
}

// peakRSS reads VmHWM, the peak resident set size, from /proc/<pid>/status.
func peakRSS(pid int) (int64, error) {
	b, err := os.ReadFile(fmt.Sprintf("/proc/%d/status", pid))
	if err != nil {
		return 0, fmt.Errorf("read peak RSS: %w", err)
	}
	sc := bufio.NewScanner(bytes.NewReader(b))
	for sc.Scan() {
		if rest, ok := strings.CutPrefix(sc.Text(), "VmHWM:"); ok {
			kb, err := strconv.ParseInt(strings.TrimSuffix(strings.TrimSpace(rest), " kB"), 10, 64)
			if err != nil {
				return 0, fmt.Errorf("parse VmHWM %q: %w", rest, err)
			}
			return kb * 1024, nil
		}
	}
	return 0, errors.New("no VmHWM in /proc status")
}

// metrics scrapes the control plane's /metrics and sums every sample by metric name.
func (c *ControlPlane) metrics(ctx context.Context) (map[string]float64, error) {
	ctx, cancel := context.WithTimeout(ctx, 5*time.Second)
	defer cancel()
	req, err := http.NewRequestWithContext(ctx, http.MethodGet, "http://"+c.admin+"/metrics", nil)
	if err != nil {
		return nil, fmt.Errorf("metrics request: %w", err)
	}
	resp, err := http.DefaultClient.Do(req)
	if err != nil {
		return nil, fmt.Errorf("scrape control plane metrics: %w", err)
	}
	defer resp.Body.Close()
	if resp.StatusCode != http.StatusOK {
		return nil, fmt.Errorf("scrape control plane metrics: status %s", resp.Status)
	}
	return parseMetrics(resp.Body)
}

// parseMetrics sums the samples of each counter, gauge and untyped family of a Prometheus
// text exposition by name (labels dropped); enough for the counters the harness reads.
func parseMetrics(r io.Reader) (map[string]float64, error) {
	parser := expfmt.NewTextParser(model.UTF8Validation)
	families, err := parser.TextToMetricFamilies(r)
	if err != nil {
		return nil, fmt.Errorf("read metrics: %w", err)
	}
	out := make(map[string]float64, len(families))
	for name, mf := range families {
		for _, m := range mf.GetMetric() {
			out[name] += m.GetCounter().GetValue() + m.GetGauge().GetValue() + m.GetUntyped().GetValue()
		}
	}
	return out, nil
}

// Stop sends SIGTERM, waits up to 15 s for a graceful exit, then kills the process.
func (c *Child) Stop() error {
	defer c.log.Close()
	select {
	case <-c.done:
		return nil
	default:
	}
	if err := c.cmd.Process.Signal(syscall.SIGTERM); err != nil {
		return fmt.Errorf("stop %s: %w", c.cmd.Path, err)
	}
	t := time.NewTimer(15 * time.Second)
	defer t.Stop()
	select {
	case <-c.done:
		return nil
	case <-t.C:
		kerr := c.cmd.Process.Kill()
		<-c.done
		return errors.Join(fmt.Errorf("%s did not stop within 15 s of SIGTERM; killed", c.cmd.Path), kerr)
	}
}
