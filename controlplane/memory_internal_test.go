package controlplane

import (
	"bytes"
	"os"
	"path/filepath"
	"reflect"
	"strings"
	"testing"
	"time"

	"github.com/rs/zerolog"

	"github.com/tetherlb/tether/registry"
)

// The state file read back: what one control plane wrote is what the next one reads; a file
// of another version or prefix, or not JSON, is logged and ignored; no file at all is the
// first start's ordinary case and says nothing.
func TestMemoryFileRoundTrip(t *testing.T) {
	dir := t.TempDir()
	path := filepath.Join(dir, "sub", "dir", "state.json")
	var logs bytes.Buffer
	log := zerolog.New(&logs)

	if m := readMemory("", "/tether/", log); m != nil {
		t.Errorf("no --state-file read %+v", m)
	}
	if m := readMemory(path, "/tether/", log); m != nil || logs.Len() != 0 {
		t.Errorf("an absent file read %+v, logged %q; want nothing, silently", m, logs.String())
	}

	at := time.Date(2026, 1, 2, 3, 4, 5, 0, time.UTC)
	want := &memory{
		Version: memoryVersion, Prefix: "/tether/", WrittenAt: at,
		Instances: []memoryInstance{{Service: "app", Created: 4, Instance: registry.Instance{ID: "a", Address: "10.0.0.1", Port: 1, State: registry.StateAvailable}}},
		Promoted:  []memoryEndpoint{{Cluster: "app", ID: "a", Address: "10.0.0.1:1"}},
		Envoys:    []memoryEnvoy{{Node: "envoy-0", Group: "default"}},
		Replicas:  []string{"cp-2"},
	}
	if err := writeMemory(path, want); err != nil {
		t.Fatalf("write into a directory not there yet: %v", err)
	}
	if fi, err := os.Stat(filepath.Dir(path)); err != nil || fi.Mode().Perm() != 0o700 {
		t.Errorf("the state file's directory: %v, %v; want it made, 0700", fi, err)
	}
	got := readMemory(path, "/tether/", log)
	if got == nil || !reflect.DeepEqual(*got, *want) {
		t.Errorf("read back %+v, want %+v", got, want)
	}
	if !strings.Contains(logs.String(), "state file read") || strings.Contains(logs.String(), `"warn"`) {
		t.Errorf("reading a good file logged %q", logs.String())
	}

	for _, c := range []struct {
		name, prefix string
		m            *memory
		raw          string
	}{
		{name: "another prefix", prefix: "/other/", m: want},
		{name: "another version", prefix: "/tether/", m: &memory{Version: memoryVersion + 1, Prefix: "/tether/"}},
		{name: "version 0", prefix: "/tether/", m: &memory{Prefix: "/tether/"}},
		{name: "not JSON", prefix: "/tether/", raw: "{\"version\": 1, "},
	} {
		p := filepath.Join(dir, strings.ReplaceAll(c.name, " ", "-"))
		if c.m != nil {
			if err := writeMemory(p, c.m); err != nil {
				t.Fatal(err)
			}
		} else if err := os.WriteFile(p, []byte(c.raw), 0o600); err != nil {
			t.Fatal(err)
		}
		logs.Reset()
		if m := readMemory(p, c.prefix, log); m != nil || !strings.Contains(logs.String(), `"warn"`) {
			t.Errorf("%s: read %+v, logged %q; want nothing read, a warning", c.name, m, logs.String())
		}
	}
	// A directory where the file is: unreadable, logged, ignored.
	logs.Reset()
	if m := readMemory(dir, "/tether/", log); m != nil || !strings.Contains(logs.String(), `"warn"`) {
		t.Errorf("a directory read %+v, logged %q", m, logs.String())
	}
}

