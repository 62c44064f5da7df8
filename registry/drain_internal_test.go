package registry

import (
	"fmt"
	"strconv"
	"strings"
	"testing"
	"time"

	"github.com/rs/zerolog"
	"go.etcd.io/etcd/api/v3/mvccpb"
	clientv3 "go.etcd.io/etcd/client/v3"
)

// withReason adds a reason to an instance's JSON.
func withReason(js, reason string) string {
	return strings.Replace(js, `,"labels":`, `,"reason":"`+reason+`","labels":`, 1)
}

func labelledJSON(id, state, version string, sessions int) string {
	return `{"id":"` + id + `","address":"10.0.0.5","port":5000,"state":"` + state + `","labels":{"version":"` + version + `"},"load":{"sessions":` + itoa(sessions) + `}}`
}

func itoa(n int) string { return strconv.Itoa(n) }

func TestDecodeDrain(t *testing.T) {
	good := []struct{ name, raw string }{
		{"a1", `{"instance":"a1","createdAt":"2026-11-22T16:40:00+01:00"}`},
		{"version=1.4.1", `{"labels":{"version":"1.4.1"},"reason":"deploy 1.4.2","future":[1]}`},
	}
	for _, g := range good {
		d, err := DecodeDrain("app", g.name, []byte(g.raw))
		if err != nil {
			t.Errorf("%s: %v", g.raw, err)
		}
		if !d.CreatedAt.IsZero() && d.CreatedAt.Location() != time.UTC {
			t.Errorf("%s: createdAt not normalized to UTC", g.raw)
		}
	}
	bad := []struct{ svc, name, raw, want string }{
		{"app", "x", `{}`, "selects nothing"},
		{"app", "x", `{"labels":{}}`, "selects nothing"},
		{"app", "x", `{"instance":"a1","labels":{"v":"1"}}`, "not both"},
		{"app", "x", `{"instance":"a 1"}`, "instance id"},
		{"app", "x", `{"labels":{"-bad":"1"}}`, "label key"},
		{"app", "x", `{"labels":{"v":"` + strings.Repeat("x", 300) + `"}}`, "over 256"},
		{"app", "x", `{"instance":"a1","reason":"` + strings.Repeat("x", 600) + `"}`, "reason"},
		{"app", "x", `[1]`, "JSON object"},
		{"app", "x", `{"instance":"a1"} trailing`, "invalid JSON"},
		{"App", "x", `{"instance":"a1"}`, "service name"},
		{"app", "-x", `{"instance":"a1"}`, "drain name"},
	}
	for _, b := range bad {
		if _, err := DecodeDrain(b.svc, b.name, []byte(b.raw)); err == nil || !strings.Contains(err.Error(), b.want) {
			t.Errorf("%s %s %s: got %v, want an error with %q", b.svc, b.name, b.raw, err, b.want)
		}
	}
}

// TestDrainLimits: each limit of a drain holds exactly: a value at the limit is a drain, one
// past it is not.
func TestDrainLimits(t *testing.T) {
	labels := func(n int) map[string]string {
		m := map[string]string{}
		for i := range n {
			m[fmt.Sprintf("k%d", i)] = "v"
		}
		return m
	}
	cases := []struct {
		what string
		d    Drain
	}{
		{"a label key of 63 characters", Drain{Labels: map[string]string{strings.Repeat("k", maxLabelKey): "v"}}},
		{"a label value of 256 characters", Drain{Labels: map[string]string{"v": strings.Repeat("x", maxLabelValue)}}},
		{"64 labels", Drain{Labels: labels(MaxLabels)}},
		{"a reason of 512 characters", Drain{Instance: "a1", Reason: strings.Repeat("r", MaxReason)}},
		{"created in year 1", Drain{Instance: "a1", CreatedAt: time.Date(1, 1, 1, 0, 0, 0, 0, time.UTC)}},
		{"created in year 9999", Drain{Instance: "a1", CreatedAt: time.Date(9999, 12, 31, 23, 59, 59, 0, time.UTC)}},
	}
	for _, c := range cases {
		if err := c.d.Validate(); err != nil {
			t.Errorf("%s: %v; want a valid drain", c.what, err)
		}
	}
	over := []struct {
		what string
		d    Drain
	}{
		{"a label key of 64 characters", Drain{Labels: map[string]string{strings.Repeat("k", maxLabelKey+1): "v"}}},
		{"a label value of 257 characters", Drain{Labels: map[string]string{"v": strings.Repeat("x", maxLabelValue+1)}}},
		{"65 labels", Drain{Labels: labels(MaxLabels + 1)}},
		{"a reason of 513 characters", Drain{Instance: "a1", Reason: strings.Repeat("r", MaxReason+1)}},
		{"created in year 10000", Drain{Instance: "a1", CreatedAt: time.Date(10000, 1, 1, 0, 0, 0, 0, time.UTC)}},
	}
	for _, c := range over {
		if err := c.d.Validate(); err == nil {
			t.Errorf("%s: valid; want an error", c.what)
		}
	}
}

