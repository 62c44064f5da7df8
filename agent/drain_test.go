package agent_test

import (
	"context"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/rs/zerolog"
	clientv3 "go.etcd.io/etcd/client/v3"
	"go.uber.org/zap"

	"github.com/tetherlb/tether/agent"
	"github.com/tetherlb/tether/internal/agenttest"
	"github.com/tetherlb/tether/internal/etcdtest"
	"github.com/tetherlb/tether/internal/eventually"
	"github.com/tetherlb/tether/internal/syncbuf"
	"github.com/tetherlb/tether/registry"
)

// TestAgentReportsOperatorDrain: an agent whose instance an operator's drain selects reports
// it as draining with the drain in its reason, writes every session that ends while drained,
// keeps running at zero sessions (only its own shutdown deregisters it), and reports
// available again when the drain is removed. An agent starting under a drain starts drained.
func TestAgentReportsOperatorDrain(t *testing.T) {
	etcd := etcdtest.Start(t)
	cli := etcd.Client(t)
	b := agenttest.NewBackend(t)
	b.Sessions.Store(40)
	cfg := config(etcd, b, "app-1")
	cfg.Labels = map[string]string{"version": "1"}
	cfg.Heartbeat = time.Hour // writes come from state changes and the dead band only
	r := start(t, cfg)
	etcdtest.WaitInstance(t, cli, "app-1", 5*time.Second, "registered", state(registry.StateAvailable))

	ctx, cancel := context.WithTimeout(context.Background(), 20*time.Second)
	defer cancel()
	other := registry.Drain{Instance: "app-9"}
	if _, _, err := registry.PutDrain(ctx, cli, "/tether", "app", "app-9", other); err != nil {
		t.Fatal(err)
	}
	d := registry.Drain{Labels: map[string]string{"version": "1"}, CreatedAt: time.Now().UTC()}
	if _, _, err := registry.PutDrain(ctx, cli, "/tether", "app", "version=1", d); err != nil {
		t.Fatal(err)
	}
	in := etcdtest.WaitInstance(t, cli, "app-1", 5*time.Second, "drained", state(registry.StateDraining))
	if in.Reason != registry.OperatorDrainReason("version=1") || in.Load.Sessions != 40 {
		t.Errorf("drained instance: reason %q, sessions %d", in.Reason, in.Load.Sessions)
	}
	// Without the drain, one session less is inside the dead band (5) and the heartbeat is an
	// hour away: a write of 39 shows the drained agent writes every change.
	b.Sessions.Store(39)
	etcdtest.WaitInstance(t, cli, "app-1", 5*time.Second, "39 sessions written", func(in *registry.Instance, _ int64) bool {
		return in != nil && in.Load.Sessions == 39 && in.State == registry.StateDraining
	})
	b.Sessions.Store(0)
	etcdtest.WaitInstance(t, cli, "app-1", 5*time.Second, "0 sessions written", func(in *registry.Instance, _ int64) bool {
		return in != nil && in.Load.Sessions == 0 && in.State == registry.StateDraining
	})

	// A second agent of the same version registers while the drain stands: it reports drained.
	b2 := agenttest.NewBackend(t)
	cfg2 := config(etcd, b2, "app-2")
	cfg2.Labels = map[string]string{"version": "1"}
	start(t, cfg2)
	etcdtest.WaitInstance(t, cli, "app-2", 5*time.Second, "late instance drained", state(registry.StateDraining))

	select {
	case err := <-r.done:
		t.Fatalf("a drained agent at zero sessions stopped (%v); only its own shutdown may deregister it", err)
	default:
	}
	if ok, err := registry.DeleteDrain(ctx, cli, "/tether", "app", "version=1"); err != nil || !ok {
		t.Fatalf("undo: %v %v", ok, err)
	}
	in = etcdtest.WaitInstance(t, cli, "app-1", 5*time.Second, "undrained", state(registry.StateAvailable))
	if in.Reason != "" {
		t.Errorf("undrained instance keeps reason %q", in.Reason)
	}
	etcdtest.WaitInstance(t, cli, "app-2", 5*time.Second, "late instance undrained", state(registry.StateAvailable))
}

