package registry_test

import (
	"context"
	"strconv"
	"strings"
	"sync"
	"testing"

	clientv3 "go.etcd.io/etcd/client/v3"

	"github.com/tetherlb/tether/internal/etcdtest"
	"github.com/tetherlb/tether/registry"
)

// departureIDs returns the departures of st as "service/id@revision/created".
func departureIDs(st *registry.State) []string {
	var out []string
	for _, d := range st.Departures {
		out = append(out, d.Service+"/"+d.Instance.ID+"@"+itoa(d.Revision)+"/"+itoa(d.Created))
	}
	return out
}

func itoa(n int64) string { return strconv.FormatInt(n, 10) }

// The first State carries the instance keys deleted before the listing that it does not
// hold, each once, with its last value, in the order of their first delete: what the
// control plane's guard counts when it starts during a lease storm. A key deleted and put
// back, a value that could not be served (not an instance, undecodable, loopback), and a
// key deleted twice is one departure, its newest; a delete at the listing's own revision is one.
func TestWatcherReadsDeparturesBeforeItsFirstListing(t *testing.T) {
	srv := etcdtest.Start(t)
	cli := srv.Client(t)
	inst := func(id string, sessions int) string {
		return withField(t, withField(t, exampleInstance, "id", id), "load", map[string]any{"sessions": sessions})
	}
	gone1 := mustPut(t, cli, "/tether/instances/app/g1", inst("g1", 1))
	mustPut(t, cli, "/tether/instances/app/g1", inst("g1", 7)) // its last value
	mustPut(t, cli, "/tether/instances/app/b1", inst("b1", 1))
	mustDelete(t, cli, "/tether/instances/app/b1")
	mustPut(t, cli, "/tether/instances/app/b1", inst("b1", 2))
	twice := mustPut(t, cli, "/tether/instances/web/t1", inst("t1", 1))
	mustDelete(t, cli, "/tether/instances/web/t1")
	mustPut(t, cli, "/tether/instances/app/lo", withField(t, inst("lo", 1), "address", "127.0.0.1"))
	mustDelete(t, cli, "/tether/instances/app/lo")
	mustPut(t, cli, "/tether/instances/app/bad", "not json")
	mustDelete(t, cli, "/tether/instances/app/bad")
	mustPut(t, cli, svcKey, exampleService)
	mustDelete(t, cli, svcKey)
	delG1 := deleteRev(t, cli, "/tether/instances/app/g1")
	twice2 := mustPut(t, cli, "/tether/instances/web/t1", inst("t1", 3))
	delT1 := deleteRev(t, cli, "/tether/instances/web/t1") // the listing's revision

	r := startWatcher(t, cli)
	first := r.all()[0]
	if first.Revision != delT1 {
		t.Fatalf("first state at revision %d, want %d (the last delete)", first.Revision, delT1)
	}
	want := []string{"web/t1@" + itoa(delT1) + "/" + itoa(twice2), "app/g1@" + itoa(delG1) + "/" + itoa(gone1)}
	got := departureIDs(first)
	if strings.Join(got, " ") != strings.Join(want, " ") {
		t.Errorf("departures %v, want %v (t1 first deleted at %d)", got, want, twice)
	}
	for _, d := range first.Departures {
		if d.Instance.ID == "g1" && d.Instance.Load.Sessions != 7 {
			t.Errorf("g1 departed with %d sessions, want its last value's 7", d.Instance.Load.Sessions)
		}
	}
	if _, ok := instance(first, "app", "b1"); !ok {
		t.Error("b1, put back, is not served")
	}
}

// With etcd's history compacted past some deletes, the first State carries those after the
// compaction only, and the watcher says that the earlier ones are unknown.
func TestWatcherDeparturesAfterACompaction(t *testing.T) {
	srv := etcdtest.Start(t)
	cli := srv.Client(t)
	mustPut(t, cli, "/tether/instances/app/old", withField(t, exampleInstance, "id", "old"))
	mustDelete(t, cli, "/tether/instances/app/old")
	created := mustPut(t, cli, "/tether/instances/app/new", withField(t, exampleInstance, "id", "new"))
	compactAt := mustPut(t, cli, "/tether/junk", "x")
	ctx, cancel := context.WithTimeout(context.Background(), waitTimeout)
	defer cancel()
	if _, err := cli.Compact(ctx, compactAt, clientv3.WithCompactPhysical()); err != nil {
		t.Fatalf("compact: %v", err)
	}
	del := deleteRev(t, cli, "/tether/instances/app/new")
	mustPut(t, cli, "/tether/instances/app/live", withField(t, exampleInstance, "id", "live"))

	r := startWatcher(t, cli)
	want := "app/new@" + itoa(del) + "/" + itoa(created)
	if got := departureIDs(r.all()[0]); strings.Join(got, " ") != want {
		t.Errorf("departures %v, want %s only (old was deleted before the compaction)", got, want)
	}
	if log := r.log.String(); !strings.Contains(log, "history is compacted") || !strings.Contains(log, `"compacted":`+itoa(compactAt)) {
		t.Errorf("no warning of the compaction at %d; log:\n%s", compactAt, log)
	}
}

func deleteRev(t *testing.T, cli *clientv3.Client, key string) int64 {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), waitTimeout)
	defer cancel()
	resp, err := cli.Delete(ctx, key)
	if err != nil || resp.Deleted != 1 {
		t.Fatalf("delete %s: %v (%d deleted)", key, err, resp.Deleted)
	}
	return resp.Header.Revision
}

// etcd sends a watch's history in responses of at most 1000 revisions: a departure after the
// first of them (here behind an instance's 1100 heartbeats) is read too.
func TestWatcherReadsDeparturesAcrossManyRevisions(t *testing.T) {
	srv := etcdtest.Start(t)
	cli := srv.Client(t)
	created1 := mustPut(t, cli, "/tether/instances/app/d1", withField(t, exampleInstance, "id", "d1"))
	created2 := mustPut(t, cli, "/tether/instances/app/d2", withField(t, exampleInstance, "id", "d2"))
	del1 := deleteRev(t, cli, "/tether/instances/app/d1")
	busy := withField(t, exampleInstance, "id", "busy")
	var wg sync.WaitGroup
	for range 4 {
		wg.Add(1)
		go func() {
			defer wg.Done()
			for range 275 {
				if _, err := cli.Put(context.Background(), "/tether/instances/app/busy", busy); err != nil {
					t.Error(err)
					return
				}
			}
		}()
	}
	wg.Wait()
	del2 := deleteRev(t, cli, "/tether/instances/app/d2")
	if del2-del1 <= 1000 {
		t.Fatalf("the deletes are %d revisions apart, want more than a watch response holds", del2-del1)
	}
	r := startWatcher(t, cli)
	want := "app/d1@" + itoa(del1) + "/" + itoa(created1) + " app/d2@" + itoa(del2) + "/" + itoa(created2)
	if got := departureIDs(r.all()[0]); strings.Join(got, " ") != want {
		t.Errorf("departures %v, want %s", got, want)
	}
}
