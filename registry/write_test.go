package registry_test

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"strings"
	"testing"
	"time"

	clientv3 "go.etcd.io/etcd/client/v3"

	"github.com/tetherlb/tether/internal/etcdtest"
	"github.com/tetherlb/tether/registry"
)

func TestCreateUpdateDeleteInstance(t *testing.T) {
	srv := etcdtest.Start(t)
	cli := srv.Client(t)
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	l1, err := cli.Grant(ctx, 10)
	if err != nil {
		t.Fatal(err)
	}
	l2, err := cli.Grant(ctx, 10)
	if err != nil {
		t.Fatal(err)
	}
	inst := registry.Instance{ID: "a1", Address: "127.0.0.1", Port: 5000, State: registry.StateAvailable}
	if err := registry.CreateInstance(ctx, cli, "/tether", "app", inst, l1.ID); err != nil {
		t.Fatalf("create: %v", err)
	}
	if err := registry.CreateInstance(ctx, cli, "/tether", "app", inst, l2.ID); !errors.Is(err, registry.ErrInstanceExists) {
		t.Fatalf("second create with another lease: got %v, want ErrInstanceExists", err)
	}
	if err := registry.UpdateInstance(ctx, cli, "/tether", "app", inst, l2.ID); !errors.Is(err, registry.ErrLeaseLost) {
		t.Fatalf("update with another lease: got %v, want ErrLeaseLost", err)
	}
	inst.State = registry.StateFull
	if err := registry.UpdateInstance(ctx, cli, "/tether", "app", inst, l1.ID); err != nil {
		t.Fatalf("update: %v", err)
	}
	resp, err := cli.Get(ctx, registry.InstanceKey("/tether", "app", "a1"))
	if err != nil || len(resp.Kvs) != 1 {
		t.Fatalf("get: %v %v", resp, err)
	}
	got, err := registry.DecodeInstance("app", "a1", resp.Kvs[0].Value)
	if err != nil || got.State != registry.StateFull {
		t.Fatalf("decoded %+v, %v; want state full", got, err)
	}
	inst.Port = 0
	if err := registry.UpdateInstance(ctx, cli, "/tether", "app", inst, l1.ID); err == nil {
		t.Fatal("update with port 0 succeeded; want a validation error")
	}
	if err := registry.DeleteInstance(ctx, cli, "/tether", "app", "a1", l2.ID); !errors.Is(err, registry.ErrLeaseLost) {
		t.Fatalf("delete with another lease: got %v", err)
	}
	if err := registry.DeleteInstance(ctx, cli, "/tether", "app", "a1", l1.ID); err != nil {
		t.Fatalf("delete: %v", err)
	}
	if err := registry.CreateInstance(ctx, cli, "/tether", "app", inst, l2.ID); err == nil {
		t.Fatal("create with invalid port succeeded")
	}
}

// TestPutDrainKeepsAnotherSelectionOfTheSameName: a drain already under the name is the same
// drain only when it selects the same instance and exactly the same labels; a hand-written one
// with other labels is left as it is (replacing it would undrain what it selects) and named in
// the error, and an equal one is returned with its createdAt.
func TestPutDrainKeepsAnotherSelectionOfTheSameName(t *testing.T) {
	srv := etcdtest.Start(t)
	cli := srv.Client(t)
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	key := registry.DrainKey("/tether", "app", "version=1")
	if _, err := cli.Put(ctx, key, `{"labels":{"version":"2"},"createdAt":"2026-01-02T03:04:05Z"}`); err != nil {
		t.Fatal(err)
	}
	d := registry.Drain{Labels: map[string]string{"version": "1"}, CreatedAt: time.Now().UTC()}
	got, created, err := registry.PutDrain(ctx, cli, "/tether", "app", "version=1", d)
	if !errors.Is(err, registry.ErrDrainNameTaken) || created || got.Labels["version"] != "2" {
		t.Fatalf("PutDrain over version=2 under the name version=1: %+v created %v err %v; want ErrDrainNameTaken", got, created, err)
	}
	resp, err := cli.Get(ctx, key)
	if err != nil || len(resp.Kvs) != 1 || string(resp.Kvs[0].Value) != `{"labels":{"version":"2"},"createdAt":"2026-01-02T03:04:05Z"}` {
		t.Fatalf("the hand-written drain was changed: %v %v", resp, err)
	}
	// The same selection is the same drain: kept, with its first createdAt.
	if _, err := cli.Put(ctx, key, `{"labels":{"version":"1"},"createdAt":"2026-01-02T03:04:05Z"}`); err != nil {
		t.Fatal(err)
	}
	got, created, err = registry.PutDrain(ctx, cli, "/tether", "app", "version=1", d)
	if err != nil || created || got.CreatedAt.Year() != 2026 || got.CreatedAt.Month() != 1 {
		t.Fatalf("PutDrain of the same selection: %+v created %v err %v; want the existing drain", got, created, err)
	}
}

