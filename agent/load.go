package agent

import (
	"bufio"
	"bytes"
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"math"
	"net/http"
	neturl "net/url"
	"os"
	"path/filepath"
	"runtime"
	"strconv"
	"strings"
	"time"

	"github.com/prometheus/common/expfmt"
	"github.com/prometheus/common/model"
	"github.com/shirou/gopsutil/v4/cpu"
	"github.com/shirou/gopsutil/v4/mem"
	"github.com/shirou/gopsutil/v4/process"
)

const (
	mib          = 1 << 20
	maxBodyBytes = 8 << 20 // of a sessions or metrics answer
)

// usage is one CPU and memory sample.
type usage struct {
	CPU, Memory, MemoryMB float64 // percent, percent, MiB
}

// sampler measures CPU and memory of the host, a process or a cgroup.
type sampler interface {
	sample(ctx context.Context) (usage, error)
}

func newSampler(ctx context.Context, cfg Config) (sampler, error) {
	switch cfg.LoadSource {
	case LoadProcess:
		p, err := process.NewProcessWithContext(ctx, int32(cfg.PID))
		if err != nil {
			return nil, fmt.Errorf("--pid %d: %w", cfg.PID, err)
		}
		return &processSampler{p: p}, nil
	case LoadCgroup:
		s := &cgroupSampler{dir: cfg.CgroupDir, now: time.Now}
		if _, err := s.sample(ctx); err != nil {
			return nil, fmt.Errorf("--cgroup %s: %w", cfg.CgroupDir, err)
		}
		return s, nil
	default:
		return hostSampler{}, nil
	}
}

// hostSampler measures the whole host: CPU busy since the previous call, used memory.
type hostSampler struct{}

func (hostSampler) sample(ctx context.Context) (usage, error) {
	pct, err := cpu.PercentWithContext(ctx, 0, false)
	if err != nil || len(pct) == 0 {
		return usage{}, fmt.Errorf("host cpu: %w", err)
	}
	vm, err := mem.VirtualMemoryWithContext(ctx)
	if err != nil {
		return usage{}, fmt.Errorf("host memory: %w", err)
	}
	return usage{CPU: clampPercent(pct[0]), Memory: clampPercent(vm.UsedPercent), MemoryMB: float64(vm.Used) / mib}, nil
}

// processSampler measures one process, in percent of the whole host (CPU over all cores,
// resident memory over total memory).
type processSampler struct{ p *process.Process }

func (s *processSampler) sample(ctx context.Context) (usage, error) {
	pct, err := s.p.PercentWithContext(ctx, 0)
	if err != nil {
		return usage{}, fmt.Errorf("process %d cpu: %w", s.p.Pid, err)
	}
	mi, err := s.p.MemoryInfoWithContext(ctx)
	if err != nil {
		return usage{}, fmt.Errorf("process %d memory: %w", s.p.Pid, err)
	}
	vm, err := mem.VirtualMemoryWithContext(ctx)
	if err != nil {
		return usage{}, fmt.Errorf("host memory: %w", err)
	}
	return usage{
		CPU:      clampPercent(pct / float64(runtime.NumCPU())),
		Memory:   clampPercent(float64(mi.RSS) / float64(vm.Total) * 100),
		MemoryMB: float64(mi.RSS) / mib,
	}, nil
}

// cgroupSampler reads a cgroup v2 directory (gopsutil has no cgroup v2 support): CPU from
// cpu.stat usage_usec against cpu.max (or all host cores), memory as memory.current minus
// inactive_file (the working set, as docker stats and the kubelet count it) against
// memory.max (or host memory).
type cgroupSampler struct {
	dir      string
	now      func() time.Time
	lastUsec uint64
	lastAt   time.Time
}

func (s *cgroupSampler) sample(ctx context.Context) (usage, error) {
	var u usage
	stat, err := s.readKV("cpu.stat")
	if err != nil {
		return u, err
	}
	usec, ok := stat["usage_usec"]
	if !ok {
		return u, fmt.Errorf("%s: no usage_usec (is this a cgroup v2 directory?)", filepath.Join(s.dir, "cpu.stat"))
	}
	now := s.now()
	if !s.lastAt.IsZero() && usec >= s.lastUsec {
		wall := float64(now.Sub(s.lastAt).Microseconds()) * s.cpus()
		if wall > 0 {
			u.CPU = clampPercent(float64(usec-s.lastUsec) / wall * 100)
		}
	}
	s.lastUsec, s.lastAt = usec, now

	current, err := s.readUint("memory.current")
	if err != nil {
		return u, err
	}
	if ms, err := s.readKV("memory.stat"); err == nil && ms["inactive_file"] <= current {
		current -= ms["inactive_file"]
	}
	limit, err := s.readUint("memory.max") // "max" reads as 0
	if err != nil {
		return u, err
	}
	if limit == 0 {
		vm, err := mem.VirtualMemoryWithContext(ctx)
		if err != nil {
			return u, fmt.Errorf("host memory: %w", err)
		}
		limit = vm.Total
	}
	u.Memory = clampPercent(float64(current) / float64(limit) * 100)
	u.MemoryMB = float64(current) / mib
	return u, nil
}

// cpus is the cgroup's CPU limit in cores (cpu.max "quota period"), or all host cores.
func (s *cgroupSampler) cpus() float64 {
	b, err := os.ReadFile(filepath.Join(s.dir, "cpu.max"))
	if err == nil {
		f := strings.Fields(string(b))
		if len(f) == 2 && f[0] != "max" {
			q, err1 := strconv.ParseFloat(f[0], 64)
			p, err2 := strconv.ParseFloat(f[1], 64)
			if err1 == nil && err2 == nil && q > 0 && p > 0 {
				return q / p
			}
		}
	}
	return float64(runtime.NumCPU())
}

