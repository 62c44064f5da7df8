package sim

import (
	"context"
	"fmt"
	"slices"

	"math/rand/v2"
	"sort"
	"strconv"
	"strings"
	"sync"
	"time"

	clientv3 "go.etcd.io/etcd/client/v3"

	"github.com/tetherlb/tether/internal/ctl"
	"github.com/tetherlb/tether/registry"
)

// The fault kinds, each something that happens to a deployment on a bad day.
const (
	FaultLeaseStorm     = "lease-storm"           // every lease revoked at once (an etcd hiccup)
	FaultLeaseStagger   = "lease-storm-staggered" // every lease revoked over a second
	FaultAgentKill      = "agent-kill"            // kill -9 of an agent, restarted after a while
	FaultAgentStop      = "agent-stop"            // graceful stop of a server (scale-in), a new one joins
	FaultServerCrash    = "server-crash"          // server and agent die, a new one joins
	FaultDrainID        = "drain-id"              // operator drain of one instance, undone later
	FaultRollingDeploy  = "rolling-deploy"        // docs/deploy.md: new version, drain --label --wait, stop, undo
	FaultCPRestart      = "cp-restart"            // a control plane stops and starts again
	FaultCompact        = "compact"               // etcd compaction at the current revision
	FaultBadConfig      = "bad-config"            // an invalid edit of shop's configuration, fixed later
	FaultTypoService    = "typo-service"          // a server registered as "ap" beside "app"
	FaultFull           = "full"                  // one server refuses new sessions for a while
	FaultAllFull        = "all-full"              // every app server refuses new sessions for a while
	FaultJoin           = "join"                  // a new server joins
	FaultEnvoyReconnect = "envoy-reconnect"       // an Envoy's stream breaks
	FaultEnvoySlow      = "envoy-slow"            // an Envoy applies and ACKs endpoints late
	FaultMassDelete     = "mass-delete"           // every instance key deleted in one transaction
	FaultBadConfigKept  = "bad-config-kept"       // an invalid edit that stays while etcd compacts and a control plane restarts
	FaultEtcdMember     = "etcd-member-loss"      // an etcd member that does not lead stops for a while (three members)
	FaultEtcdLeader     = "etcd-leader-loss"      // the etcd leader stops for a while (three members)
	FaultCutOff         = "cp-cut-off"            // a replica loses etcd for a while (two replicas)
	FaultSlowJoin       = "slow-envoy-join"       // a new server joins while an Envoy is slow
)

// faultWeights are the kinds' relative frequencies.
var faultWeights = []struct {
	kind   string
	weight int
}{
	{FaultLeaseStorm, 2}, {FaultLeaseStagger, 2}, {FaultAgentKill, 3}, {FaultAgentStop, 2},
	{FaultServerCrash, 1}, {FaultDrainID, 3}, {FaultRollingDeploy, 2}, {FaultCPRestart, 2},
	{FaultCompact, 2}, {FaultBadConfig, 2}, {FaultTypoService, 1}, {FaultFull, 3},
	{FaultAllFull, 2}, {FaultJoin, 2}, {FaultEnvoyReconnect, 2}, {FaultEnvoySlow, 3},
	{FaultMassDelete, 1}, {FaultBadConfigKept, 1},
	{FaultEtcdMember, 2}, {FaultEtcdLeader, 2}, {FaultCutOff, 2}, {FaultSlowJoin, 2},
}

// FaultKinds lists every kind.
func FaultKinds() []string {
	out := make([]string, 0, len(faultWeights))
	for _, f := range faultWeights {
		out = append(out, f.kind)
	}
	return out
}

// scheduled is one fault of the schedule: when, what, and the random numbers that choose its
// target and its length, fixed by the seed.
type scheduled struct {
	at   time.Duration
	kind string
	pick uint64
	dur  time.Duration
}

func (f scheduled) String() string {
	return fmt.Sprintf("%6.2fs %s (pick %d, %s)", f.at.Seconds(), f.kind, f.pick%1000, f.dur.Round(time.Millisecond))
}

// maxSlow bounds how late a slow Envoy applies endpoints: below cpPublishSettle.
const maxSlow = cpPublishSettle * 3 / 4

// meanFaultGap is the mean time between two faults.
const meanFaultGap = 700 * time.Millisecond