// A state file that cannot be written is an error, and leaves no temporary file behind: its
// directory is a file, or its path a directory.
func TestMemoryFileWriteErrors(t *testing.T) {
	dir := t.TempDir()
	file := filepath.Join(dir, "file")
	if err := os.WriteFile(file, nil, 0o600); err != nil {
		t.Fatal(err)
	}
	m := &memory{Version: memoryVersion, Prefix: "/tether/"}
	if err := writeMemory(filepath.Join(file, "state.json"), m); err == nil || !strings.Contains(err.Error(), "state file") {
		t.Errorf("writing under a file: %v, want a state file error", err)
	}
	taken := filepath.Join(dir, "taken")
	if err := os.MkdirAll(filepath.Join(taken, "inside"), 0o700); err != nil {
		t.Fatal(err)
	}
	if err := writeMemory(taken, m); err == nil || !strings.Contains(err.Error(), "state file") {
		t.Errorf("writing over a directory: %v, want a state file error", err)
	}
	ents, err := os.ReadDir(dir)
	if err != nil {
		t.Fatal(err)
	}
	if len(ents) != 2 {
		t.Errorf("left in the directory: %v; want the file and the directory alone", ents)
	}
	// Written again over an older file: replaced.
	path := filepath.Join(dir, "state.json")
	for _, p := range []string{"/a/", "/b/"} {
		if err := writeMemory(path, &memory{Version: memoryVersion, Prefix: p}); err != nil {
			t.Fatal(err)
		}
	}
	if got := readMemory(path, "/b/", zerolog.Nop()); got == nil {
		t.Error("the second write did not replace the first")
	}
}

// recalledDepartures adds the instances the file names and the first listing lacks, unless
// etcd's history names them already, as departures with their last value and claim; it
// returns its input when there are none, and never writes into it.
func TestRecalledDepartures(t *testing.T) {
	inst := func(id string) registry.Instance {
		return registry.Instance{ID: id, Address: "10.0.0.1", Port: 1, State: registry.StateAvailable}
	}
	st := &registry.State{Revision: 9, Services: map[string]*registry.Service{
		"app": {Name: "app", Instances: map[string]registry.Instance{"here": inst("here")}},
	}}
	deps := make([]registry.Departure, 1, 4) // room to append: the input must not be written into
	deps[0] = registry.Departure{Service: "app", Instance: inst("history"), Created: 2}
	st.Departures = deps

	if got := recalledDepartures(st, nil); got != st {
		t.Error("no memory: the state was not returned as it is")
	}
	none := &memory{Instances: []memoryInstance{
		{Service: "app", Created: 2, Instance: inst("here")},
		{Service: "app", Created: 2, Instance: inst("history")},
	}}
	if got := recalledDepartures(st, none); got != st {
		t.Errorf("nothing to recall: got %+v, want the state as it is", got)
	}
	m := &memory{Instances: []memoryInstance{
		{Service: "app", Created: 2, Instance: inst("here")},
		{Service: "app", Created: 2, Instance: inst("history")},
		{Service: "app", Created: 2, Instance: inst("lost")},
		{Service: "gone", Created: 5, Instance: inst("here")}, // another service's instance of the same ID
		{Service: "other", Created: 6, Instance: inst("history")},
	}}
	got := recalledDepartures(st, m)
	want := []registry.Departure{
		deps[0],
		{Service: "app", Instance: inst("lost"), Created: 2},
		{Service: "gone", Instance: inst("here"), Created: 5},
		{Service: "other", Instance: inst("history"), Created: 6},
	}
	if !reflect.DeepEqual(got.Departures, want) || got.Revision != 9 || got.Services["app"] != st.Services["app"] {
		t.Errorf("recalled %+v, want %+v on the same state", got.Departures, want)
	}
	if len(st.Departures) != 1 || deps[:2][1].Instance.ID != "" {
		t.Error("recalledDepartures wrote into its input")
	}
}

