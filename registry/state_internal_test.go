package registry

import (
	"fmt"
	"strings"
	"testing"

	"github.com/rs/zerolog"
	"go.etcd.io/etcd/api/v3/mvccpb"
	clientv3 "go.etcd.io/etcd/client/v3"
)

func instJSON(id, state string, sessions int) string {
	return fmt.Sprintf(`{"id":%q,"address":"10.0.0.5","port":5000,"state":%q,"load":{"sessions":%d}}`, id, state, sessions)
}

func put(key, value string, rev int64) *clientv3.Event {
	return &clientv3.Event{Type: mvccpb.PUT, Kv: &mvccpb.KeyValue{Key: []byte(key), Value: []byte(value), ModRevision: rev}}
}

func del(key string, rev int64) *clientv3.Event {
	return &clientv3.Event{Type: mvccpb.DELETE, Kv: &mvccpb.KeyValue{Key: []byte(key), ModRevision: rev}}
}

// rejects collects the keys passed to a reject hook.
type rejects []string

func (r *rejects) hook(key string, _ error) { *r = append(*r, key) }

func TestBuildState(t *testing.T) {
	kvs := []*mvccpb.KeyValue{
		{Key: []byte("/tether/services/app"), Value: []byte(`{"domains":["app.example.com"]}`), ModRevision: 3},
		{Key: []byte("/tether/instances/app/a1"), Value: []byte(instJSON("a1", "available", 1)), ModRevision: 5},
		{Key: []byte("/tether/instances/app/a2"), Value: []byte(`{"port":0}`), ModRevision: 6},
		{Key: []byte("/tether/instances/web/w1"), Value: []byte(instJSON("w1", "full", 2)), ModRevision: 4},
		{Key: []byte("/tether/junk"), Value: []byte(`{}`), ModRevision: 2},
		{Key: []byte("/tether/services/only"), Value: []byte(`{}`), ModRevision: 7},
	}
	var rej rejects
	st := BuildState("/tether", 9, kvs, rej.hook)
	if st.Revision != 9 {
		t.Errorf("revision %d, want 9", st.Revision)
	}
	if len(st.Services) != 3 {
		t.Fatalf("services %v, want app, web, only", st.Services)
	}
	app := st.Services["app"]
	if !app.Configured || app.Config.Domains[0] != "app.example.com" || len(app.Instances) != 1 || app.Revision != 5 {
		t.Errorf("app = %+v", app)
	}
	web := st.Services["web"]
	if web.Configured || web.Config.Affinity.CookieName != "tether-web" || web.Instances["w1"].State != StateFull || web.Revision != 4 {
		t.Errorf("web = %+v", web)
	}
	if o := st.Services["only"]; !o.Configured || len(o.Instances) != 0 {
		t.Errorf("only = %+v", o)
	}
	if len(rej) != 2 || len(st.Rejected) != 2 || !strings.Contains(st.Rejected["/tether/instances/app/a2"], "port") ||
		!strings.Contains(st.Rejected["/tether/junk"], "neither under") {
		t.Errorf("rejected hook %v, state %v", rej, st.Rejected)
	}
}

