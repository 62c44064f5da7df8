//go:build unix

package agent

import (
	"errors"
	"syscall"
)

// processAlive reports whether a process with this PID exists; when that cannot be told,
// it says yes (the safe answer: the key is then waited for, not adopted). A zombie (dead,
// not yet reaped) counts as alive.
func processAlive(pid int) bool {
	err := syscall.Kill(pid, 0)
	return !errors.Is(err, syscall.ESRCH)
}