// TestAgentWithoutDrainsPermission: an agent whose etcd role cannot read the drains (the
// roles script of an older release) says so once and keeps registering its own state.
func TestAgentWithoutDrainsPermission(t *testing.T) {
	etcd := etcdtest.Start(t, etcdtest.WithFastPasswords())
	admin := etcd.Client(t)
	etcdtest.ApplyRolesScript(t, admin, "../examples/etcd-roles.sh", "/tether", map[string]string{
		"ROOT_PASSWORD": "root-pw", "CONTROLPLANE_PASSWORD": "cp-pw", "AGENT_PASSWORD": "agent-pw", "OPERATOR_PASSWORD": "op-pw",
	})
	root, err := clientv3.New(clientv3.Config{Endpoints: etcd.Endpoints(), Username: "root", Password: "root-pw", DialTimeout: 2 * time.Second, Logger: zap.NewNop()})
	if err != nil {
		t.Fatal(err)
	}
	defer root.Close()
	ctx, cancel := context.WithTimeout(context.Background(), 20*time.Second)
	defer cancel()
	if _, err := root.RoleRevokePermission(ctx, "tether-agent", "/tether/drains/", clientv3.GetPrefixRangeEnd("/tether/drains/")); err != nil {
		t.Fatal(err)
	}
	if _, _, err := registry.PutDrain(ctx, root, "/tether", "app", "app-1", registry.Drain{Instance: "app-1"}); err != nil {
		t.Fatal(err)
	}
	b := agenttest.NewBackend(t)
	cfg := config(etcd, b, "app-1")
	cfg.Etcd.Username, cfg.Etcd.Password = "tether-agent", "agent-pw"
	var logs syncbuf.Buffer
	actx, acancel := context.WithCancel(context.Background())
	done := make(chan error, 1)
	go func() { done <- agent.Run(actx, cfg, zerolog.New(&logs), nil) }()
	defer func() {
		acancel()
		select {
		case err := <-done:
			if err != nil {
				t.Logf("agent stopped: %v", err)
			}
		case <-time.After(10 * time.Second):
			t.Error("agent did not stop")
		}
	}()
	eventually.Saying(t, "a warning about the drains permission", 20*time.Second, func() (bool, string) {
		return strings.Contains(logs.String(), "cannot read the operators' drains"), "\n" + logs.String()
	})
	etcdtest.WaitInstance(t, root, "app-1", 5*time.Second, "registered as its own state", state(registry.StateAvailable))
}

// TestNewDrainOfADrainingInstanceIsReportedAtOnce: `drain --wait` counts only values written
// after its drain. An instance already draining (by another drain) writes at once when a new
// drain selects it, not at its next heartbeat.
func TestNewDrainOfADrainingInstanceIsReportedAtOnce(t *testing.T) {
	etcd := etcdtest.Start(t)
	cli := etcd.Client(t)
	b := agenttest.NewBackend(t)
	cfg := config(etcd, b, "d1")
	cfg.Labels = map[string]string{"version": "1"}
	cfg.Heartbeat = 30 * time.Second
	// A still cgroup: no load change of its own to write.
	cg := t.TempDir()
	for name, v := range map[string]string{"cpu.stat": "usage_usec 1000\n", "cpu.max": "max 100000\n", "memory.current": "1048576\n", "memory.max": "max\n"} {
		if err := os.WriteFile(filepath.Join(cg, name), []byte(v), 0o644); err != nil {
			t.Fatal(err)
		}
	}
	cfg.LoadSource, cfg.CgroupDir = agent.LoadCgroup, cg
	start(t, cfg)
	etcdtest.WaitInstance(t, cli, "d1", 10*time.Second, "available", func(in *registry.Instance, _ int64) bool {
		return in != nil && in.State == registry.StateAvailable
	})
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	byID := registry.Drain{Instance: "d1", CreatedAt: time.Now().UTC().Add(-time.Minute).Truncate(time.Second)}
	if _, _, err := registry.PutDrain(ctx, cli, "/tether", "app", registry.DrainName(byID), byID); err != nil {
		t.Fatal(err)
	}
	etcdtest.WaitInstance(t, cli, "d1", 5*time.Second, "drained", func(in *registry.Instance, _ int64) bool {
		return in != nil && in.State == registry.StateDraining
	})
	byLabel := registry.Drain{Labels: map[string]string{"version": "1"}, CreatedAt: time.Now().UTC().Truncate(time.Second)}
	if _, _, err := registry.PutDrain(ctx, cli, "/tether", "app", registry.DrainName(byLabel), byLabel); err != nil {
		t.Fatal(err)
	}
	resp, err := cli.Get(ctx, registry.DrainKey("/tether", "app", registry.DrainName(byLabel)))
	if err != nil || len(resp.Kvs) != 1 {
		t.Fatalf("read the label drain: %v", err)
	}
	drainRev := resp.Kvs[0].ModRevision
	// Within 3 s, against a heartbeat of 30 s: else drain --wait would wait for nothing.
	eventually.True(t, "the instance written once a second drain selects it", 3*time.Second, func() bool {
		r, err := cli.Get(ctx, registry.InstanceKey("/tether", "app", "d1"))
		return err == nil && len(r.Kvs) == 1 && r.Kvs[0].ModRevision > drainRev
	})
}