func TestApplyEventsCopyOnWrite(t *testing.T) {
	log := zerolog.Nop()
	base := BuildState("/tether", 10, []*mvccpb.KeyValue{
		{Key: []byte("/tether/instances/app/a1"), Value: []byte(instJSON("a1", "available", 1)), ModRevision: 5},
		{Key: []byte("/tether/instances/web/w1"), Value: []byte(instJSON("w1", "available", 1)), ModRevision: 6},
	}, nil)
	webBefore := base.Services["web"]
	var rej rejects
	opts := buildOptions{prefix: "/tether", reject: rej.hook, log: log, allowLoopback: true}

	// An identical put changes nothing.
	if st, changed, _ := applyEvents(opts, base, []*clientv3.Event{put("/tether/instances/app/a1", instJSON("a1", "available", 1), 11)}); changed || st != base {
		t.Fatalf("identical put: changed=%v", changed)
	}

	s1, changed, _ := applyEvents(opts, base, []*clientv3.Event{put("/tether/instances/app/a1", instJSON("a1", "full", 3), 12)})
	if !changed || s1.Revision != 12 {
		t.Fatalf("changed=%v revision=%d, want true 12", changed, s1.Revision)
	}
	if s1.Services["web"] != webBefore {
		t.Error("unchanged service web was copied; want the same pointer")
	}
	if s1.Services["app"] == base.Services["app"] || s1.Services["app"].Revision != 12 || s1.Services["app"].Instances["a1"].State != StateFull {
		t.Errorf("app after the put: %+v", s1.Services["app"])
	}
	if base.Services["app"].Instances["a1"].State != StateAvailable || base.Revision != 10 {
		t.Error("applyEvents modified its base state")
	}

	// A bad update keeps the last good value, and records the rejection.
	s2, changed, _ := applyEvents(opts, s1, []*clientv3.Event{put("/tether/instances/app/a1", `{"id":"a1","port":"x"}`, 13)})
	if !changed || s2.Services["app"].Instances["a1"].State != StateFull || s2.Rejected["/tether/instances/app/a1"] == "" || len(rej) != 1 {
		t.Fatalf("bad update: changed=%v app=%+v rejected=%v hook=%v", changed, s2.Services["app"], s2.Rejected, rej)
	}
	if s2.Services["app"] != s1.Services["app"] {
		t.Error("a rejected update copied the service")
	}
	// A good value clears the rejection.
	s3, _, _ := applyEvents(opts, s2, []*clientv3.Event{put("/tether/instances/app/a1", instJSON("a1", "draining", 3), 14)})
	if _, ok := s3.Rejected["/tether/instances/app/a1"]; ok || s3.Services["app"].Instances["a1"].State != StateDraining {
		t.Errorf("good update after a bad one: %+v %v", s3.Services["app"], s3.Rejected)
	}

	// Config put then delete with instances remaining returns to defaults; the last instance's
	// delete removes the service. Events of one response apply in order.
	s4, _, _ := applyEvents(opts, s3, []*clientv3.Event{
		put("/tether/services/app", `{"lbPolicy":"round_robin"}`, 15),
		put("/tether/instances/app/bad", `nope`, 15),
	})
	if a := s4.Services["app"]; !a.Configured || a.Config.LBPolicy != LBRoundRobin || a.Revision != 15 {
		t.Errorf("after config put: %+v", a)
	}
	s5, _, _ := applyEvents(opts, s4, []*clientv3.Event{del("/tether/services/app", 16), del("/tether/instances/app/bad", 17)})
	if a := s5.Services["app"]; a == nil || a.Configured || a.Config.LBPolicy != LBLeastRequest || a.Revision != 16 || len(s5.Rejected) != 0 {
		t.Errorf("after config delete: %+v rejected %v", a, s5.Rejected)
	}
	s6, _, _ := applyEvents(opts, s5, []*clientv3.Event{del("/tether/instances/app/a1", 18)})
	if _, ok := s6.Services["app"]; ok || s6.Services["web"] != webBefore || s6.Revision != 18 {
		t.Errorf("after the last instance's delete: %v", s6.Services)
	}
	// Deleting what is not there changes nothing.
	if _, changed, _ := applyEvents(opts, s6, []*clientv3.Event{del("/tether/instances/app/a1", 19), del("/tether/services/x", 19)}); changed {
		t.Error("deleting absent keys reported a change")
	}
}

func TestRebuildStateKeepsAndShares(t *testing.T) {
	prev := BuildState("/tether", 10, []*mvccpb.KeyValue{
		{Key: []byte("/tether/services/app"), Value: []byte(`{"lbPolicy":"random"}`), ModRevision: 3},
		{Key: []byte("/tether/instances/app/a1"), Value: []byte(instJSON("a1", "available", 1)), ModRevision: 5},
		{Key: []byte("/tether/instances/web/w1"), Value: []byte(instJSON("w1", "available", 1)), ModRevision: 6},
		{Key: []byte("/tether/instances/web/w2"), Value: []byte(instJSON("w2", "available", 1)), ModRevision: 7},
		{Key: []byte("/tether/instances/api/p1"), Value: []byte(instJSON("p1", "available", 1)), ModRevision: 8},
	}, nil)
	var rej rejects
	st, err := rebuildState(buildOptions{prefix: "/tether", reject: rej.hook, log: zerolog.Nop()}, 20, []*mvccpb.KeyValue{
		{Key: []byte("/tether/services/app"), Value: []byte(`{"affinity":{"mode":"bogus"}}`), ModRevision: 12},
		{Key: []byte("/tether/instances/app/a1"), Value: []byte(`{]`), ModRevision: 13},
		{Key: []byte("/tether/instances/web/w1"), Value: []byte(instJSON("w1", "available", 1)), ModRevision: 6},
		{Key: []byte("/tether/instances/api/p1"), Value: []byte(instJSON("p1", "available", 1)), ModRevision: 8},
		{Key: []byte("/tether/instances/new/n1"), Value: []byte(instJSON("n1", "available", 1)), ModRevision: 15},
	}, prev)
	if err != nil {
		t.Fatal(err)
	}
	if st.Revision != 20 || len(rej) != 2 || len(st.Rejected) != 2 {
		t.Fatalf("revision %d, hook %v, rejected %v", st.Revision, rej, st.Rejected)
	}
	// The rejected instance keeps its last good value; the rejected configuration does not
	// fall back to what this process saw (a new replica could not), and with a bad identity
	// and no etcd history to read here the service is left out, its "*" "/" reserved.
	if a := st.Services["app"]; a.ConfigError == "" || a.Instances["a1"].State != StateAvailable || len(a.Config.Domains) != 1 {
		t.Errorf("app: want ConfigError and a1 kept, got %+v", a)
	}
	if w := st.Services["web"]; w == prev.Services["web"] || len(w.Instances) != 1 || w.Revision != 20 {
		t.Errorf("web lost w2 while unwatched: want a new service at the list revision, got %+v", w)
	}
	// An unchanged service is prev's own; one that appeared is at the list revision.
	if a := st.Services["api"]; a != prev.Services["api"] {
		t.Errorf("api, unchanged, is a copy at revision %d: want prev's service", a.Revision)
	}
	if n := st.Services["new"]; n == nil || n.Revision != 20 {
		t.Errorf("new service: %+v, want it at the list revision", n)
	}

}

