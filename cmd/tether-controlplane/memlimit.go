package main

import (
	"context"
	"fmt"
	"math"
	"os"
	"runtime/debug"
	"runtime/metrics"
	"strings"
	"time"

	"github.com/KimMachineGun/automemlimit/memlimit"
	"github.com/rs/zerolog"
)

const (
	// memoryLimitRatio is the share of the container's memory limit given to Go as its soft limit.
	memoryLimitRatio = 0.9
	// memoryFloor is the soft limit outside a container while the live heap is small: 300 MiB
	// held a control plane serving 10,000 instances to 1,000 Envoys at 325-327 MB through bursts
	// of 500 changes, where Go's default let it reach 536-807 MB (docs/performance.md, issue 27).
	memoryFloor = 300 << 20
	// liveHeadroom: above the floor the limit is the live heap times this, so the collector runs
	// about as with GOGC=25 and never continuously: a fixed limit under a grown live heap would
	// have Go spend up to half the CPU collecting, and pushes wait behind it. 1.5 let 10,000
	// instances and 1,000 Envoys reach 426 MB while connecting (live heap ~270 MB); 1.25 held
	// them at 301-331 MB (docs/performance.md).
	liveHeadroom = 1.25
	// memoryFollowEvery is how often the live heap is read: it moves with the registry's size
	// and the number of Envoys, over minutes, not within a second.
	memoryFollowEvery = time.Second
	// liveHeapMetric is the heap the last collection found live (runtime/metrics, Go 1.21).
	liveHeapMetric = "/gc/heap/live:bytes"
)

// memoryPolicy is --memory-limit: "auto", "off" or a fixed size.
type memoryPolicy struct {
	off   bool
	fixed int64 // >0: this soft limit, whatever the container or GOMEMLIMIT say
}

func parseMemoryPolicy(v string) (memoryPolicy, error) {
	switch strings.TrimSpace(v) {
	case "auto", "":
		return memoryPolicy{}, nil
	case "off":
		return memoryPolicy{off: true}, nil
	}
	n, err := parseBytes(v)
	if err != nil || n == 0 {
		return memoryPolicy{}, fmt.Errorf("%q is not auto, off or a size such as 512MiB", v)
	}
	return memoryPolicy{fixed: n}, nil
}

// headroomLimit is the soft limit outside a container for a live heap of live bytes.
func headroomLimit(live uint64) int64 {
	return max(memoryFloor, int64(float64(min(live, math.MaxInt64/2))*liveHeadroom))
}

// setMemoryLimit gives Go its soft memory limit, the first of: --memory-limit's size; GOMEMLIMIT
// (or AUTOMEMLIMIT=off, which leaves Go's default); 90% of the container's (cgroup) memory limit;
// else, in "auto", the live heap with headroom (headroomLimit), which the returned follow keeps
// up to date until its context ends (nil when there is nothing to follow). Go does not read a
// container's limit itself, and by default lets the heap grow to twice what is live before
// collecting: a burst of changes then lifts the process far above what it holds (docs/
// performance.md, "Memory under bursts"). provider nil reads the cgroup.
func setMemoryLimit(log zerolog.Logger, provider memlimit.Provider, p memoryPolicy) (follow func(context.Context)) {
	switch {
	case p.off:
		log.Info().Msg("no soft memory limit (--memory-limit off): Go collects at twice the live heap")
		return nil
	case p.fixed > 0:
		debug.SetMemoryLimit(p.fixed)
		log.Info().Int64("MiB", p.fixed>>20).Msg("soft memory limit from --memory-limit")
		return nil
	}
	opts := []memlimit.Option{memlimit.WithRatio(memoryLimitRatio)}
	if provider != nil {
		opts = append(opts, memlimit.WithProvider(provider))
	}
	limit, err := memlimit.Set(opts...)
	switch {
	case os.Getenv("GOMEMLIMIT") != "":
		log.Info().Int64("MiB", limit>>20).Msg("soft memory limit from GOMEMLIMIT")
		return nil
	case os.Getenv("AUTOMEMLIMIT") == "off":
		log.Info().Msg("no soft memory limit (AUTOMEMLIMIT=off)")
		return nil
	case err == nil && limit < math.MaxInt64:
		log.Info().Int64("MiB", limit>>20).Msg("soft memory limit set to 90% of the container's memory limit (--memory-limit or GOMEMLIMIT override it)")
		return nil
	}
	log.Debug().AnErr("container", err).Msg("no container memory limit read")
	followLiveHeap(log)
	log.Info().Int64("floor_MiB", memoryFloor>>20).Float64("live_heap_times", liveHeadroom).
		Msg("soft memory limit follows the live heap (--memory-limit sets a fixed one, off none)")
	return func(ctx context.Context) {
		t := time.NewTicker(memoryFollowEvery)
		defer t.Stop()
		for {
			select {
			case <-ctx.Done():
				return
			case <-t.C:
				followLiveHeap(log)
			}
		}
	}
}

// followLiveHeap sets the soft limit from the live heap's last reading.
func followLiveHeap(log zerolog.Logger) {
	s := []metrics.Sample{{Name: liveHeapMetric}}
	metrics.Read(s)
	var live uint64 // 0 (the floor) if this Go does not offer it
	if s[0].Value.Kind() == metrics.KindUint64 {
		live = s[0].Value.Uint64()
	}
	limit := headroomLimit(live)
	if prev := debug.SetMemoryLimit(limit); prev != limit && limit > memoryFloor {
		log.Debug().Int64("MiB", limit>>20).Msg("soft memory limit follows the live heap")
	}
}
