package registry

import (
	"maps"
	"reflect"
	"slices"
	"strings"
	"testing"
)

// limSvc is a service with the given create revisions: its configuration's (0: not
// configured) and its instances' by ID.
func limSvc(name string, config int64, inst map[string]int64) *Service {
	s := &Service{Name: name, Config: DefaultServiceConfig(name), Configured: config != 0, configCreated: config,
		Instances: map[string]Instance{}, instCreated: map[string]int64{}}
	for id, c := range inst {
		s.Instances[id] = Instance{ID: id, Address: "10.0.0.5", Port: 5000, State: StateAvailable}
		s.instCreated[id] = c
	}
	return s
}

func limState(svcs ...*Service) *State {
	st := &State{Revision: 100, Services: map[string]*Service{}}
	for _, s := range svcs {
		st.Services[s.Name] = s
	}
	return st
}

// limSnapshot copies what Limit must leave alone in st.
func limSnapshot(st *State) *State {
	c := *st
	c.Services = map[string]*Service{}
	for n, s := range st.Services {
		cs := *s
		cs.Instances, cs.instCreated = maps.Clone(s.Instances), maps.Clone(s.instCreated)
		c.Services[n] = &cs
	}
	c.Rejected = maps.Clone(st.Rejected)
	return &c
}

func limNames[V any](m map[string]V) string {
	return strings.Join(slices.Sorted(maps.Keys(m)), ",")
}

func TestLimitServices(t *testing.T) {
	// By first seen: b (3, its configuration), d (4, an instance older than its
	// configuration), a (5), c (5, after a by name), e (9; its configuration revision is no
	// claim since it is not configured), f (10; an instance of unknown revision 0 is no claim).
	build := func() *State {
		e := limSvc("e", 0, map[string]int64{"e1": 9})
		e.configCreated = 1
		return limState(
			limSvc("a", 0, map[string]int64{"a1": 5, "a2": 6}),
			limSvc("b", 3, map[string]int64{"b1": 8}),
			limSvc("c", 7, map[string]int64{"c1": 5}),
			limSvc("d", 6, map[string]int64{"d1": 4}),
			e,
			limSvc("f", 10, map[string]int64{"f1": 0}),
		)
	}
	for _, tc := range []struct {
		max       int
		kept      string
		over      Over
		rejectedN int
	}{
		{max: 0, kept: "a,b,c,d,e,f"},
		{max: -1, kept: "a,b,c,d,e,f"},
		{max: 7, kept: "a,b,c,d,e,f"},
		{max: 6, kept: "a,b,c,d,e,f"},
		{max: 5, kept: "a,b,c,d,e", over: Over{Services: 1, Instances: 1}, rejectedN: 2},
		{max: 4, kept: "a,b,c,d", over: Over{Services: 2, Instances: 2}, rejectedN: 3},
		{max: 3, kept: "a,b,d", over: Over{Services: 3, Instances: 3}, rejectedN: 5},
		{max: 1, kept: "b", over: Over{Services: 5, Instances: 6}, rejectedN: 9},
	} {
		st := build()
		st.Rejected = map[string]string{"/tether/junk": "bad"}
		before := limSnapshot(st)
		got, over, memo := Limit("/tether", st, tc.max, 0, nil)
		if !reflect.DeepEqual(st, before) {
			t.Errorf("max %d: Limit changed its input", tc.max)
		}
		if n := limNames(got.Services); n != tc.kept {
			t.Errorf("max %d: kept %s, want %s", tc.max, n, tc.kept)
		}
		if over != tc.over {
			t.Errorf("max %d: over %+v, want %+v", tc.max, over, tc.over)
		}
		if len(memo) != 0 {
			t.Errorf("max %d: memo %v with no instance bound", tc.max, memo)
		}
		if tc.over == (Over{}) {
			if got != st {
				t.Errorf("max %d: under the bound Limit did not return its input", tc.max)
			}
			continue
		}
		if got.Rejected["/tether/junk"] != "bad" || len(got.Rejected) != tc.rejectedN+1 {
			t.Errorf("max %d: rejected %v, want the input's and %d more", tc.max, got.Rejected, tc.rejectedN)
		}
		for name, s := range st.Services {
			if got.Services[name] != nil {
				if got.Services[name] != s {
					t.Errorf("max %d: kept service %s was copied", tc.max, name)
				}
				continue
			}
			keys := []string{}
			for id := range s.Instances {
				keys = append(keys, InstanceKey("/tether", name, id))
			}
			if s.Configured {
				keys = append(keys, ServiceKey("/tether", name))
			} else if _, ok := got.Rejected[ServiceKey("/tether", name)]; ok {
				t.Errorf("max %d: unconfigured %s has its configuration key rejected", tc.max, name)
			}
			for _, k := range keys {
				if !strings.Contains(got.Rejected[k], "over --max-services") {
					t.Errorf("max %d: %s rejected as %q", tc.max, k, got.Rejected[k])
				}
			}
		}
	}
}

func TestLimitRejectedStartsEmpty(t *testing.T) {
	st := limState(limSvc("a", 0, map[string]int64{"a1": 1}), limSvc("b", 0, map[string]int64{"b1": 2}))
	got, _, _ := Limit("/tether", st, 1, 0, nil)
	if st.Rejected != nil || len(got.Rejected) != 1 || got.Rejected["/tether/instances/b/b1"] == "" {
		t.Errorf("input rejected %v, output rejected %v", st.Rejected, got.Rejected)
	}
}