// memoryOf keeps every instance served, sorted by service and ID, with its service's claim,
// and the time in UTC.
func TestMemoryOf(t *testing.T) {
	now := time.Date(2026, 1, 2, 3, 4, 5, 0, time.FixedZone("x", 3600))
	if m := memoryOf("/p/", nil, nil, now); m.Version != memoryVersion || m.Prefix != "/p/" || !m.WrittenAt.Equal(now) ||
		m.WrittenAt.Location() != time.UTC || m.Instances != nil || m.Promoted != nil || m.Envoys != nil || m.Replicas != nil {
		t.Errorf("nothing served: %+v", m)
	}
	in := func(id string) registry.Instance { return registry.Instance{ID: id, Address: "10.0.0.1", Port: 1} }
	kept := &registry.State{Services: map[string]*registry.Service{
		"b":   {Name: "b", Created: 3, Instances: map[string]registry.Instance{"x": in("x"), "a": in("a")}},
		"a":   {Name: "a", Created: 2, Instances: map[string]registry.Instance{"z": in("z")}},
		"c":   {Name: "c", Created: 4, Instances: map[string]registry.Instance{"c2": in("c2"), "c1": in("c1"), "c3": in("c3")}},
		"emp": {Name: "emp", Created: 5, Instances: map[string]registry.Instance{}},
	}}
	m := memoryOf("/p/", kept, nil, now)
	want := []memoryInstance{
		{Service: "a", Created: 2, Instance: in("z")},
		{Service: "b", Created: 3, Instance: in("a")},
		{Service: "b", Created: 3, Instance: in("x")},
		{Service: "c", Created: 4, Instance: in("c1")},
		{Service: "c", Created: 4, Instance: in("c2")},
		{Service: "c", Created: 4, Instance: in("c3")},
	}
	if !reflect.DeepEqual(m.Instances, want) {
		t.Errorf("instances %+v, want %+v", m.Instances, want)
	}
}

// The state file is written when what it holds changes, not when only the time does; a
// failure is logged once until a write succeeds again, which is logged once.
func TestMemoryWriterWritesChangesAndLogsFailuresOnce(t *testing.T) {
	dir := t.TempDir()
	blocker := filepath.Join(dir, "sub")
	if err := os.WriteFile(blocker, nil, 0o600); err != nil {
		t.Fatal(err)
	}
	path := filepath.Join(blocker, "state.json")
	var logs bytes.Buffer
	w := &memoryWriter{path: path, log: zerolog.New(&logs)}
	t0 := time.Date(2026, 1, 2, 3, 4, 5, 0, time.UTC)
	m := func(at time.Time, ids ...string) *memory {
		mm := &memory{Version: memoryVersion, Prefix: "/tether/", WrittenAt: at}
		for _, id := range ids {
			mm.Instances = append(mm.Instances, memoryInstance{Service: "app", Instance: registry.Instance{ID: id}})
		}
		return mm
	}
	written := func() *memory {
		t.Helper()
		got := readMemory(path, "/tether/", zerolog.Nop())
		if got == nil {
			t.Fatal("no state file written")
		}
		return got
	}

	w.write(m(t0, "a"))
	w.write(m(t0.Add(time.Second), "a"))
	w.write(m(t0.Add(2*time.Second), "a", "b"))
	if n := strings.Count(logs.String(), "cannot write the state file"); n != 1 || strings.Contains(logs.String(), "written again") {
		t.Fatalf("three failed writes logged %q; want one warning", logs.String())
	}
	if err := os.Remove(blocker); err != nil {
		t.Fatal(err)
	}
	logs.Reset()
	w.write(m(t0.Add(3*time.Second), "a"))
	if got := written(); !got.WrittenAt.Equal(t0.Add(3*time.Second)) || len(got.Instances) != 1 {
		t.Errorf("written %+v, want a at %v", got, t0.Add(3*time.Second))
	}
	w.write(m(t0.Add(4*time.Second), "a"))
	if got := written(); !got.WrittenAt.Equal(t0.Add(3 * time.Second)) {
		t.Errorf("written again at %v with nothing changed but the time", got.WrittenAt)
	}
	w.write(m(t0.Add(5*time.Second), "a", "b"))
	if got := written(); !got.WrittenAt.Equal(t0.Add(5*time.Second)) || len(got.Instances) != 2 {
		t.Errorf("a change not written: %+v", got)
	}
	if n := strings.Count(logs.String(), "state file written again"); n != 1 || strings.Contains(logs.String(), "cannot write") {
		t.Errorf("the writes after the failure logged %q; want one line saying it is written again", logs.String())
	}
}
