package main

import (
	"os"
	"runtime/debug"
	"testing"

	"github.com/KimMachineGun/automemlimit/memlimit"
	"github.com/rs/zerolog"
)

// TestMemoryLimitFollowsTheContainer: with a container limit of 1 GiB, Go's soft limit becomes
// 90% of it; with GOMEMLIMIT set, the operator's value stays.
func TestMemoryLimitFollowsTheContainer(t *testing.T) {
	before := debug.SetMemoryLimit(-1)
	t.Cleanup(func() { debug.SetMemoryLimit(before) })
	t.Setenv("GOMEMLIMIT", "")
	t.Setenv("AUTOMEMLIMIT", "") // restored after the test
	if err := os.Unsetenv("AUTOMEMLIMIT"); err != nil {
		t.Fatal(err)
	}

	setMemoryLimit(zerolog.Nop(), memlimit.Limit(1<<30))
	ratio := memoryLimitRatio
	if got, want := debug.SetMemoryLimit(-1), int64(float64(1<<30)*ratio); got != want {
		t.Errorf("soft limit %d with a 1 GiB container, want %d", got, want)
	}

	debug.SetMemoryLimit(300 << 20)
	t.Setenv("GOMEMLIMIT", "300MiB")
	setMemoryLimit(zerolog.Nop(), memlimit.Limit(1<<30))
	if got := debug.SetMemoryLimit(-1); got != 300<<20 {
		t.Errorf("soft limit %d with GOMEMLIMIT=300MiB, want it kept", got)
	}
}
