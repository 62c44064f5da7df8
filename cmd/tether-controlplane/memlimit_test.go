package main

import (
	"context"
	"math"
	"os"
	"runtime/debug"
	"testing"
	"time"

	"github.com/KimMachineGun/automemlimit/memlimit"
	"github.com/rs/zerolog"
)

// cleanMemoryEnv restores Go's soft limit after the test and clears the variables that steer it.
func cleanMemoryEnv(t *testing.T) {
	t.Helper()
	before := debug.SetMemoryLimit(-1)
	t.Cleanup(func() { debug.SetMemoryLimit(before) })
	t.Setenv("GOMEMLIMIT", "")
	t.Setenv("AUTOMEMLIMIT", "") // restored after the test
	if err := os.Unsetenv("AUTOMEMLIMIT"); err != nil {
		t.Fatal(err)
	}
	debug.SetMemoryLimit(math.MaxInt64)
}

// TestMemoryLimitFollowsTheContainer: with a container limit of 1 GiB, Go's soft limit becomes
// 90% of it; with GOMEMLIMIT set, the operator's value stays; --memory-limit's size wins over
// both, and off leaves Go's default.
func TestMemoryLimitFollowsTheContainer(t *testing.T) {
	cleanMemoryEnv(t)
	if f := setMemoryLimit(zerolog.Nop(), memlimit.Limit(1<<30), memoryPolicy{}); f != nil {
		t.Error("a container's limit is fixed: nothing should follow the live heap")
	}
	ratio := memoryLimitRatio
	if got, want := debug.SetMemoryLimit(-1), int64(float64(1<<30)*ratio); got != want {
		t.Errorf("soft limit %d with a 1 GiB container, want %d", got, want)
	}

	debug.SetMemoryLimit(300 << 20)
	t.Setenv("GOMEMLIMIT", "300MiB")
	setMemoryLimit(zerolog.Nop(), memlimit.Limit(1<<30), memoryPolicy{})
	if got := debug.SetMemoryLimit(-1); got != 300<<20 {
		t.Errorf("soft limit %d with GOMEMLIMIT=300MiB, want it kept", got)
	}

	setMemoryLimit(zerolog.Nop(), memlimit.Limit(1<<30), memoryPolicy{fixed: 700 << 20})
	if got := debug.SetMemoryLimit(-1); got != 700<<20 {
		t.Errorf("soft limit %d with --memory-limit 700MiB, want 700MiB over GOMEMLIMIT and the container", got)
	}

	debug.SetMemoryLimit(math.MaxInt64)
	t.Setenv("GOMEMLIMIT", "")
	setMemoryLimit(zerolog.Nop(), memlimit.Limit(1<<30), memoryPolicy{off: true})
	if got := debug.SetMemoryLimit(-1); got != math.MaxInt64 {
		t.Errorf("soft limit %d with --memory-limit off, want none", got)
	}
}

// TestMemoryLimitWithoutAContainerFollowsTheLiveHeap: outside a container the soft limit is the
// live heap with headroom, never under the floor, and it is kept up to date until the context
// ends; AUTOMEMLIMIT=off still means no limit.
func TestMemoryLimitWithoutAContainerFollowsTheLiveHeap(t *testing.T) {
	cleanMemoryEnv(t)
	noLimit := func() (uint64, error) { return 0, memlimit.ErrNoLimit }
	follow := setMemoryLimit(zerolog.Nop(), noLimit, memoryPolicy{})
	if follow == nil {
		t.Fatal("no follower outside a container")
	}
	if got := debug.SetMemoryLimit(-1); got != memoryFloor {
		t.Errorf("soft limit %d MiB for a test's small heap, want the floor %d MiB", got>>20, memoryFloor>>20)
	}
	debug.SetMemoryLimit(math.MaxInt64) // the follower must set it back
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan struct{})
	go func() { follow(ctx); close(done) }()
	deadline := time.Now().Add(10 * memoryFollowEvery)
	for debug.SetMemoryLimit(-1) != memoryFloor && time.Now().Before(deadline) {
		time.Sleep(memoryFollowEvery / 10)
	}
	if got := debug.SetMemoryLimit(-1); got != memoryFloor {
		t.Errorf("soft limit %d after the follower's ticks, want the floor", got)
	}
	cancel()
	select {
	case <-done:
	case <-time.After(10 * time.Second):
		t.Fatal("the follower did not stop with its context")
	}

	debug.SetMemoryLimit(math.MaxInt64)
	t.Setenv("AUTOMEMLIMIT", "off")
	if f := setMemoryLimit(zerolog.Nop(), noLimit, memoryPolicy{}); f != nil {
		t.Error("AUTOMEMLIMIT=off: nothing should follow")
	}
	if got := debug.SetMemoryLimit(-1); got != math.MaxInt64 {
		t.Errorf("soft limit %d with AUTOMEMLIMIT=off, want none", got)
	}
}

func TestHeadroomLimit(t *testing.T) {
	for _, c := range []struct {
		live uint64
		want int64
	}{
		{0, memoryFloor},
		{180 << 20, memoryFloor}, // 10,000 instances and 1,000 Envoys: the floor bounds the bursts
		{400 << 20, 500 << 20},   // a larger registry: headroom, never a limit under the live heap
	} {
		if got := headroomLimit(c.live); got != c.want {
			t.Errorf("headroomLimit(%d MiB) = %d MiB, want %d MiB", c.live>>20, got>>20, c.want>>20)
		}
	}
	if got := headroomLimit(math.MaxUint64); got < math.MaxInt64/2 {
		t.Errorf("headroomLimit(max) = %d: it overflowed", got)
	}
}

func TestParseMemoryPolicy(t *testing.T) {
	for v, want := range map[string]memoryPolicy{"auto": {}, "off": {off: true}, "1GiB": {fixed: 1 << 30}} {
		if got, err := parseMemoryPolicy(v); err != nil || got != want {
			t.Errorf("parseMemoryPolicy(%q) = %+v, %v; want %+v", v, got, err, want)
		}
	}
	for _, v := range []string{"0", "-1", "lots", "1TB"} {
		if _, err := parseMemoryPolicy(v); err == nil {
			t.Errorf("parseMemoryPolicy(%q) accepted", v)
		}
	}
}
