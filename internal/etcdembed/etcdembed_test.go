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

	bolt "go.etcd.io/bbolt"
	clientv3 "go.etcd.io/etcd/client/v3"

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

// A database that is not bbolt's is an error that names the file, not etcd's panic in a
// goroutine (which would take the control plane down with no word of the file).
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
	if err == nil || !strings.Contains(err.Error(), db) || !strings.Contains(err.Error(), "is damaged") {
		t.Fatalf("start on a damaged database: %v; want an error naming %s", err, db)
	}
}

// One damaged page of a real database (the root of etcd's key bucket) is found by bbolt's
// consistency check, run in a child process, and reported naming the file; before, the
// read-only open passed it and etcd panicked reading it, with no word from Tether (issue 24,
// finding 10).
func TestDamagedPageIsAnError(t *testing.T) {
	dir := t.TempDir()
	s, err := start(t, dir, etcdtest.FreePort(t))
	if err != nil {
		t.Fatal(err)
	}
	cli, err := clientv3.New(clientv3.Config{Endpoints: s.Endpoints, DialTimeout: 5 * time.Second})
	if err != nil {
		t.Fatal(err)
	}
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	for i := range 300 {
		if _, err := cli.Put(ctx, fmt.Sprintf("/tether/instances/app/%03d", i), strings.Repeat("v", 100)); err != nil {
			t.Fatal(err)
		}
	}
	cli.Close()
	s.Close()

	path := filepath.Join(dir, "member", "snap", "db")
	corruptPage(t, path, "key")
	began := time.Now()
	_, err = start(t, dir, etcdtest.FreePort(t))
	if err == nil || !strings.Contains(err.Error(), path) || !strings.Contains(err.Error(), "is damaged") {
		t.Fatalf("start on a database with a damaged page: %v; want an error naming %s", err, path)
	}
	t.Logf("%v (after %s)", err, time.Since(began).Round(time.Millisecond))
}

// corruptPage overwrites the page type of bucket's root page in the bbolt file at path.
func corruptPage(t *testing.T, path, bucket string) {
	t.Helper()
	db, err := bolt.Open(path, 0o600, &bolt.Options{ReadOnly: true, Timeout: time.Second})
	if err != nil {
		t.Fatal(err)
	}
	var root uint64
	if err := db.View(func(tx *bolt.Tx) error {
		b := tx.Bucket([]byte(bucket))
		if b == nil {
			return fmt.Errorf("no bucket %q", bucket)
		}
		root = uint64(b.Root())
		return nil
	}); err != nil {
		t.Fatal(err)
	}
	pageSize := db.Info().PageSize
	db.Close()
	if root < 2 {
		t.Fatalf("bucket %q is inline (root page %d): write more", bucket, root)
	}
	f, err := os.OpenFile(path, os.O_RDWR, 0)
	if err != nil {
		t.Fatal(err)
	}
	defer f.Close()
	// A page starts with its id (8 bytes), then its flags: 0xffff is no page type.
	if _, err := f.WriteAt([]byte{0xff, 0xff}, int64(root)*int64(pageSize)+8); err != nil {
		t.Fatal(err)
	}
}

// A second server on a data directory in use says so at once, naming the directory; etcd
// alone would wait for its files' locks without end.
func TestDataDirectoryInUseIsAnError(t *testing.T) {
	dir := t.TempDir()
	if _, err := start(t, dir, etcdtest.FreePort(t)); err != nil {
		t.Fatalf("first server: %v", err)
	}
	began := time.Now()
	_, err := start(t, dir, etcdtest.FreePort(t))
	if err == nil || !strings.Contains(err.Error(), "in use by another process") || !strings.Contains(err.Error(), dir) {
		t.Fatalf("second server on the same directory: %v; want it in use by another process", err)
	}
	t.Logf("refused after %s", time.Since(began).Round(time.Millisecond))
}

// Two starts at once on a fresh directory: one serves, the other fails at once naming the
// directory; before, both got past the database check (no database yet) and the second hung
// on etcd's locks or exited through etcd's fatal log (issue 24, finding 10).
func TestTwoStartsAtOnceOnAFreshDirectory(t *testing.T) {
	for range 3 {
		dir := t.TempDir()
		errs := make(chan error, 2)
		for range 2 {
			go func() {
				_, err := start(t, dir, etcdtest.FreePort(t))
				errs <- err
			}()
		}
		var failed []error
		for range 2 {
			select {
			case err := <-errs:
				if err != nil {
					failed = append(failed, err)
				}
			case <-time.After(60 * time.Second):
				t.Fatal("a start did not return within 60 s")
			}
		}
		if len(failed) != 1 || !strings.Contains(failed[0].Error(), "in use by another process") || !strings.Contains(failed[0].Error(), dir) {
			t.Fatalf("two starts at once: errors %v; want one, saying %s is in use", failed, dir)
		}
	}
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
