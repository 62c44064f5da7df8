package agent

import (
	"context"
	"os"
	"os/exec"
	"testing"
	"time"

	"github.com/rs/zerolog"
	"github.com/tetherlb/tether/internal/etcdtest"
	"github.com/tetherlb/tether/registry"
	clientv3 "go.etcd.io/etcd/client/v3"
)

// DeadAndLivePIDs returns the PID of a process that has exited and of one still running
// (exported for the agent_test package's adoption test).
func DeadAndLivePIDs(t *testing.T) (dead, live int) {
	t.Helper()
	exited := exec.Command("true")
	if err := exited.Run(); err != nil {
		t.Skip("cannot run true:", err)
	}
	running := exec.Command("sleep", "60")
	if err := running.Start(); err != nil {
		t.Skip("cannot run sleep:", err)
	}
	t.Cleanup(func() { _ = running.Process.Kill(); _ = running.Wait() })
	return exited.ProcessState.Pid(), running.Process.Pid
}

// TestAdoptableIsProvablyTheSameServer: each condition of adoptable at its edge.
func TestAdoptableIsProvablyTheSameServer(t *testing.T) {
	dead, live := DeadAndLivePIDs(t)
	r := &runner{cfg: Config{Address: "10.0.0.1", Port: 8080}, hostname: "web1"}
	past := processStart.Add(-time.Hour)
	ok := registry.Instance{Address: "10.0.0.1", Port: 8080, Agent: registry.AgentInfo{Host: "web1", PID: dead, StartedAt: past}}
	for _, tc := range []struct {
		name  string
		edit  func(*registry.Instance)
		host  string
		adopt bool
	}{
		{"a dead process on this server", func(*registry.Instance) {}, "web1", true},
		{"another address", func(in *registry.Instance) { in.Address = "10.0.0.2" }, "web1", false},
		{"another port", func(in *registry.Instance) { in.Port = 8081 }, "web1", false},
		{"another host", func(in *registry.Instance) { in.Agent.Host = "web2" }, "web1", false},
		{"no host name here", func(in *registry.Instance) { in.Agent.Host = "" }, "", false},
		{"no process recorded", func(in *registry.Instance) { in.Agent.PID = 0 }, "web1", false},
		{"a negative process", func(in *registry.Instance) { in.Agent.PID = -1 }, "web1", false},
		{"a running process", func(in *registry.Instance) { in.Agent.PID = live }, "web1", false},
		{"this process, started before it", func(in *registry.Instance) {
			in.Agent.PID, in.Agent.StartedAt = os.Getpid(), processStart.Add(-time.Second-time.Millisecond)
		}, "web1", true},
		{"this process, started a second before it", func(in *registry.Instance) {
			in.Agent.PID, in.Agent.StartedAt = os.Getpid(), processStart.Add(-time.Second)
		}, "web1", false},
		{"an agent of this process", func(in *registry.Instance) {
			in.Agent.PID, in.Agent.StartedAt = os.Getpid(), processStart
		}, "web1", false},
	} {
		in := ok
		tc.edit(&in)
		r.hostname = tc.host
		if got, why := r.adoptable(predecessor{inst: in}); got != tc.adopt || (got == (why != "")) {
			t.Errorf("%s: adoptable %v (%q), want %v", tc.name, got, why, tc.adopt)
		}
	}
	if !processAlive(os.Getpid()) || !processAlive(live) || processAlive(dead) {
		t.Errorf("processAlive: self %v, running %v, exited %v", processAlive(os.Getpid()), processAlive(live), processAlive(dead))
	}
}