// An instance's claim is its ClaimSince when older than its key, else its key's create
// revision: a future or negative value cannot make a claim younger or invalid.
func TestInstanceClaim(t *testing.T) {
	for _, tc := range []struct{ since, created, want int64 }{{0, 9, 9}, {4, 9, 4}, {12, 9, 9}, {9, 9, 9}} {
		in := Instance{ClaimSince: tc.since}
		if got := in.Claim(tc.created); got != tc.want {
			t.Errorf("claimSince %d, created %d: claim %d, want %d", tc.since, tc.created, got, tc.want)
		}
	}
	st := BuildState("/tether", 20, []*mvccpb.KeyValue{
		{Key: []byte("/tether/instances/app/a2"), Value: []byte(`{"id":"a2","address":"10.0.0.5","port":5000,"state":"available","claimSince":3}`), CreateRevision: 10, ModRevision: 10},
		{Key: []byte("/tether/instances/ap/x1"), Value: []byte(`{"id":"x1","address":"10.0.0.6","port":5000,"state":"available","claimSince":50}`), CreateRevision: 7, ModRevision: 7},
	}, nil)
	if app, ap := st.Services["app"].Created, st.Services["ap"].Created; app != 3 || ap != 7 {
		t.Errorf("claims app %d ap %d, want 3 (inherited) and 7 (its own key: a later claimSince is ignored)", app, ap)
	}
}

// TestRejectedConfigErrorFollowsTheValue: a service left out for one bad configuration, then
// for another with the same routes, reports the newer value's error, not the first one's; a
// configuration written again unchanged changes nothing.
func TestRejectedConfigErrorFollowsTheValue(t *testing.T) {
	base := BuildState("/tether", 10, []*mvccpb.KeyValue{
		{Key: []byte("/tether/instances/app/a1"), Value: []byte(instJSON("a1", "available", 1)), ModRevision: 5},
	}, nil)
	opts := buildOptions{prefix: "/tether", log: zerolog.Nop(), allowLoopback: true}
	s1, _, err := applyEvents(opts, base, []*clientv3.Event{put("/tether/services/app", `{"affinity":{"mode":"bogus"}}`, 11)})
	if err != nil || !strings.Contains(s1.Services["app"].ConfigError, "bogus") {
		t.Fatalf("first bad configuration: %v, error %q", err, s1.Services["app"].ConfigError)
	}
	s2, changed, err := applyEvents(opts, s1, []*clientv3.Event{put("/tether/services/app", `{"affinity":{"mode":"other"}}`, 12)})
	if e := s2.Services["app"].ConfigError; err != nil || !changed || !strings.Contains(e, "other") || strings.Contains(e, "bogus") {
		t.Errorf("second bad configuration: changed %v, %v, error %q; want the second value's", changed, err, e)
	}
	if e := s2.Services["app"].ConfigError; strings.Contains(e, "nothing is reserved") {
		t.Errorf("routes readable, yet: %q", e)
	}
	// Unreadable routes: the error says that nothing is reserved for the service.
	s5, _, _ := applyEvents(opts, s2, []*clientv3.Event{put("/tether/services/app", `{"domains":5,"affinity":{"mode":"other"}}`, 15)})
	if e := s5.Services["app"].ConfigError; !strings.Contains(e, "nothing is reserved") {
		t.Errorf("routes unreadable: %q; want it said that nothing is reserved", e)
	}
	// The same configuration written again changes nothing: no new state, nothing pushed.
	s3, _, _ := applyEvents(opts, s2, []*clientv3.Event{put("/tether/services/app", `{"lbPolicy":"random"}`, 13)})
	if s4, changed, err := applyEvents(opts, s3, []*clientv3.Event{put("/tether/services/app", `{"lbPolicy":"random"}`, 14)}); err != nil || changed || s4 != s3 {
		t.Errorf("the same configuration again: changed %v, %v", changed, err)
	}
}