// makeSchedule draws the faults of a run from its seed.
func makeSchedule(seed int64, d time.Duration, only []string, topo topology) []scheduled {
	rng := rand.New(rand.NewPCG(uint64(seed), 2))
	var kinds []string
	total := 0
	weights := map[string]int{}
	for _, f := range faultWeights {
		if len(only) > 0 && !slices.Contains(only, f.kind) {
			continue
		}
		if (f.kind == FaultEtcdMember || f.kind == FaultEtcdLeader) && topo.members < 3 || f.kind == FaultCutOff && topo.replicas < 2 {
			continue // the topology has nothing to break this way
		}
		kinds = append(kinds, f.kind)
		weights[f.kind] = f.weight
		total += f.weight
	}
	if total == 0 {
		return nil
	}
	var out []scheduled
	for at := 500*time.Millisecond + time.Duration(rng.Int64N(int64(meanFaultGap))); at < d-time.Second; at += time.Duration(rng.Int64N(int64(2 * meanFaultGap))) {
		n := rng.IntN(total)
		for _, k := range kinds {
			if n < weights[k] {
				out = append(out, scheduled{at: at, kind: k, pick: rng.Uint64(), dur: 300*time.Millisecond + time.Duration(rng.Int64N(int64(2200*time.Millisecond)))})
				break
			}
			n -= weights[k]
		}
	}
	return out
}

// inject runs the schedule until ctx ends; every fault runs in its own goroutine, so faults
// overlap as they do in life. It returns once every fault has finished.
func (s *Sim) inject(ctx context.Context) {
	var wg sync.WaitGroup
	for _, f := range s.schedule {
		select {
		case <-ctx.Done():
			wg.Wait()
			return
		case <-time.After(time.Until(s.start.Add(f.at))):
		}
		s.locked(func() { s.faults[f.kind]++ })
		wg.Add(1)
		go func() {
			defer wg.Done()
			s.apply(ctx, f)
		}()
	}
	wg.Wait()
}

// pickServer chooses a running server of service by the fault's pick; "" when none.
func (s *Sim) pickServer(service string, pick uint64, withAgent bool) *server {
	s.mu.Lock()
	defer s.mu.Unlock()
	var ids []string
	for id, srv := range s.servers {
		if srv.service != service {
			continue
		}
		if down, _ := srv.down(time.Now()); down {
			continue
		}
		if withAgent && !s.agents[id].running() {
			continue
		}
		ids = append(ids, id)
	}
	if len(ids) == 0 {
		return nil
	}
	sort.Strings(ids)
	return s.servers[ids[pick%uint64(len(ids))]]
}

// pickEnvoy chooses a joined Envoy by the fault's pick.
func (s *Sim) pickEnvoy(pick uint64) *envoy {
	envoys := s.joinedEnvoys()
	return envoys[pick%uint64(len(envoys))]
}

