package agent

import (
	"context"
	"fmt"

	"github.com/shirou/gopsutil/v4/cpu"
	"github.com/shirou/gopsutil/v4/mem"
)

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