// CreateInstanceRev returns the key's create revision, 0 when its own lease already held it
// (it is overwritten); another lease's key is named by that lease in the error. AdoptInstance
// rebinds a key to a new lease only while it is the value and lease that were read.
func TestCreateAgainAndAdoptInstance(t *testing.T) {
	srv := etcdtest.Start(t)
	cli := srv.Client(t)
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	grant := func() clientv3.LeaseID {
		l, err := cli.Grant(ctx, 10)
		if err != nil {
			t.Fatal(err)
		}
		return l.ID
	}
	l1, l2 := grant(), grant()
	key := registry.InstanceKey("/tether", "app", "a1")
	held := func() (int64, clientv3.LeaseID, int64) {
		resp, err := cli.Get(ctx, key)
		if err != nil || len(resp.Kvs) != 1 {
			t.Fatalf("get %s: %v, %v", key, resp, err)
		}
		return resp.Kvs[0].CreateRevision, clientv3.LeaseID(resp.Kvs[0].Lease), resp.Kvs[0].ModRevision
	}
	inst := registry.Instance{ID: "a1", Address: "10.0.0.1", Port: 5000, State: registry.StateAvailable}
	rev, err := registry.CreateInstanceRev(ctx, cli, "/tether", "app", inst, l1)
	if created, _, _ := held(); err != nil || rev != created {
		t.Fatalf("create: revision %d, %v; want the key's create revision %d", rev, err, created)
	}
	inst.State = registry.StateFull
	if rev, err := registry.CreateInstanceRev(ctx, cli, "/tether", "app", inst, l1); err != nil || rev != 0 {
		t.Fatalf("create again under the same lease: revision %d, %v; want 0 and the key overwritten", rev, err)
	}
	if _, err := registry.CreateInstanceRev(ctx, cli, "/tether", "app", inst, l2); !errors.Is(err, registry.ErrInstanceExists) ||
		!strings.Contains(err.Error(), fmt.Sprintf("lease %x", int64(l1))) {
		t.Fatalf("create under another lease: %v; want ErrInstanceExists naming lease %x", err, int64(l1))
	}
	_, lease, mod := held()
	if lease != l1 {
		t.Fatalf("key held by lease %x, want %x", lease, l1)
	}
	if err := registry.AdoptInstance(ctx, cli, "/tether", "app", inst, l2, mod-1, l1); !errors.Is(err, registry.ErrInstanceExists) {
		t.Errorf("adopt after a change: %v, want ErrInstanceExists", err)
	}
	if err := registry.AdoptInstance(ctx, cli, "/tether", "app", inst, l2, mod, l2); !errors.Is(err, registry.ErrInstanceExists) {
		t.Errorf("adopt naming another lease: %v, want ErrInstanceExists", err)
	}
	if err := registry.AdoptInstance(ctx, cli, "/tether", "app", inst, l2, mod, l1); err != nil {
		t.Fatalf("adopt: %v", err)
	}
	if _, lease, _ := held(); lease != l2 {
		t.Errorf("after adopt the key is held by lease %x, want %x", lease, l2)
	}
	inst.Port = 0
	if err := registry.AdoptInstance(ctx, cli, "/tether", "app", inst, l1, mod, l2); err == nil {
		t.Error("adopt of an invalid instance succeeded")
	}
}

// An instance whose encoding is exactly MaxValueBytes is written, one byte more is refused:
// label values may be escaped on encoding (each "<" is six bytes), so a valid instance can
// encode past the limit.
func TestInstanceValueLimitIsExact(t *testing.T) {
	srv := etcdtest.Start(t)
	cli := srv.Client(t)
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	sized := func(n int) registry.Instance {
		inst := registry.Instance{ID: "a1", Address: "10.0.0.1", Port: 5000, State: registry.StateAvailable, Labels: map[string]string{}}
		for i := 0; i < 42; i++ {
			inst.Labels[fmt.Sprintf("l%02d", i)] = strings.Repeat("<", 256)
		}
		b, err := json.Marshal(inst)
		if err != nil {
			t.Fatal(err)
		}
		pad := n - len(b) - len(`,"pad":""`)
		if pad < 0 || pad/6+pad%6 > 256 {
			t.Fatalf("cannot pad %d bytes to %d", len(b), n)
		}
		inst.Labels["pad"] = strings.Repeat("<", pad/6) + strings.Repeat("a", pad%6)
		if b, _ := json.Marshal(inst); len(b) != n {
			t.Fatalf("encoded %d bytes, want %d", len(b), n)
		}
		return inst
	}
	if err := registry.CreateInstance(ctx, cli, "/tether", "app", sized(registry.MaxValueBytes), 0); err != nil {
		t.Errorf("an instance of exactly %d bytes: %v", registry.MaxValueBytes, err)
	}
	if err := registry.UpdateInstance(ctx, cli, "/tether", "app", sized(registry.MaxValueBytes+1), 0); err == nil || !strings.Contains(err.Error(), "bytes, over") {
		t.Errorf("an instance of %d bytes: %v, want refused for its size", registry.MaxValueBytes+1, err)
	}
}
