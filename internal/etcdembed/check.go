package etcdembed

import (
	"bytes"
	"context"
	"errors"
	"fmt"
	"io"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"time"

	bolt "go.etcd.io/bbolt"
	bolterrors "go.etcd.io/bbolt/errors"
)

// checkEnv names the database that a child process of Start checks (see init).
const checkEnv = "TETHER_ETCDEMBED_CHECK_DB"

// The child's exit codes; any other (2 for a panic, a signal) means the check itself died.
const (
	checkOK      = 0
	checkLocked  = 10
	checkDamaged = 11
)

// checkTimeout bounds the child's check; a registry's database (an hour of history) is tens
// of megabytes, checked in about a second.
const checkTimeout = 5 * time.Minute

// A process started with checkEnv set is Start's child: it checks the database, says what it
// found with its exit code and stderr, and exits before main or a test binary's TestMain run.
// Every binary that links this package can so be its own checker, tests included, without
// wiring in each main.
func init() {
	if path := os.Getenv(checkEnv); path != "" {
		os.Exit(checkChild(path, os.Stderr))
	}
}

// checkChild opens the database read-only and runs bbolt's consistency check. bbolt walks a
// read-only database's pages in goroutines that panic on a damaged page (DB.freepages, etcd
// keeps no free list on Linux): only a process of its own can live through that, and its
// panic is the parent's report.
func checkChild(path string, stderr io.Writer) int {
	db, err := bolt.Open(path, 0o600, &bolt.Options{ReadOnly: true, Timeout: 2 * time.Second})
	if errors.Is(err, bolterrors.ErrTimeout) {
		return checkLocked
	}
	if err != nil {
		fmt.Fprintln(stderr, err)
		return checkDamaged
	}
	defer db.Close()
	var found []string
	err = db.View(func(tx *bolt.Tx) error {
		for err := range tx.Check() {
			if len(found) < 5 {
				found = append(found, err.Error())
			}
		}
		return nil
	})
	if err != nil {
		found = append(found, err.Error())
	}
	if len(found) > 0 {
		fmt.Fprintln(stderr, strings.Join(found, "; "))
		return checkDamaged
	}
	return checkOK
}

// checkDatabase checks etcd's database before etcd opens it, in a child process (see
// checkChild). etcd opens it in a goroutine that panics on any error (storage/backend.newBackend),
// and reads a damaged page with a panic too: checked first, a damaged file is an error that
// names it and says what to do.
func checkDatabase(ctx context.Context, dir string) error {
	path := filepath.Join(dir, "member", "snap", "db")
	if info, err := os.Stat(path); err != nil || info.Size() == 0 {
		return nil // none yet, or one that etcd initializes: etcd reports any other trouble
	}
	exe, err := os.Executable()
	if err != nil {
		return fmt.Errorf("embedded etcd: check its database %s: find this program to run the check: %w", path, err)
	}
	ctx, cancel := context.WithTimeout(ctx, checkTimeout)
	defer cancel()
	cmd := exec.CommandContext(ctx, exe) //nolint:gosec // G204: this very program, in its check mode
	cmd.Env = append(os.Environ(), checkEnv+"="+path)
	var stderr bytes.Buffer
	cmd.Stderr = &stderr
	err = cmd.Run()
	var exit *exec.ExitError
	switch {
	case err == nil:
		return nil
	case ctx.Err() != nil:
		return fmt.Errorf("embedded etcd: check its database %s: %w", path, ctx.Err())
	case !errors.As(err, &exit):
		return fmt.Errorf("embedded etcd: check its database %s: %w", path, err)
	case exit.ExitCode() == checkLocked:
		return fmt.Errorf("embedded etcd: its database %s is locked by another process (an etcd on this data directory?)", path)
	}
	return fmt.Errorf("embedded etcd: its database %s is damaged: %s (restore the data directory from a backup, or move it aside to start with an empty registry)",
		path, firstLine(stderr.String(), exit))
}

// firstLine is the child's report: its first line (a panic's message), or how it ended.
func firstLine(s string, exit *exec.ExitError) string {
	s, _, _ = strings.Cut(strings.TrimSpace(s), "\n")
	if s == "" {
		return exit.String()
	}
	return strings.TrimPrefix(s, "panic: ")
}

// lockName is the advisory lock file in the data directory.
const lockName = "tether.lock"

// errLocked says that another process holds the data directory's lock.
var errLocked = errors.New("locked")

// lockDir takes the data directory's advisory lock (flock on Unix, LockFileEx on Windows),
// creating the directory if need be. Two starts at once on one directory would otherwise both
// get past the database check, and the second wait without end for etcd's own locks or exit
// through etcd's fatal log. The lock ends with the process, so a crash leaves nothing to
// clean. (etcd's fileutil.TryLockFile is not used: on Windows it takes a held lock for a
// granted one.)
func lockDir(dir string) (*os.File, error) {
	if err := os.MkdirAll(dir, 0o700); err != nil {
		return nil, fmt.Errorf("embedded etcd: create data directory: %w", err)
	}
	f, err := os.OpenFile(filepath.Join(dir, lockName), os.O_RDWR|os.O_CREATE, 0o600)
	if err != nil {
		return nil, fmt.Errorf("embedded etcd: lock data directory %s: %w", dir, err)
	}
	if err := tryLock(f); err != nil {
		f.Close()
		if errors.Is(err, errLocked) {
			return nil, fmt.Errorf("embedded etcd: data directory %s is in use by another process (another control plane with the same --data-dir?)", dir)
		}
		return nil, fmt.Errorf("embedded etcd: lock data directory %s: %w", dir, err)
	}
	return f, nil
}
