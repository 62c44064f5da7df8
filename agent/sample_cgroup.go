package agent

import (
	"context"
	"fmt"
	"os"
	"path/filepath"
	"runtime"
	"strconv"
	"strings"
	"time"

	"github.com/shirou/gopsutil/v4/mem"
)

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
	for line := range strings.Lines(string(b)) {
		f := strings.Fields(line)
		if len(f) != 2 {
			continue
		}
		if n, err := strconv.ParseUint(f[1], 10, 64); err == nil {
			kv[f[0]] = n
		}
	}
	return kv, nil
}
