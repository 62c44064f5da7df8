package controlplane

import (
	"bytes"
	"strings"
	"testing"
	"time"

	"github.com/rs/zerolog"

	"github.com/tetherlb/tether/registry"
)

// TestDrainApplierKeepsPointers: the drained copy of a service is reused while neither the
// service nor its drains change, so the translation cache does not re-translate it on every
// push; a change of either gives a new copy; services without drains are passed through.
func TestDrainApplierKeepsPointers(t *testing.T) {
	app := &registry.Service{Name: "app", Instances: map[string]registry.Instance{
		"a1": {ID: "a1", State: registry.StateAvailable, Labels: map[string]string{"version": "1"}},
		"a2": {ID: "a2", State: registry.StateAvailable, Labels: map[string]string{"version": "2"}},
	}}
	web := &registry.Service{Name: "web", Instances: map[string]registry.Instance{"w1": {ID: "w1", State: registry.StateAvailable}}}
	drains := map[string]map[string]registry.Drain{"app": {"version=1": {Labels: map[string]string{"version": "1"}}}}
	st := &registry.State{Services: map[string]*registry.Service{"app": app, "web": web}, Drains: drains}

	var a drainApplier
	out1 := a.apply(st)
	if out1 == st || out1.Services["web"] != web || out1.Services["app"] == app {
		t.Fatal("want a new state with a drained copy of app and web as is")
	}
	if s := out1.Services["app"].Instances["a1"].State; s != registry.StateDraining {
		t.Errorf("a1 state %s, want draining", s)
	}
	if s := out1.Services["app"].Instances["a2"].State; s != registry.StateAvailable {
		t.Errorf("a2 state %s, want available", s)
	}
	// A later state with the same service and equal drains: the same drained copy.
	st2 := &registry.State{Revision: 2, Services: st.Services, Drains: map[string]map[string]registry.Drain{
		"app": {"version=1": {Labels: map[string]string{"version": "1"}}}}}
	if out2 := a.apply(st2); out2.Services["app"] != out1.Services["app"] {
		t.Error("unchanged service and drains gave a new copy: every push would re-translate it")
	}
	// Another selector: a new copy.
	st3 := &registry.State{Services: st.Services, Drains: map[string]map[string]registry.Drain{
		"app": {"a2": {Instance: "a2"}}}}
	out3 := a.apply(st3)
	if out3.Services["app"] == out1.Services["app"] || out3.Services["app"].Instances["a2"].State != registry.StateDraining ||
		out3.Services["app"].Instances["a1"].State != registry.StateAvailable {
		t.Errorf("after the drains changed: %+v", out3.Services["app"].Instances)
	}
	// No drains: the state itself.
	st4 := &registry.State{Services: st.Services}
	if a.apply(st4) != st4 {
		t.Error("a state without drains was copied")
	}
}

// TestDrainsSurviveAHold: while the guard holds a mass disappearance, the state it serves
// keeps the drains, so a drained instance stays drained through an etcd hiccup.
func TestDrainsSurviveAHold(t *testing.T) {
	inst := func(id string) registry.Instance {
		return registry.Instance{ID: id, Address: "10.0.0.1", Port: 5000, State: registry.StateAvailable}
	}
	drains := map[string]map[string]registry.Drain{"app": {"m4": {Instance: "m4"}}}
	all := &registry.Service{Name: "app", Instances: map[string]registry.Instance{"m1": inst("m1"), "m2": inst("m2"), "m3": inst("m3"), "m4": inst("m4")}}
	left := &registry.Service{Name: "app", Instances: map[string]registry.Instance{"m4": inst("m4")}}
	g := newRemovalGuard(0.5, time.Minute, time.Minute, zerolog.Nop(), nil)
	now := time.Now()
	g.apply(&registry.State{Revision: 1, Services: map[string]*registry.Service{"app": all}, Drains: drains}, now)
	held, _ := g.apply(&registry.State{Revision: 2, Services: map[string]*registry.Service{"app": left}, Drains: drains}, now)
	if g.held.count() != 3 {
		t.Fatalf("held %d, want 3", g.held.count())
	}
	var a drainApplier
	out := a.apply(held)
	app := out.Services["app"]
	if len(app.Instances) != 4 || app.Instances["m4"].State != registry.StateDraining || app.Instances["m1"].State != registry.StateAvailable {
		t.Errorf("served during the hold: %+v", app.Instances)
	}
}

// TestDrainsAreReported: an instance taken by a drain is logged once when the drain takes it
// and once when it no longer applies, and the drained count follows; pushes in between log
// nothing.
func TestDrainsAreReported(t *testing.T) {
	var buf bytes.Buffer
	count := -1
	a := drainApplier{log: zerolog.New(&buf), onCount: func(n int) { count = n }}
	app := &registry.Service{Name: "app", Instances: map[string]registry.Instance{
		"a1": {ID: "a1", State: registry.StateAvailable, Labels: map[string]string{"version": "1"}}, "a2": {ID: "a2", State: registry.StateAvailable}}}
	services := map[string]*registry.Service{"app": app}
	drained := &registry.State{Services: services, Drains: map[string]map[string]registry.Drain{"app": {"a1": {Instance: "a1"}}}}

	a.apply(drained)
	if got := strings.Count(buf.String(), "operator drain applied"); got != 1 || !strings.Contains(buf.String(), `"instance":"a1"`) || count != 1 {
		t.Fatalf("after the drain: %d 'applied' lines, count %d; log:\n%s", got, count, buf.String())
	}
	buf.Reset()
	a.apply(&registry.State{Revision: 2, Services: services, Drains: drained.Drains})
	if buf.Len() != 0 || count != 1 {
		t.Fatalf("an unchanged drain logged again (count %d):\n%s", count, buf.String())
	}
	// The drain that holds a1 changes (its own drain undone as a label drain takes it): a move
	// is logged, naming the new drain.
	a.apply(&registry.State{Revision: 3, Services: services, Drains: map[string]map[string]registry.Drain{
		"app": {"version=1": {Labels: map[string]string{"version": "1"}}}}})
	if got := strings.Count(buf.String(), "operator drain applied"); got != 1 || !strings.Contains(buf.String(), `"drain":"version=1"`) || count != 1 {
		t.Fatalf("after the drain moved: %d 'applied' lines, count %d; log:\n%s", got, count, buf.String())
	}
	buf.Reset()
	a.apply(&registry.State{Revision: 4, Services: services})
	if !strings.Contains(buf.String(), "operator drain no longer applies") || count != 0 {
		t.Fatalf("after the undo: count %d; log:\n%s", count, buf.String())
	}
}
