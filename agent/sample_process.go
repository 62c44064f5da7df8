package agent

import (
	"context"
	"fmt"
	"runtime"

	"github.com/shirou/gopsutil/v4/mem"
	"github.com/shirou/gopsutil/v4/process"
)

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
