package ctl

import (
	"context"
	"encoding/json"
	"fmt"
	"testing"
	"time"

	clientv3 "go.etcd.io/etcd/client/v3"

	"github.com/tetherlb/tether/internal/etcdtest"
	"github.com/tetherlb/tether/internal/eventually"
	"github.com/tetherlb/tether/registry"
)

// TestDeparturesReadEachLastValue: --wait follows the deletions of the service's instance
// keys from the revision after the one it listed, with each key's last value: the first
// deletion it follows counts, one before does not; a key written again is no departure; a
// deletion after the revision asked about is not what that listing saw; and a compacted
// history leaves every departure unknown instead of pending for ever.
func TestDeparturesReadEachLastValue(t *testing.T) {
	etcd := etcdtest.Start(t)
	cli := etcd.Client(t)
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	key := func(id string) string { return registry.InstanceKey("/tether", "app", id) }
	put := func(id string, v any) int64 {
		t.Helper()
		b, ok := v.([]byte)
		if !ok {
			var err error
			if b, err = json.Marshal(v); err != nil {
				t.Fatal(err)
			}
		}
		r, err := cli.Put(ctx, key(id), string(b))
		if err != nil {
			t.Fatal(err)
		}
		return r.Header.Revision
	}
	del := func(id string) int64 {
		t.Helper()
		r, err := cli.Delete(ctx, key(id))
		if err != nil || r.Deleted != 1 {
			t.Fatalf("delete %s: %v, %d deleted", id, err, r.Deleted)
		}
		return r.Header.Revision
	}
	inst := func(id string, sessions int, leaving bool) registry.Instance {
		return registry.Instance{ID: id, Address: "127.0.0.1", Port: 5000, State: registry.StateDraining,
			Load: registry.Load{Sessions: sessions}, Leaving: leaving, UpdatedAt: time.Now().UTC()}
	}
	for _, id := range []string{"v1", "x1", "w1"} {
		put(id, inst(id, 0, true))
	}
	put("y1", inst("y1", 3, false))
	put("z1", []byte("not json"))
	listed := del("v1") // the listing's revision: v1 was gone before the drain
	d := followDepartures(ctx, cli, "/tether", "app", listed+1)
	x1 := del("x1")
	y1 := del("y1")
	del("z1")
	del("w1")
	put("w1", inst("w1", 0, true))
	// The last revision is outside the watched keys: only a progress notification, requested,
	// tells the watch it has seen everything up to it.
	r, err := cli.Put(ctx, "/tether/services/other", "{}")
	if err != nil {
		t.Fatal(err)
	}
	last := r.Header.Revision

	eventually.True(t, fmt.Sprintf("the departures up to revision %d read", last), 10*time.Second, func() bool {
		_, _, lagging := d.departed("x1", last)
		if lagging {
			d.requestProgress()
		}
		return !lagging
	})
	if dep, ok, _ := d.departed("x1", last); !ok || !dep.valid || !dep.in.LeftEmpty() || dep.rev != x1 {
		t.Errorf("x1 (deregistered empty at %d): %+v, ok %v", x1, dep, ok)
	}
	if dep, ok, _ := d.departed("x1", x1); !ok || dep.rev != x1 {
		t.Errorf("x1 asked at its deletion's revision: %+v, ok %v; want its departure", dep, ok)
	}
	if dep, ok, _ := d.departed("y1", last); !ok || !dep.valid || dep.in.Leaving || dep.in.Load.Sessions != 3 {
		t.Errorf("y1 (gone with 3 sessions): %+v, ok %v", dep, ok)
	}
	if dep, ok, lagging := d.departed("y1", y1-1); ok || lagging {
		t.Errorf("y1 asked before its deletion: %+v, ok %v, lagging %v; want no departure", dep, ok, lagging)
	}
	if dep, ok, _ := d.departed("z1", last); !ok || dep.valid {
		t.Errorf("z1 (an undecodable value): %+v, ok %v; want a departure without a valid value", dep, ok)
	}
	for _, id := range []string{"w1", "v1"} {
		if dep, ok, _ := d.departed(id, last); ok {
			t.Errorf("%s (written again, or gone before the listing): %+v; want no departure", id, dep)
		}
	}
	if _, _, lagging := d.departed("x1", last+1); !lagging {
		t.Error("a revision not read yet is not reported lagging")
	}

	if _, err := cli.Compact(ctx, last, clientv3.WithCompactPhysical()); err != nil {
		t.Fatal(err)
	}
	lost := followDepartures(ctx, cli, "/tether", "app", listed+1)
	var known bool
	eventually.True(t, "a watch from a compacted revision no longer lagging", 10*time.Second, func() bool {
		_, ok, lagging := lost.departed("x1", last)
		known = ok
		return !lagging
	})
	if known {
		t.Error("a departure known from a compacted history")
	}
}

// TestProgressCountsEveryDrainedInstance: the line --wait prints counts each instance the
// drain holds, whether listed, rejected or gone, and leaves out one whose labels changed.
func TestProgressCountsEveryDrainedInstance(t *testing.T) {
	in := func(id, version string, sessions int) registry.Instance {
		return registry.Instance{ID: id, Labels: map[string]string{"version": version}, Load: registry.Load{Sessions: sessions}}
	}
	k := func(id string) string { return registry.InstanceKey("/tether", "app", id) }
	snap := &snapshot{
		st: &registry.State{Revision: 20, Services: map[string]*registry.Service{"app": {Instances: map[string]registry.Instance{
			"a1": in("a1", "1", 2), "a2": in("a2", "2", 7),
		}}}, Rejected: map[string]string{k("a3"): "bad"}},
		mods: map[string]int64{k("a1"): 12, k("a2"): 12},
	}
	gone := func(id string, rev int64) (departure, bool, bool) {
		if id != "a4" || rev != 20 {
			t.Errorf("departed(%q, %d) asked; want a4 at the listing's revision 20", id, rev)
		}
		left := in("a4", "1", 0)
		left.Leaving = true
		return departure{rev: 15, in: left, valid: true}, true, false
	}
	d := registry.Drain{Labels: map[string]string{"version": "1"}}
	r := progress(snap, "/tether", "app", d, 10, []string{"a1", "a2", "a3", "a4"}, gone)
	want := "2 sessions on 3 drained instances (a1: 2, a3: its value is rejected, sessions unknown, a4: deregistered with no session left)"
	if r.line != want || r.done || r.lagging || r.sessions != 2 || len(r.pending) != 2 {
		t.Errorf("progress: %+v\nwant the line %q, 2 sessions, a1 and a3 pending", r, want)
	}
}
