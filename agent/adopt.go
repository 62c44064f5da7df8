package agent

import (
	"context"
	"fmt"
	"os"
	"time"

	"github.com/tetherlb/tether/registry"
	clientv3 "go.etcd.io/etcd/client/v3"
)

// processStart is about when this process started (when the package was initialised): an
// instance value naming this process's PID but written by an agent started before it was
// written by another process that had the same PID (a container restarted: PID 1 again).
var processStart = time.Now()

// predecessor is what an agent that finds its key held by another lease reads of it.
type predecessor struct {
	inst  registry.Instance
	mod   int64
	lease clientv3.LeaseID
}

// adoptable says whether the key's holder is provably this agent's crashed predecessor on
// the same server, and why not when it is not. Provable means: the same service and ID (the
// key), the same address and port, written by an agent on this host (same host name) whose
// process is gone. Anything else (another server claiming the ID, an agent of an older
// version that recorded no process, a predecessor still running, a PID that a new process
// reuses) is not adopted: the agent waits for that lease as before (see checkHeld).
func (r *runner) adoptable(p predecessor) (bool, string) {
	in := p.inst
	switch {
	case in.Address != r.cfg.Address || in.Port != r.cfg.Port:
		return false, fmt.Sprintf("another server (%s port %d)", in.Address, in.Port)
	case r.hostname == "" || in.Agent.Host != r.hostname:
		return false, fmt.Sprintf("written on another host (%q)", in.Agent.Host)
	case in.Agent.PID <= 0:
		return false, "its agent recorded no process"
	case in.Agent.PID == os.Getpid():
		// Our PID: the writer was this process (alive: another agent in it) unless it
		// started before this process did.
		if !in.Agent.StartedAt.Add(time.Second).Before(processStart) {
			return false, "written by an agent of this very process"
		}
		return true, ""
	case processAlive(in.Agent.PID):
		return false, fmt.Sprintf("its agent's process %d is still running", in.Agent.PID)
	}
	return true, ""
}

// readPredecessor reads the instance key; ok is false when it is gone, under no lease, or
// holds a value that does not decode.
func (r *runner) readPredecessor(ctx context.Context) (p predecessor, ok bool, err error) {
	octx, cancel := context.WithTimeout(ctx, r.opTimeout)
	defer cancel()
	resp, err := r.cli.Get(octx, r.key)
	if err != nil {
		return p, false, fmt.Errorf("get %s: %w", r.key, err)
	}
	if len(resp.Kvs) != 1 || resp.Kvs[0].Lease == 0 {
		return p, false, nil
	}
	kv := resp.Kvs[0]
	in, err := registry.DecodeInstance(r.cfg.Service, r.cfg.ID, kv.Value)
	if err != nil {
		return p, false, nil
	}
	return predecessor{inst: in, mod: kv.ModRevision, lease: clientv3.LeaseID(kv.Lease)}, true, nil
}

// adopt takes over the key of a crashed predecessor on the same server in one transaction
// (the key never disappears, so Envoy never loses the server); adopted is false when the
// holder is not provably that (the caller then waits for its lease, as for any holder).
func (r *runner) adopt(ctx context.Context, next registry.Instance) (adopted bool, err error) {
	p, ok, err := r.readPredecessor(ctx)
	if err != nil || !ok || p.lease == r.lease.ID() {
		return false, err
	}
	if can, why := r.adoptable(p); !can {
		r.log.Debug().Str("holder", fmt.Sprintf("%x", int64(p.lease))).Str("why", why).Msg("not adopting the key")
		return false, nil
	}
	octx, cancel := context.WithTimeout(ctx, r.opTimeout)
	defer cancel()
	if err := registry.AdoptInstance(octx, r.cli, r.prefix, r.cfg.Service, next, r.lease.ID(), p.mod, p.lease); err != nil {
		r.m.etcdErrors.WithLabelValues("adopt").Inc()
		r.checkLease(err)
		return false, err
	}
	r.log.Info().Str("lease", fmt.Sprintf("%x", int64(r.lease.ID()))).Str("from", fmt.Sprintf("%x", int64(p.lease))).
		Int("predecessorPid", p.inst.Agent.PID).Time("predecessorStartedAt", p.inst.Agent.StartedAt).
		Msg("adopted the key of this server's crashed agent: the instance stayed registered")
	return true, nil
}
