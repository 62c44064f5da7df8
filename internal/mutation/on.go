//go:build simmutate

package mutation

import "sync/atomic"

var active atomic.Pointer[map[string]bool]

// On reports whether the named mutation is switched on.
func On(name string) bool {
	m := active.Load()
	return m != nil && (*m)[name]
}

// Set switches on exactly the named mutations (none: every one off) and reports true.
func Set(names ...string) bool {
	m := map[string]bool{}
	for _, n := range names {
		m[n] = true
	}
	active.Store(&m)
	return true
}