func (s *cgroupSampler) readUint(name string) (uint64, error) {
	b, err := os.ReadFile(filepath.Join(s.dir, name))
	if err != nil {
		return 0, fmt.Errorf("cgroup: %w", err)
	}
	v := strings.TrimSpace(string(b))
	if v == "max" {
		return 0, nil
	}
	n, err := strconv.ParseUint(v, 10, 64)
	if err != nil {
		return 0, fmt.Errorf("cgroup %s: %w", filepath.Join(s.dir, name), err)
	}
	return n, nil
}

func (s *cgroupSampler) readKV(name string) (map[string]uint64, error) {
	b, err := os.ReadFile(filepath.Join(s.dir, name))
	if err != nil {
		return nil, fmt.Errorf("cgroup: %w", err)
	}
	kv := map[string]uint64{}
	sc := bufio.NewScanner(bytes.NewReader(b))
	for sc.Scan() {
		f := strings.Fields(sc.Text())
		if len(f) != 2 {
			continue
		}
		if n, err := strconv.ParseUint(f[1], 10, 64); err == nil {
			kv[f[0]] = n
		}
	}
	return kv, nil
}

func clampPercent(v float64) float64 {
	if math.IsNaN(v) || v < 0 {
		return 0
	}
	return min(v, 100)
}

// prober makes the agent's HTTP requests to its backend.
type prober struct {
	client *http.Client
}

// get fetches url and returns the status and up to maxBodyBytes of the body. Errors show
// the URL without its query, fragment or password (tokens), as reasons are published.
func (p *prober) get(ctx context.Context, url string) (int, []byte, error) {
	req, err := http.NewRequestWithContext(ctx, http.MethodGet, url, nil)
	if err != nil {
		return 0, nil, fmt.Errorf("%s: bad URL", redactURL(url))
	}
	resp, err := p.client.Do(req)
	if err != nil {
		var ue *neturl.Error
		if errors.As(err, &ue) {
			ue.URL = redactURL(ue.URL) // a redirect may have led elsewhere
		}
		return 0, nil, err
	}
	defer resp.Body.Close()
	body, err := io.ReadAll(io.LimitReader(resp.Body, maxBodyBytes))
	if err != nil {
		return resp.StatusCode, nil, fmt.Errorf("read %s: %w", redactURL(url), err)
	}
	return resp.StatusCode, body, nil
}

// check succeeds on a 2xx answer (Wisej's healthcheck.wx answers 202).
func (p *prober) check(ctx context.Context, url string) error {
	status, _, err := p.get(ctx, url)
	if err != nil {
		return err
	}
	if status < 200 || status > 299 {
		return fmt.Errorf("status %d", status)
	}
	return nil
}

// sessions reads the session count: {"sessions": N}, or with metric set, the sum of that
// metric's samples in Prometheus text format.
func (p *prober) sessions(ctx context.Context, url, metric string) (int, error) {
	status, body, err := p.get(ctx, url)
	if err != nil {
		return 0, err
	}
	if status < 200 || status > 299 {
		return 0, fmt.Errorf("%s: status %d", redactURL(url), status)
	}
	if metric != "" {
		return parseSessionsMetric(body, metric)
	}
	var v struct {
		Sessions *float64 `json:"sessions"`
	}
	if err := json.Unmarshal(body, &v); err != nil {
		return 0, fmt.Errorf("%s: want JSON {\"sessions\": N} (or set --sessions-metric for Prometheus text): %w", redactURL(url), err)
	}
	if v.Sessions == nil {
		return 0, fmt.Errorf("%s: the JSON has no \"sessions\" field", redactURL(url))
	}
	return toCount(*v.Sessions)
}

// parseSessionsMetric sums the samples of one metric family in Prometheus text format.
func parseSessionsMetric(body []byte, metric string) (int, error) {
	parser := expfmt.NewTextParser(model.UTF8Validation)
	families, err := parser.TextToMetricFamilies(bytes.NewReader(body))
	if err != nil {
		return 0, fmt.Errorf("parse Prometheus text: %w", err)
	}
	mf, ok := families[metric]
	if !ok {
		return 0, fmt.Errorf("metric %q not found in the answer", metric)
	}
	var sum float64
	for _, m := range mf.GetMetric() {
		switch {
		case m.Gauge != nil:
			sum += m.GetGauge().GetValue()
		case m.Counter != nil:
			sum += m.GetCounter().GetValue()
		case m.Untyped != nil:
			sum += m.GetUntyped().GetValue()
		default:
			return 0, fmt.Errorf("metric %q is a %s, not a gauge, counter or untyped", metric, mf.GetType())
		}
	}
	return toCount(sum)
}

func toCount(v float64) (int, error) {
	if math.IsNaN(v) || v < 0 || v > 1e9 {
		return 0, errors.New("session count " + strconv.FormatFloat(v, 'g', -1, 64) + " is not a count between 0 and 1e9")
	}
	return int(math.Round(v)), nil
}

// redactURL drops what may hold a secret from a URL: the query, the fragment and a password.
func redactURL(raw string) string {
	u, err := neturl.Parse(raw)
	if err != nil {
		return "(unparsable URL)"
	}
	u.RawQuery, u.ForceQuery, u.Fragment, u.RawFragment = "", false, "", ""
	if u.User != nil {
		u.User = neturl.User(u.User.Username())
	}
	return u.String()
}
