package registry_test

import (
	"context"
	"errors"
	"testing"
	"time"

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
