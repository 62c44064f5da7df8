//go:build unix

package agent

import (
	"context"
	"os"
	"runtime"
	"syscall"
	"testing"
	"time"

	"github.com/shirou/gopsutil/v4/mem"
)

// TestProcessAndHostSamplersScale: the samplers' figures are in the units they claim: the
// process's CPU over all the host's cores while it burns one, its resident memory in MiB
// and in percent of the host's, the host's used memory in MiB (each against gopsutil's own
// reading, within what changes between two readings).
func TestProcessAndHostSamplersScale(t *testing.T) {
	ctx := context.Background()
	s, err := newSampler(ctx, Config{LoadSource: LoadProcess, PID: os.Getpid()})
	if err != nil {
		t.Fatal(err)
	}
	if _, err := s.sample(ctx); err != nil { // the CPU interval starts here
		t.Fatal(err)
	}
	var before, after syscall.Rusage
	_ = syscall.Getrusage(syscall.RUSAGE_SELF, &before)
	start := time.Now()
	for x := 0; time.Since(start) < 300*time.Millisecond; x++ { // one core busy
	}
	_ = syscall.Getrusage(syscall.RUSAGE_SELF, &after)
	u, err := s.sample(ctx)
	if err != nil {
		t.Fatal(err)
	}
	wall := time.Since(start)
	cpuTime := time.Duration(after.Utime.Nano() + after.Stime.Nano() - before.Utime.Nano() - before.Stime.Nano())
	want := float64(cpuTime) / float64(wall) * 100 / float64(runtime.NumCPU())
	if u.CPU < want/2-1 || u.CPU > want*1.5+1 { // /proc counts CPU time in 10 ms ticks
		t.Errorf("process CPU %.1f%%, want about %.1f%% (%v of CPU in %v, %d cores)", u.CPU, want, cpuTime, wall, runtime.NumCPU())
	}
	p := s.(*processSampler).p
	mi, err := p.MemoryInfoWithContext(ctx)
	if err != nil {
		t.Fatal(err)
	}
	vm, err := mem.VirtualMemoryWithContext(ctx)
	if err != nil {
		t.Fatal(err)
	}
	rssMiB := float64(mi.RSS) / (1 << 20)
	if u.MemoryMB < rssMiB*0.7 || u.MemoryMB > rssMiB*1.3 {
		t.Errorf("process memory %.1f MiB, want about %.1f", u.MemoryMB, rssMiB)
	}
	pct := float64(mi.RSS) / float64(vm.Total) * 100
	if u.Memory < pct*0.7 || u.Memory > pct*1.3 {
		t.Errorf("process memory %.3f%%, want about %.3f%%", u.Memory, pct)
	}
	h, err := hostSampler{}.sample(ctx)
	if err != nil {
		t.Fatal(err)
	}
	if vm, err = mem.VirtualMemoryWithContext(ctx); err != nil {
		t.Fatal(err)
	}
	usedMiB := float64(vm.Used) / (1 << 20)
	if h.MemoryMB < usedMiB*0.7 || h.MemoryMB > usedMiB*1.3 || h.Memory < vm.UsedPercent*0.7 || h.Memory > vm.UsedPercent*1.3 {
		t.Errorf("host memory %.1f MiB, %.1f%%; want about %.1f MiB, %.1f%%", h.MemoryMB, h.Memory, usedMiB, vm.UsedPercent)
	}
}
