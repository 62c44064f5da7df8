package xdscache

import (
	"slices"
	"strings"
)

// heldSet is what a delta Envoy holds of one type: each name with the version sent, sorted by
// name. It is a slice, not a map, for memory: a thousand Envoys holding a thousand
// assignments and a thousand clusters each are two million entries, 32 bytes each here
// (the strings are the cache's own, shared) and about 78 in a map[string]string with a swiss
// table's slack. A push looks up only the names it changes (a binary search each); a name is
// inserted or removed with a copy of the slice's tail, once per subscription change or
// removal, and a first sync appends in order.
type heldSet []heldRes

type heldRes struct{ name, version string }

// heldFrom returns m's names and versions as a heldSet.
func heldFrom(m map[string]string) heldSet {
	h := make(heldSet, 0, len(m))
	for n, v := range m {
		h = append(h, heldRes{n, v})
	}
	slices.SortFunc(h, func(a, b heldRes) int { return strings.Compare(a.name, b.name) })
	return h
}

func (h heldSet) find(name string) (int, bool) {
	return slices.BinarySearchFunc(h, name, func(r heldRes, n string) int { return strings.Compare(r.name, n) })
}

// get returns the version held of name.
func (h heldSet) get(name string) (string, bool) {
	if i, ok := h.find(name); ok {
		return h[i].version, true
	}
	return "", false
}

// set records name as held at version.
func (h *heldSet) set(name, version string) {
	i, ok := h.find(name)
	if ok {
		(*h)[i].version = version
		return
	}
	*h = slices.Insert(*h, i, heldRes{name, version})
}

// forget records that the version of name, if held, is not known: the next response
// carries it.
func (h heldSet) forget(name string) {
	if i, ok := h.find(name); ok {
		h[i].version = ""
	}
}

// del records name as not held.
func (h *heldSet) del(name string) {
	if i, ok := h.find(name); ok {
		*h = slices.Delete(*h, i, i+1)
	}
}

// retain keeps the names keep accepts.
func (h *heldSet) retain(keep func(name string) bool) {
	*h = slices.DeleteFunc(*h, func(r heldRes) bool { return !keep(r.name) })
}