func (s *Sim) apply(ctx context.Context, f scheduled) {
	switch f.kind {
	case FaultLeaseStorm, FaultLeaseStagger:
		s.leaseStorm(ctx, f)
	case FaultAgentKill:
		srv := s.pickServer(svcApp, f.pick, true)
		if srv == nil {
			return
		}
		s.mu.Lock()
		a := s.agents[srv.id]
		s.mu.Unlock()
		s.event([]string{srv.id}, "fault: kill -9 of %s's agent; restart in %s", srv.id, f.dur.Round(time.Millisecond))
		srv.mu.Lock()
		srv.agentKilled = time.Now().Add(f.dur) // the gap ends with the restart
		srv.mu.Unlock()
		a.kill()
		sleep(ctx, f.dur)
		if down, _ := srv.down(time.Now()); down {
			return
		}
		na, err := s.startAgent(srv, a.withSessions)
		if err != nil {
			s.event([]string{srv.id}, "restart of %s's agent failed: %v", srv.id, err)
			return
		}
		s.locked(func() { s.agents[srv.id] = na })
		s.event([]string{srv.id}, "%s's agent restarted", srv.id)
	case FaultAgentStop, FaultServerCrash:
		srv := s.pickServer(svcApp, f.pick, true)
		if srv == nil || s.countRunning(svcApp) < 3 {
			return
		}
		s.mu.Lock()
		a := s.agents[srv.id]
		s.mu.Unlock()
		if f.kind == FaultServerCrash {
			s.event([]string{srv.id}, "fault: %s crashes with its agent", srv.id)
			srv.stop(false)
			a.kill()
		} else {
			s.event([]string{srv.id}, "fault: graceful stop of %s (its agent drains, then the server stops)", srv.id)
			a.stop(agentDrainTimeout + 3*time.Second)
			s.event([]string{srv.id}, "%s's agent exited; %s stops with %d sessions", srv.id, srv.id, srv.sessionCount())
			srv.stop(true)
		}
		s.join(f.pick%4 != 0)
	case FaultDrainID:
		srv := s.pickServer(svcApp, f.pick, false)
		if srv == nil {
			return
		}
		target := svcApp + "/" + srv.id
		s.event([]string{srv.id}, "fault: operator drains %s for %s", target, f.dur.Round(time.Millisecond))
		s.markDrained(true, srv)
		s.drainCmd(ctx, []string{target}, srv.id)
		sleep(ctx, f.dur)
		s.drainCmd(context.WithoutCancel(ctx), []string{target, "--undo"}, srv.id)
		s.markDrained(false, srv)
	case FaultRollingDeploy:
		s.rollingDeploy(ctx, f)
	case FaultCPRestart:
		i := int(f.pick % uint64(len(s.cps)))
		// Every other restart has a server join while the control plane is down: after the
		// restart it must phase that server until every Envoy its state file names holds it
		// (a state file naming no Envoy once let a user cross before that).
		join := f.pick%4 < 2
		s.event(nil, "fault: control plane %d stops; starts again in %s (a server joins meanwhile: %v)", i, f.dur.Round(time.Millisecond), join)
		s.stopCP(i)
		if join {
			s.join(true)
		}
		sleep(ctx, f.dur)
		s.locked(func() { s.lastCPRestart = time.Now() })
		if err := s.startCP(context.WithoutCancel(ctx), i); err != nil {
			s.event(nil, "control plane %d did not start again: %v", i, err)
			return
		}
		s.event(nil, "control plane %d is ready again", i)
	case FaultCompact:
		resp, err := s.cli.Get(ctx, "/tether/compact-marker")
		if err != nil {
			return
		}
		if _, err := s.cli.Compact(ctx, resp.Header.Revision); err == nil {
			s.event(nil, "fault: etcd compacted at revision %d", resp.Header.Revision)
		}
	case FaultBadConfig:
		key := registry.ServiceKey(registry.DefaultPrefix, svcShop)
		if _, err := s.cli.Put(ctx, key, badShopConfig); err != nil {
			return
		}
		s.event(nil, "fault: an operator writes an invalid shop configuration (lbPolicy fastest); fixed in %s", f.dur.Round(time.Millisecond))
		sleep(ctx, f.dur)
		if _, err := s.cli.Put(context.WithoutCancel(ctx), key, shopConfig); err == nil {
			s.event(nil, "the shop configuration is fixed")
		}
	case FaultBadConfigKept:
		// The bad edit of an afternoon: it stays for an hour, etcd compacts its history
		// meanwhile (the embedded etcd every hour, production ones every 5-60 minutes), and a
		// control plane restarts before anyone fixes it.
		key := registry.ServiceKey(registry.DefaultPrefix, svcShop)
		put, err := s.cli.Put(ctx, key, badShopConfig)
		if err != nil {
			return
		}
		s.event(nil, "fault: an invalid shop configuration stays while etcd compacts and control plane 0 restarts")
		sleep(ctx, 200*time.Millisecond)
		if _, err := s.cli.Compact(ctx, put.Header.Revision); err != nil {
			return
		}
		s.stopCP(0)
		s.locked(func() { s.lastCPRestart = time.Now() })
		if err := s.startCP(context.WithoutCancel(ctx), 0); err != nil {
			s.event(nil, "control plane 0 did not start again: %v", err)
		}
		sleep(ctx, f.dur)
		if _, err := s.cli.Put(context.WithoutCancel(ctx), key, shopConfig); err == nil {
			s.event(nil, "the shop configuration is fixed")
		}
	case FaultEtcdMember, FaultEtcdLeader:
		// One member down at a time: two of three is a quorum lost, an etcd outage, which
		// the control plane rides out by serving what it has (reliability.md) but which is
		// not this fault.
		if !s.etcdFault.TryLock() {
			return
		}
		defer s.etcdFault.Unlock()
		lead := s.etcd.leader(ctx, s.cli)
		i := int(f.pick % uint64(len(s.etcd.members)))
		if f.kind == FaultEtcdLeader && lead >= 0 {
			i = lead
		} else if f.kind == FaultEtcdMember && i == lead {
			i = (i + 1) % len(s.etcd.members)
		}
		m := s.etcd.members[i]
		s.event(nil, "fault: etcd member %s stops (leader: %v) for %s", m.name, i == lead, f.dur.Round(time.Millisecond))
		m.close()
		sleep(ctx, f.dur)
		if err := m.start(context.WithoutCancel(ctx)); err != nil {
			s.event(nil, "etcd member %s did not start again: %v", m.name, err)
			return
		}
		s.event(nil, "etcd member %s is back", m.name)
	case FaultCutOff:
		// Every other cut has a server join during it and lasts longer than --publish-settle:
		// the other replica must not promote the server while the cut-off one's Envoys, which
		// it cannot know, do not hold it (soak seed 187650932 drew this once in 18 seeds).
		i, d, join := len(s.cps)-1, f.dur, f.pick%2 == 0
		if join {
			d = cpPublishSettle + f.dur/2
		}
		s.event(nil, "fault: control plane %d is cut off from etcd for %s (a server joins: %v)", i, d.Round(time.Millisecond), join)
		for _, p := range s.cuts {
			p.SetCut(true)
		}
		if join {
			s.join(true)
		}
		sleep(ctx, d)
		for _, p := range s.cuts {
			p.SetCut(false)
		}
		s.event(nil, "control plane %d reaches etcd again", i)
	case FaultTypoService:
		s.mu.Lock()
		typo := false
		for _, srv := range s.servers {
			typo = typo || srv.service == svcTypo
		}
		s.mu.Unlock()
		if !typo {
			s.event(nil, "fault: a server is registered with --service ap (a typo of app)")
			if _, err := s.addServer(svcTypo, 1, true); err != nil {
				s.event(nil, "typo server failed: %v", err)
			}
		}
	case FaultFull:
		srv := s.pickServer(svcApp, f.pick, false)
		if srv == nil {
			return
		}
		s.event([]string{srv.id}, "fault: %s refuses new sessions for %s", srv.id, f.dur.Round(time.Millisecond))
		srv.setRefusing(true)
		sleep(ctx, f.dur)
		srv.setRefusing(false)
	case FaultAllFull:
		s.mu.Lock()
		var all []*server
		for _, srv := range s.servers {
			if srv.service == svcApp {
				all = append(all, srv)
			}
		}
		s.mu.Unlock()
		d := f.dur / 2
		s.event(nil, "fault: every app server refuses new sessions for %s", d.Round(time.Millisecond))
		for _, srv := range all {
			srv.setRefusing(true)
		}
		sleep(ctx, d)
		for _, srv := range all {
			srv.setRefusing(false)
		}
	case FaultJoin:
		s.join(f.pick%4 != 0)
	case FaultMassDelete:
		// What a mistaken `etcdctl del --prefix` does: every instance gone in one revision.
		resp, err := s.cli.Delete(ctx, registry.InstancesPrefix(registry.DefaultPrefix), clientv3.WithPrefix())
		if err == nil {
			s.locked(func() { s.lastStorm = time.Now() })
			s.event(nil, "fault: every instance key deleted in one transaction (%d keys)", resp.Deleted)
		}
	case FaultSlowJoin:
		// An Envoy busy applying a large configuration when a server joins: two-phase
		// publication must keep the new server from new sessions until that Envoy knows it.
		e := s.pickEnvoy(f.pick)
		s.event(nil, "fault: %s applies and ACKs endpoints late while a server joins, for %s", e.name, maxSlow.Round(time.Millisecond))
		e.freeze()
		s.join(f.pick%4 != 0)
		sleep(ctx, maxSlow)
		e.thaw()
	case FaultEnvoyReconnect:
		e := s.pickEnvoy(f.pick)
		s.event(nil, "fault: %s's stream breaks; it reconnects", e.name)
		e.reconnect()
	case FaultEnvoySlow:
		// Slower than --publish-settle, an Envoy is reported lagging and no longer holds a
		// promotion back (design.md, two-phase publication): a documented limit, not drawn.
		d := min(f.dur, maxSlow)
		e := s.pickEnvoy(f.pick)
		s.event(nil, "fault: %s applies and ACKs endpoints late, for %s", e.name, d.Round(time.Millisecond))
		e.freeze()
		sleep(ctx, d)
		e.thaw()
	}
}