func TestDrainName(t *testing.T) {
	cases := map[string]Drain{
		"a1":                   {Instance: "a1"},
		"env=prod,version=1.4": {Labels: map[string]string{"version": "1.4", "env": "prod"}},
	}
	for want, d := range cases {
		if got := DrainName(d); got != want {
			t.Errorf("DrainName(%+v) = %q, want %q", d, got, want)
		}
	}
	// A selector that is not a valid name gets a stable hashed one.
	d := Drain{Labels: map[string]string{"app.kubernetes.io/version": "1 4"}}
	n := DrainName(d)
	if !strings.HasPrefix(n, "labels-") || ValidateDrainName(n) != nil || DrainName(d) != n {
		t.Errorf("hashed name %q", n)
	}
	if k, svc, name, err := ParseKey("/tether", DrainKey("/tether", "app", n)); err != nil || k != KeyDrain || svc != "app" || name != n {
		t.Errorf("ParseKey of a drain key: %v %s %s %v", k, svc, name, err)
	}
	if _, _, _, err := ParseKey("/tether", "/tether/drains/app"); err == nil {
		t.Error("a drain key without a name parsed")
	}
}

func TestApplyDrains(t *testing.T) {
	kvs := []*mvccpb.KeyValue{
		{Key: []byte("/tether/instances/app/a1"), Value: []byte(withReason(labelledJSON("a1", "available", "1", 4), OperatorDrainReason("version=1"))), ModRevision: 5},
		{Key: []byte("/tether/instances/app/a2"), Value: []byte(withReason(labelledJSON("a2", "full", "1", 9), "sessions 9 >= maxSessions 9")), ModRevision: 5},
		{Key: []byte("/tether/instances/app/a3"), Value: []byte(labelledJSON("a3", "unhealthy", "1", 0)), ModRevision: 5},
		{Key: []byte("/tether/instances/app/b1"), Value: []byte(labelledJSON("b1", "available", "2", 1)), ModRevision: 5},
		{Key: []byte("/tether/instances/web/w1"), Value: []byte(labelledJSON("w1", "available", "1", 1)), ModRevision: 5},
		{Key: []byte("/tether/drains/app/version=1"), Value: []byte(`{"labels":{"version":"1"},"createdAt":"2026-11-22T15:00:00Z"}`), ModRevision: 6},
		{Key: []byte("/tether/drains/app/a1"), Value: []byte(`{"instance":"a1","createdAt":"2026-11-22T16:00:00Z"}`), ModRevision: 7},
		{Key: []byte("/tether/drains/ghost/g1"), Value: []byte(`{"instance":"g1"}`), ModRevision: 8},
		{Key: []byte("/tether/drains/app/bad"), Value: []byte(`{"instance":"a1","labels":{"version":"2"}}`), ModRevision: 9},
	}
	var rej rejects
	st := BuildState("/tether", 9, kvs, rej.hook)
	if len(rej) != 1 || !strings.Contains(st.Rejected["/tether/drains/app/bad"], "not both") {
		t.Errorf("the bad drain should be rejected alone: %v", st.Rejected)
	}
	if _, ok := st.Services["ghost"]; ok {
		t.Error("a drain alone made its service exist")
	}
	if len(st.Drains["app"]) != 2 || len(st.Drains["ghost"]) != 1 {
		t.Fatalf("drains %v", st.Drains)
	}
	out := ApplyDrains(st)
	app := out.Services["app"]
	want := map[string]InstanceState{"a1": StateDraining, "a2": StateDraining, "a3": StateUnhealthy, "b1": StateAvailable}
	for id, s := range want {
		if got := app.Instances[id].State; got != s {
			t.Errorf("%s: state %s, want %s", id, got, s)
		}
	}
	// The oldest drain wins; the agent's own reason stays after the operator's.
	if m := app.Drained["a1"]; m.Name != "version=1" || !m.Since.Equal(time.Date(2026, 11, 22, 15, 0, 0, 0, time.UTC)) {
		t.Errorf("a1 drained by %+v, want version=1 since 15:00", m)
	}
	// a1's agent already reports the drain (it read it): the reason is not doubled.
	if r := app.Instances["a1"].Reason; r != OperatorDrainReason("version=1") {
		t.Errorf("a1 reason %q", r)
	}
	if r, want := app.Instances["a2"].Reason, OperatorDrainReason("version=1")+"; sessions 9 >= maxSessions 9"; r != want {
		t.Errorf("a2 reason %q, want %q", r, want)
	}
	if _, ok := app.Drained["a3"]; !ok || len(app.Drained) != 3 {
		t.Errorf("drained %v: want a1, a2, a3 (unhealthy but drained)", app.Drained)
	}
	if out.Services["web"] != st.Services["web"] {
		t.Error("a service without drains was copied")
	}
	if st.Services["app"].Instances["a1"].State != StateAvailable || st.Services["app"].Drained != nil {
		t.Error("ApplyDrains modified its input")
	}
	if ApplyDrains(out) == nil || ApplyDrains(&State{}) == nil {
		t.Error("nil from ApplyDrains")
	}
}

