package agent

import (
	"context"
	"fmt"
	"math"
	"time"

	"github.com/shirou/gopsutil/v4/process"
)

// mib is a mebibyte, the unit of the memory figures.
const mib = 1 << 20

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

func clampPercent(v float64) float64 {
	if math.IsNaN(v) || v < 0 {
		return 0
	}
	return min(v, 100)
}
