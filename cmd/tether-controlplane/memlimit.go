package main

import (
	"math"
	"os"

	"github.com/KimMachineGun/automemlimit/memlimit"
	"github.com/rs/zerolog"
)

// memoryLimitRatio is the share of the container's memory limit given to Go as its soft limit.
const memoryLimitRatio = 0.9

// setMemoryLimit gives Go a soft memory limit of 90% of the container's (cgroup) memory limit,
// unless GOMEMLIMIT is set (or AUTOMEMLIMIT=off): Go does not read a container's limit itself,
// and by default lets the heap grow to twice what is live before collecting, so a control
// plane whose live heap is half its container's limit would be killed at the next burst
// (docs/performance.md, "What limits it"). Near the limit the collector runs more often
// instead. Without a container limit nothing changes. provider nil reads the cgroup.
func setMemoryLimit(log zerolog.Logger, provider memlimit.Provider) {
	opts := []memlimit.Option{memlimit.WithRatio(memoryLimitRatio)}
	if provider != nil {
		opts = append(opts, memlimit.WithProvider(provider))
	}
	limit, err := memlimit.Set(opts...)
	switch {
	case err != nil:
		log.Debug().Err(err).Msg("no container memory limit read: Go's soft memory limit left as it is")
	case os.Getenv("GOMEMLIMIT") != "":
		log.Info().Int64("MiB", limit>>20).Msg("soft memory limit from GOMEMLIMIT")
	case limit < math.MaxInt64:
		log.Info().Int64("MiB", limit>>20).Msg("soft memory limit set to 90% of the container's memory limit (GOMEMLIMIT or AUTOMEMLIMIT=off override it)")
	}
}