func TestDrainEventsCopyOnWrite(t *testing.T) {
	log := zerolog.Nop()
	base := BuildState("/tether", 10, []*mvccpb.KeyValue{
		{Key: []byte("/tether/instances/app/a1"), Value: []byte(instJSON("a1", "available", 1)), ModRevision: 5},
		{Key: []byte("/tether/drains/web/w1"), Value: []byte(`{"instance":"w1"}`), ModRevision: 6},
	}, nil)
	var rej rejects
	opts := buildOptions{prefix: "/tether", reject: rej.hook, log: log, allowLoopback: true}
	s1, changed, _ := applyEvents(opts, base, []*clientv3.Event{put("/tether/drains/app/a1", `{"instance":"a1"}`, 11)})
	if !changed || s1.Drains["app"]["a1"].Instance != "a1" || len(s1.Drains["web"]) != 1 {
		t.Fatalf("drain put: changed %v, drains %v", changed, s1.Drains)
	}
	if _, ok := base.Drains["app"]; ok {
		t.Fatal("applyEvents modified its base's drains")
	}
	if s1.Services["app"] != base.Services["app"] {
		t.Error("a drain copied the service it drains: the watcher's services stay as the agents wrote them")
	}
	// Identical put: no change. Bad put: rejected, last good kept.
	if _, changed, _ := applyEvents(opts, s1, []*clientv3.Event{put("/tether/drains/app/a1", `{"instance":"a1"}`, 12)}); changed {
		t.Error("identical drain put reported a change")
	}
	s2, _, _ := applyEvents(opts, s1, []*clientv3.Event{put("/tether/drains/app/a1", `{"instance":""}`, 13)})
	if s2.Drains["app"]["a1"].Instance != "a1" || s2.Rejected["/tether/drains/app/a1"] == "" {
		t.Errorf("bad drain update: %v %v", s2.Drains, s2.Rejected)
	}
	s3, _, _ := applyEvents(opts, s2, []*clientv3.Event{del("/tether/drains/app/a1", 14), del("/tether/drains/web/w1", 15)})
	if len(s3.Drains) != 0 || len(s3.Rejected) != 0 || len(s2.Drains["app"]) != 1 {
		t.Errorf("after deletes: %v %v (s2 %v)", s3.Drains, s3.Rejected, s2.Drains)
	}
	// A re-list keeps a drain whose new value is rejected.
	st, _ := rebuildState(opts, 20, []*mvccpb.KeyValue{
		{Key: []byte("/tether/drains/web/w1"), Value: []byte(`{]`), ModRevision: 16},
	}, base)
	if st.Drains["web"]["w1"].Instance != "w1" {
		t.Errorf("re-list lost the last good drain: %v", st.Drains)
	}
}

// BenchmarkDrainService: the cost of applying drains to a changed service of 1,000 instances,
// half of them selected by one of 3 drains (the control plane pays it once per change of a
// drained service).
func BenchmarkDrainService(b *testing.B) {
	svc := &Service{Name: "app", Instances: map[string]Instance{}}
	for i := range 1000 {
		id := "app-" + strconv.Itoa(i)
		svc.Instances[id] = Instance{ID: id, State: StateAvailable, Labels: map[string]string{"version": strconv.Itoa(i % 2), "zone": "z" + strconv.Itoa(i%3)}}
	}
	drains := map[string]Drain{
		"version=0": {Labels: map[string]string{"version": "0"}},
		"app-1":     {Instance: "app-1"},
		"zone=z9":   {Labels: map[string]string{"zone": "z9"}},
	}
	b.ReportAllocs()
	for b.Loop() {
		if out := DrainService(svc, drains); len(out.Drained) != 501 {
			b.Fatalf("drained %d", len(out.Drained))
		}
	}
}
