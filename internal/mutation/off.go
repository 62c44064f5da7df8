//go:build !simmutate

// Package mutation breaks the product on purpose, by name, so that the simulation can show it
// catches each break (internal/sim's TestSimulationCatchesMutations). Only a binary built with
// the simmutate tag can switch one on: in every other build On is a constant false and the
// compiler drops the broken branch.
package mutation

// On reports whether the named mutation is switched on; always false without simmutate.
func On(string) bool { return false }

// Set is a no-op without the simmutate tag; it reports whether mutations can be set.
func Set(...string) bool { return false }
