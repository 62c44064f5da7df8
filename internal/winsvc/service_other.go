//go:build !windows

package winsvc

import (
	"time"

	"github.com/rs/zerolog"
)

// IsService is false outside Windows.
func IsService() (bool, error) { return false, nil }

// RunService fails outside Windows.
func RunService(Setup) error { return ErrNotWindows }

// InstallService fails outside Windows.
func InstallService(InstallOptions) error { return ErrNotWindows }

// UninstallService fails outside Windows.
func UninstallService(string) error { return ErrNotWindows }

// StartService fails outside Windows.
func StartService(string, time.Duration) error { return ErrNotWindows }

// StopService fails outside Windows.
func StopService(string, time.Duration, func(Progress)) error { return ErrNotWindows }

// EventLog exists only on Windows.
type EventLog struct{ zerolog.LevelWriter }

// OpenEventLog fails outside Windows.
func OpenEventLog(string) (*EventLog, error) { return nil, ErrNotWindows }

// Close does nothing.
func (*EventLog) Close() error { return nil }
