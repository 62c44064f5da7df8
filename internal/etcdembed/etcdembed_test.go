package etcdembed_test

import (
	"context"
	"errors"
	"fmt"
	"net"
	"os"
	"path/filepath"
	"strings"
	"syscall"
	"testing"
	"time"

	"github.com/tetherlb/tether/internal/etcdembed"
	"github.com/tetherlb/tether/internal/etcdtest"
)

func start(t *testing.T, dir string, clientPort int) (*etcdembed.Server, error) {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	s, err := etcdembed.Start(ctx, etcdembed.Config{
		Dir:       dir,
		ClientURL: fmt.Sprintf("http://127.0.0.1:%d", clientPort),
		PeerURL:   fmt.Sprintf("http://127.0.0.1:%d", etcdtest.FreePort(t)),
		TickMs:    10, ElectionMs: 50,
	})
	if s != nil {
		t.Cleanup(s.Close)
	}
	return s, err
}

// A damaged database is an error that names the file, not etcd's panic in a goroutine (which
// would take the control plane down with no word of the file).
func TestDamagedDatabaseIsAnError(t *testing.T) {
	dir := t.TempDir()
	if err := os.MkdirAll(filepath.Join(dir, "member", "snap"), 0o700); err != nil {
		t.Fatal(err)
	}
	db := filepath.Join(dir, "member", "snap", "db")
	if err := os.WriteFile(db, []byte(strings.Repeat("not a bbolt file ", 1000)), 0o600); err != nil {
		t.Fatal(err)
	}
	_, err := start(t, dir, etcdtest.FreePort(t))
	if err == nil || !strings.Contains(err.Error(), db) || !strings.Contains(err.Error(), "cannot be opened") {
		t.Fatalf("start on a damaged database: %v; want an error naming %s", err, db)
	}
}

// A second server on a data directory in use says so within seconds; etcd alone would wait
// for the file's lock without end.
func TestDataDirectoryInUseIsAnError(t *testing.T) {
	dir := t.TempDir()
	if _, err := start(t, dir, etcdtest.FreePort(t)); err != nil {
		t.Fatalf("first server: %v", err)
	}
	began := time.Now()
	_, err := start(t, dir, etcdtest.FreePort(t))
	if err == nil || !strings.Contains(err.Error(), "locked by another process") {
		t.Fatalf("second server on the same directory: %v; want it locked by another process", err)
	}
	t.Logf("refused after %s", time.Since(began).Round(time.Millisecond))
}

// A taken client port is an error that errors.Is recognizes, so that callers can tell it from
// other failures (the control plane suggests --etcd-endpoints only then).
func TestTakenPortIsAddrInUse(t *testing.T) {
	l, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	defer l.Close()
	_, err = start(t, t.TempDir(), l.Addr().(*net.TCPAddr).Port)
	if !errors.Is(err, syscall.EADDRINUSE) {
		t.Fatalf("start on a taken port: %v; want EADDRINUSE", err)
	}
}