func TestLimitInstances(t *testing.T) {
	// By create revision: i2 (2), i3 and i4 (5, by ID), i1 (7).
	build := func() *State {
		return limState(
			limSvc("a", 0, map[string]int64{"i1": 7, "i2": 2, "i3": 5, "i4": 5}),
			limSvc("small", 0, map[string]int64{"s1": 1}),
		)
	}
	for _, tc := range []struct {
		max  int
		kept string
	}{
		{max: 0, kept: "i1,i2,i3,i4"},
		{max: -2, kept: "i1,i2,i3,i4"},
		{max: 5, kept: "i1,i2,i3,i4"},
		{max: 4, kept: "i1,i2,i3,i4"},
		{max: 3, kept: "i2,i3,i4"},
		{max: 2, kept: "i2,i3"},
		{max: 1, kept: "i2"},
	} {
		st := build()
		before := limSnapshot(st)
		got, over, memo := Limit("/tether", st, 0, tc.max, nil)
		if !reflect.DeepEqual(st, before) {
			t.Errorf("max %d: Limit changed its input", tc.max)
		}
		a := got.Services["a"]
		if n := limNames(a.Instances); n != tc.kept {
			t.Errorf("max %d: kept %s, want %s", tc.max, n, tc.kept)
		}
		if n := limNames(a.instCreated); n != tc.kept {
			t.Errorf("max %d: kept revisions of %s, want %s", tc.max, n, tc.kept)
		}
		dropped := 4 - len(a.Instances)
		if over != (Over{Instances: dropped}) {
			t.Errorf("max %d: over %+v, want %d instances", tc.max, over, dropped)
		}
		if got.Services["small"] != st.Services["small"] {
			t.Errorf("max %d: service under the bound was copied", tc.max)
		}
		if dropped == 0 {
			if got != st || len(memo) != 0 {
				t.Errorf("max %d: under the bound Limit did not return its input (memo %v)", tc.max, memo)
			}
			continue
		}
		if len(memo) != 1 || memo[st.Services["a"]] != a {
			t.Errorf("max %d: memo %v, want a's bounded copy alone", tc.max, memo)
		}
		if len(got.Rejected) != dropped {
			t.Errorf("max %d: rejected %v, want %d", tc.max, got.Rejected, dropped)
		}
		for id := range st.Services["a"].Instances {
			why := got.Rejected[InstanceKey("/tether", "a", id)]
			if _, kept := a.Instances[id]; kept == (why != "") || (!kept && !strings.Contains(why, "over --max-instances-per-service")) {
				t.Errorf("max %d: %s kept %v, rejected as %q", tc.max, id, kept, why)
			}
		}
	}
}

// A service left out is not also bounded: its instances count once.
func TestLimitBothBounds(t *testing.T) {
	st := limState(
		limSvc("a", 0, map[string]int64{"a1": 1, "a2": 2, "a3": 3}),
		limSvc("b", 0, map[string]int64{"b1": 4, "b2": 5, "b3": 6}),
	)
	got, over, memo := Limit("/tether", st, 1, 2, nil)
	if over != (Over{Services: 1, Instances: 4}) {
		t.Errorf("over %+v, want 1 service and 4 instances", over)
	}
	if limNames(got.Services) != "a" || limNames(got.Services["a"].Instances) != "a1,a2" || len(memo) != 1 {
		t.Errorf("kept %v, memo %v", got.Services, memo)
	}
	if len(got.Rejected) != 4 || !strings.Contains(got.Rejected["/tether/instances/b/b3"], "over --max-services") {
		t.Errorf("rejected %v", got.Rejected)
	}
}

func TestLimitMemo(t *testing.T) {
	a := limSvc("a", 0, map[string]int64{"a1": 1, "a2": 2})
	b := limSvc("b", 0, map[string]int64{"b1": 1, "b2": 2})
	st := limState(a, b)
	first, _, memo := Limit("/tether", st, 0, 1, nil)
	if len(memo) != 2 {
		t.Fatalf("memo %v, want both services", memo)
	}

	// b changes (a new *Service, its older instance gone) and a does not.
	b2 := limSvc("b", 0, map[string]int64{"b2": 2, "b3": 3})
	st2 := limState(a, b2)
	second, _, memo2 := Limit("/tether", st2, 0, 1, memo)
	if second.Services["a"] != first.Services["a"] {
		t.Error("the bounded copy of unchanged a was not reused")
	}
	if second.Services["b"] == first.Services["b"] || limNames(second.Services["b"].Instances) != "b2" {
		t.Errorf("changed b served as %v", second.Services["b"].Instances)
	}
	if len(memo2) != 2 || memo2[b] != nil || memo2[b2] != second.Services["b"] {
		t.Errorf("memo %v keeps what went or misses what came", memo2)
	}

	// Under the bound again: nothing is remembered.
	if _, _, memo3 := Limit("/tether", st2, 0, 2, memo2); len(memo3) != 0 {
		t.Errorf("memo %v under the bound", memo3)
	}
}
