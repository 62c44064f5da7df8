//go:build !unix && !windows

package agent

// processAlive cannot tell on this system: say yes, so that keys are waited for, not adopted.
func processAlive(int) bool { return true }
