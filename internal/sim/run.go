package sim

import (
	"context"
	"fmt"
	"math/rand/v2"
	"strings"
	"sync"
	"time"
)

// tail is how long users go on after the last fault, so that what a late fault broke shows.
const tail = 2 * time.Second

// run drives users and faults for the run's duration, then checks the end invariants.
func (s *Sim) run(ctx context.Context) {
	uctx, stopUsers := context.WithTimeout(ctx, s.opts.Duration+tail)
	defer stopUsers()
	var wg sync.WaitGroup
	for i := 0; i < s.opts.Users; i++ {
		u := s.newUser(i, rand.New(rand.NewPCG(uint64(s.opts.Seed), uint64(100+i))))
		wg.Add(1)
		go func() {
			defer wg.Done()
			s.live(uctx, u)
		}()
	}
	fctx, stopFaults := context.WithTimeout(ctx, s.opts.Duration)
	s.inject(fctx)
	stopFaults()
	wg.Wait()
	if ctx.Err() != nil {
		return
	}
	s.checkNACKs()
	s.checkConvergence(ctx)
}

// checkNACKs is invariant 4: no Envoy ever refused a configuration.
func (s *Sim) checkNACKs() {
	for _, e := range s.envoys {
		e.mu.Lock()
		nacks := append([]string(nil), e.nacks...)
		e.mu.Unlock()
		for _, n := range nacks {
			s.violate(4, "an Envoy refuses a configuration", []string{e.name}, time.Now(), "%s refused a configuration: %s", e.name, n)
		}
	}
}

// checkConvergence is invariant 5: once faults stop, every Envoy, whichever replica serves
// it, holds the same endpoints within settleBound.
func (s *Sim) checkConvergence(ctx context.Context) {
	deadline := time.Now().Add(settleBound)
	for {
		views := map[string][]string{}
		for _, e := range s.envoys {
			v := e.endpoints()
			views[v] = append(views[v], e.name)
		}
		if len(views) == 1 {
			return
		}
		if time.Now().After(deadline) || ctx.Err() != nil {
			var b strings.Builder
			for v, names := range views {
				fmt.Fprintf(&b, "\n  %v hold:\n    %s", names, strings.ReplaceAll(strings.TrimSpace(v), "\n", "\n    "))
			}
			s.violate(5, "the Envoys do not converge", nil, time.Now(), "the Envoys still differ %s after the last fault:%s", settleBound, b.String())
			return
		}
		time.Sleep(50 * time.Millisecond)
	}
}
