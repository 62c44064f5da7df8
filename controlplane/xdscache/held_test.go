package xdscache

import (
	"maps"
	"math/rand/v2"
	"slices"
	"strconv"
	"strings"
	"testing"
)

// TestHeldSetIsAMap: random sets, deletions, forgets and retains on a heldSet and on a map
// leave the same names and versions, and the set stays sorted.
func TestHeldSetIsAMap(t *testing.T) {
	rng := rand.New(rand.NewPCG(3, 4))
	model := map[string]string{"n05": "x", "n11": "y"}
	h := heldFrom(maps.Clone(model))
	for i := range 5000 {
		n := "n" + strconv.Itoa(10+rng.IntN(30))
		switch rng.IntN(8) {
		case 0, 1, 2:
			v := strconv.Itoa(rng.IntN(4))
			h.set(n, v)
			model[n] = v
		case 3, 4:
			h.del(n)
			delete(model, n)
		case 5:
			h.forget(n)
			if _, ok := model[n]; ok {
				model[n] = ""
			}
		case 6:
			d := strconv.Itoa(rng.IntN(10))
			h.retain(func(name string) bool { return !strings.HasSuffix(name, d) })
			maps.DeleteFunc(model, func(name, _ string) bool { return strings.HasSuffix(name, d) })
		default:
			v, ok := h.get(n)
			if mv, mok := model[n]; v != mv || ok != mok {
				t.Fatalf("op %d: get(%s) = %q, %v; the map has %q, %v", i, n, v, ok, mv, mok)
			}
		}
		got := map[string]string{}
		for _, r := range h {
			got[r.name] = r.version
		}
		if !maps.Equal(got, model) || !slices.IsSortedFunc(h, func(a, b heldRes) int { return strings.Compare(a.name, b.name) }) || len(h) != len(model) {
			t.Fatalf("op %d: the set holds %v; the map %v", i, h, model)
		}
	}
}
