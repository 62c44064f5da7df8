package sim

import (
	"context"
	"encoding/json"
	"fmt"
	"maps"
	"math/rand/v2"
	"net/http"
	"slices"
	"sort"
	"strings"
	"sync"
	"time"

	"github.com/tetherlb/tether/internal/overview"
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
	s.joinLate(true)
	wg.Wait()
	if ctx.Err() != nil {
		return
	}
	s.checkNACKs()
	if s.checkConvergence(ctx) {
		s.checkStatus(ctx)
	}
}

// checkStatus is invariant 6: what each control plane's /api/state (the monitor's and
// status's model) says Envoy was given is what its Envoys hold.
func (s *Sim) checkStatus(ctx context.Context) {
	for i := range s.cps {
		s.cpMu.Lock()
		cp := s.cps[i].cp
		s.cpMu.Unlock()
		if cp == nil {
			continue
		}
		said, err := apiState(ctx, s.http, cp.AdminAddr())
		if err != nil {
			s.violate(6, "the admin state cannot be read", nil, time.Now(), "control plane %d: /api/state: %v", i, err)
			continue
		}
		for _, e := range s.envoys {
			if e.replica != i {
				continue
			}
			t, err := e.tables()
			if err != nil || t == nil {
				continue
			}
			held := map[string]string{}
			for cl := range t.hosts {
				held[cl] = strings.Join(t.sortedHosts(cl), " ")
			}
			for _, cl := range slices.Sorted(maps.Keys(said)) {
				if said[cl] != held[cl] {
					s.violate(6, "the admin state differs from what the Envoys hold", []string{e.name}, time.Now(),
						"control plane %d says %s holds [%s], %s holds [%s]", i, cl, said[cl], e.name, held[cl])
				}
			}
		}
	}
}

// apiState reads /api/state into cluster -> "addr=HEALTH ..." for the instances it says Envoy
// was given.
func apiState(ctx context.Context, client *http.Client, admin string) (map[string]string, error) {
	req, err := http.NewRequestWithContext(ctx, http.MethodGet, "http://"+admin+"/api/state", nil)
	if err != nil {
		return nil, err
	}
	resp, err := client.Do(req)
	if err != nil {
		return nil, err
	}
	defer resp.Body.Close()
	var ov overview.Overview
	if err := json.NewDecoder(resp.Body).Decode(&ov); err != nil {
		return nil, fmt.Errorf("decode: %w", err)
	}
	out := map[string]string{}
	for _, svc := range ov.Services {
		var hs []string
		for _, in := range svc.Instances {
			if in.Envoy != nil {
				hs = append(hs, fmt.Sprintf("%s:%d=%s", in.Address, in.Port, in.Envoy.Health))
			}
		}
		sort.Strings(hs)
		out["tether_"+svc.Name] = strings.Join(hs, " ")
	}
	return out, nil
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
func (s *Sim) checkConvergence(ctx context.Context) bool {
	deadline := time.Now().Add(settleBound)
	for {
		views := map[string][]string{}
		for _, e := range s.envoys {
			v := e.endpoints()
			views[v] = append(views[v], e.name)
		}
		if len(views) == 1 {
			return true
		}
		if time.Now().After(deadline) || ctx.Err() != nil {
			var b strings.Builder
			for v, names := range views {
				fmt.Fprintf(&b, "\n  %v hold:\n    %s", names, strings.ReplaceAll(strings.TrimSpace(v), "\n", "\n    "))
			}
			s.violate(5, "the Envoys do not converge", nil, time.Now(), "the Envoys still differ %s after the last fault:%s", settleBound, b.String())
			return false
		}
		time.Sleep(50 * time.Millisecond)
	}
}