// TestAdoptTakesTheKeyInPlace: adopt against etcd takes over a dead predecessor's key in
// one transaction (same key, new lease, new value), and leaves alone a key that is gone,
// not under a lease, already ours, undecodable or not provably the predecessor's.
func TestAdoptTakesTheKeyInPlace(t *testing.T) {
	dead, live := DeadAndLivePIDs(t)
	etcd := etcdtest.Start(t)
	cli := etcd.Client(t)
	lcli := etcd.Client(t) // the lease's: closed before etcd stops, whose graceful stop waits for open keep-alive streams
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	cfg := Config{Service: "app", ID: "app-1", Address: "10.0.0.1", Port: 8080}
	r := &runner{
		cfg: cfg, prefix: "/tether/", key: registry.InstanceKey("/tether/", "app", "app-1"), log: zerolog.Nop(), cli: cli,
		m: newMetrics("app", "app-1"), opTimeout: 2 * time.Second, hostname: "web1",
		lease: lease{cli: lcli, ttl: 10 * time.Second, opTimeout: 2 * time.Second},
	}
	if _, err := r.lease.renew(ctx); err != nil {
		t.Fatal(err)
	}
	defer r.lease.stopKeepAlive()
	next := registry.Instance{ID: "app-1", Address: "10.0.0.1", Port: 8080, State: registry.StateAvailable,
		Agent: registry.AgentInfo{Host: "web1", PID: os.Getpid(), StartedAt: time.Now().UTC().Truncate(time.Second)}}
	old := next
	old.State, old.Agent.PID, old.Agent.StartedAt = registry.StateFull, dead, processStart.Add(-time.Hour).UTC().Truncate(time.Second)
	grant := func() clientv3.LeaseID {
		g, err := cli.Grant(ctx, 30)
		if err != nil {
			t.Fatal(err)
		}
		return g.ID
	}
	read := func() (registry.Instance, clientv3.LeaseID, int64) {
		resp, err := cli.Get(ctx, r.key)
		if err != nil || len(resp.Kvs) != 1 {
			t.Fatalf("get: %v", err)
		}
		in, err := registry.DecodeInstance("app", "app-1", resp.Kvs[0].Value)
		if err != nil {
			t.Fatal(err)
		}
		return in, clientv3.LeaseID(resp.Kvs[0].Lease), resp.Kvs[0].CreateRevision
	}

	if adopted, err := r.adopt(ctx, next); adopted || err != nil {
		t.Fatalf("no key: adopted %v, %v", adopted, err)
	}
	if _, err := cli.Put(ctx, r.key, "not json", clientv3.WithLease(grant())); err != nil {
		t.Fatal(err)
	}
	if adopted, err := r.adopt(ctx, next); adopted || err != nil {
		t.Fatalf("an undecodable value: adopted %v, %v", adopted, err)
	}
	if _, err := cli.Delete(ctx, r.key); err != nil {
		t.Fatal(err)
	}
	if err := registry.CreateInstance(ctx, cli, r.prefix, "app", old, 0); err != nil {
		t.Fatal(err)
	}
	if adopted, err := r.adopt(ctx, next); adopted || err != nil {
		t.Fatalf("a key under no lease: adopted %v, %v", adopted, err)
	}
	if _, err := cli.Delete(ctx, r.key); err != nil {
		t.Fatal(err)
	}
	if err := registry.CreateInstance(ctx, cli, r.prefix, "app", old, r.lease.ID()); err != nil {
		t.Fatal(err)
	}
	if adopted, err := r.adopt(ctx, next); adopted || err != nil {
		t.Fatalf("a key under our own lease: adopted %v, %v", adopted, err)
	}
	if _, err := cli.Delete(ctx, r.key); err != nil {
		t.Fatal(err)
	}
	alive := old
	alive.Agent.PID = live
	if err := registry.CreateInstance(ctx, cli, r.prefix, "app", alive, grant()); err != nil {
		t.Fatal(err)
	}
	if adopted, err := r.adopt(ctx, next); adopted || err != nil {
		t.Fatalf("a running predecessor: adopted %v, %v", adopted, err)
	}
	if _, err := cli.Delete(ctx, r.key); err != nil {
		t.Fatal(err)
	}

	theirs := grant()
	if err := registry.CreateInstance(ctx, cli, r.prefix, "app", old, theirs); err != nil {
		t.Fatal(err)
	}
	_, _, created := read()
	if adopted, err := r.adopt(ctx, next); !adopted || err != nil {
		t.Fatalf("a dead predecessor's key: adopted %v, %v", adopted, err)
	}
	in, l, c := read()
	if l != r.lease.ID() || c != created || in.State != registry.StateAvailable || in.Agent.PID != os.Getpid() {
		t.Fatalf("after adoption: lease %x (ours %x), created %d (was %d), %+v", l, r.lease.ID(), c, created, in)
	}

	// etcd gone: the read fails, nothing adopted, the error said.
	r.lease.stopKeepAlive()
	lcli.Close()
	r.cli, r.opTimeout = etcd.Client(t), 100*time.Millisecond
	etcd.Stop()
	if adopted, err := r.adopt(ctx, next); adopted || err == nil {
		t.Fatalf("etcd down: adopted %v, %v", adopted, err)
	}
}