// join adds a server of app at the current version.
func (s *Sim) join(withSessions bool) {
	if _, err := s.addServer(svcApp, s.currentVersion(), withSessions); err != nil {
		s.event(nil, "join failed: %v", err)
	}
}

func (s *Sim) currentVersion() int {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.version
}

func (s *Sim) countRunning(service string) int {
	s.mu.Lock()
	defer s.mu.Unlock()
	n := 0
	for _, srv := range s.servers {
		if down, _ := srv.down(time.Now()); srv.service == service && !down {
			n++
		}
	}
	return n
}

func (s *Sim) leaseStorm(ctx context.Context, f scheduled) {
	resp, err := s.cli.Leases(ctx)
	if err != nil {
		return
	}
	s.event(nil, "fault: %s: %d leases revoked", f.kind, len(resp.Leases))
	s.locked(func() { s.lastStorm = time.Now() })
	defer s.locked(func() { s.lastStorm = time.Now() })
	for _, l := range resp.Leases {
		if f.kind == FaultLeaseStagger {
			sleep(ctx, time.Duration(f.pick%300)*time.Millisecond)
		}
		_, _ = s.cli.Revoke(ctx, l.ID)
	}
}

// rollingDeploy is docs/deploy.md's deploy: start the new version beside the old, drain the
// old version with --wait, stop its servers once the command says no session is left, and
// remove the drain.
func (s *Sim) rollingDeploy(ctx context.Context, f scheduled) {
	s.mu.Lock()
	old := s.version
	s.version++
	next := s.version
	var olds []*server
	for _, srv := range s.servers {
		if down, _ := srv.down(time.Now()); srv.service == svcApp && srv.version == old && !down {
			olds = append(olds, srv)
		}
	}
	s.mu.Unlock()
	if len(olds) == 0 {
		return
	}
	s.event(nil, "fault: rolling deploy of app v%d over %d servers of v%d", next, len(olds), old)
	for range min(len(olds), 3) {
		if _, err := s.addServer(svcApp, next, f.pick%3 != 0); err != nil {
			s.event(nil, "deploy: a new server failed: %v", err)
			return
		}
	}
	sleep(ctx, time.Second)
	label := "version=" + strconv.Itoa(old)
	var ids []string
	for _, srv := range olds {
		ids = append(ids, srv.id)
	}
	s.markDrained(true, olds...)
	code := s.drainCmd(ctx, []string{svcApp, "--label", label, "--wait", "--timeout", "6s"}, ids...)
	if ctx.Err() != nil {
		return
	}
	if code == 0 {
		// Invariant 3: the command said no session is left on the drained servers.
		for _, srv := range olds {
			if n := srv.sessionCount(); n > 0 {
				if down, _ := srv.down(time.Now()); !down {
					s.violate(3, "drain --wait reports no session while sessions remain", []string{srv.id}, time.Now(), "drain --wait said no session is left on version %d, yet %s holds %d", old, srv.id, n)
				}
			}
		}
	}
	for _, srv := range olds {
		s.mu.Lock()
		a := s.agents[srv.id]
		s.mu.Unlock()
		a.stop(agentDrainTimeout + 3*time.Second)
		s.event([]string{srv.id}, "deploy: %s's agent stopped; %s stops with %d sessions", srv.id, srv.id, srv.sessionCount())
		srv.stop(true)
	}
	s.drainCmd(context.WithoutCancel(ctx), []string{svcApp, "--label", label, "--undo"}, ids...)
	s.markDrained(false, olds...)
}

func (s *Sim) markDrained(on bool, srvs ...*server) {
	for _, srv := range srvs {
		srv.mu.Lock()
		srv.drained = on
		if !on {
			srv.undrained = time.Now()
		}
		srv.mu.Unlock()
	}
}

// drainCmd runs `tether-controlplane drain` (the real command, in process) and records what it
// printed under the servers it concerns.
func (s *Sim) drainCmd(ctx context.Context, args []string, subjects ...string) int {
	var out strings.Builder
	full := append(append([]string{}, args...), "--etcd-endpoints", s.etcdEndpoint)
	code := ctl.Drain(ctx, full, func(string) (string, bool) { return "", false }, &out, &out)
	last := strings.TrimSpace(out.String())
	if i := strings.LastIndexByte(last, '\n'); i >= 0 {
		last = last[i+1:]
	}
	s.event(subjects, "drain %s: exit %d: %s", strings.Join(args, " "), code, last)
	return code
}

func sleep(ctx context.Context, d time.Duration) {
	select {
	case <-ctx.Done():
	case <-time.After(d):
	}
}
