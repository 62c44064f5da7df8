package registry_test

import (
	"context"
	"errors"
	"maps"
	"strconv"
	"sync/atomic"
	"testing"
	"time"

	"github.com/tetherlb/tether/internal/etcdtest"
	"github.com/tetherlb/tether/registry"
	"go.etcd.io/etcd/api/v3/v3rpc/rpctypes"
	clientv3 "go.etcd.io/etcd/client/v3"
)

const followPfx = "/tether/follow/"

// follow runs Follow of followPfx with numbers as entries until the test ends; each map it
// hands set arrives on sets, with the calls of ok made before it.
type follow struct {
	sets chan map[string]int
	oks  atomic.Int64
	done chan error
	// onSet, when set, runs in set before the map is sent (in Follow's goroutine).
	onSet func(n int)
	nSets int
}

func startFollow(t *testing.T, cli *clientv3.Client, f *follow) (cancel func()) {
	t.Helper()
	ctx, cancel := context.WithCancel(context.Background())
	f.sets, f.done = make(chan map[string]int, 100), make(chan error, 1)
	decode := func(_ string, v []byte) (int, bool) {
		n, err := strconv.Atoi(string(v))
		return n, err == nil
	}
	set := func(m map[string]int) {
		f.nSets++
		if int64(f.nSets) > f.oks.Load() {
			t.Errorf("set %d before ok was called (%d calls)", f.nSets, f.oks.Load())
		}
		if f.onSet != nil {
			f.onSet(f.nSets)
		}
		f.sets <- m
	}
	go func() { f.done <- registry.Follow(ctx, cli, followPfx, decode, set, func() { f.oks.Add(1) }) }()
	t.Cleanup(func() {
		cancel()
		select {
		case err := <-f.done:
			if err == nil {
				t.Error("Follow returned nil")
			}
		case <-time.After(waitTimeout):
			t.Error("Follow did not return after its context ended")
		}
	})
	return cancel
}

func (f *follow) next(t *testing.T, want map[string]int) {
	t.Helper()
	select {
	case got := <-f.sets:
		if !maps.Equal(got, want) {
			t.Fatalf("set %v, want %v", got, want)
		}
	case err := <-f.done:
		f.done <- err // for the cleanup
		t.Fatalf("Follow returned %v waiting for %v", err, want)
	case <-time.After(waitTimeout):
		t.Fatalf("no set of %v", want)
	}
}

func TestFollowListsThenWatches(t *testing.T) {
	srv := etcdtest.Start(t)
	cli := srv.Client(t)
	mustPut(t, cli, followPfx+"a", "1")
	mustPut(t, cli, followPfx+"b", "not a number")
	mustPut(t, cli, "/tether/followers", "9") // past the prefix's slash: not under it
	rev := mustPut(t, cli, followPfx+"c", "3")
	// History up to the listing's revision compacted: the watch starts after it, not in it.
	ctx, cancelCompact := context.WithTimeout(context.Background(), waitTimeout)
	defer cancelCompact()
	if _, err := cli.Compact(ctx, rev, clientv3.WithCompactPhysical()); err != nil {
		t.Fatalf("compact: %v", err)
	}

	f := &follow{}
	cancel := startFollow(t, cli, f)
	f.next(t, map[string]int{"a": 1, "c": 3})
	mustPut(t, cli, followPfx+"b", "2")
	f.next(t, map[string]int{"a": 1, "b": 2, "c": 3})
	mustPut(t, cli, followPfx+"a", "bad") // a refused value replaces a's entry
	f.next(t, map[string]int{"b": 2, "c": 3})
	mustDelete(t, cli, followPfx+"c")
	f.next(t, map[string]int{"b": 2})
	mustPut(t, cli, followPfx+"a", "4")
	f.next(t, map[string]int{"a": 4, "b": 2})
	if n := f.oks.Load(); n != 5 {
		t.Errorf("ok called %d times for a listing and 4 watch responses", n)
	}

	cancel()
	select {
	case err := <-f.done:
		if err == nil {
			t.Error("Follow returned nil after its context ended")
		}
		f.done <- err
	case <-time.After(waitTimeout):
		t.Fatal("Follow did not return after its context ended")
	}

	// An ended context fails the listing: nothing is handed on.
	ended, end := context.WithCancel(context.Background())
	end()
	err := registry.Follow(ended, cli, followPfx, func(string, []byte) (int, bool) { return 0, true },
		func(map[string]int) { t.Error("set after a failed listing") }, func() { t.Error("ok after a failed listing") })
	if err == nil {
		t.Error("Follow with an ended context returned nil")
	}
}

// A watch that cannot start at the listing's revision (compacted) ends Follow with the
// error; the caller's next Follow lists again and sees what the watch missed.
func TestFollowRelistsAfterCompaction(t *testing.T) {
	srv := etcdtest.Start(t)
	cli := srv.Client(t)
	mustPut(t, cli, followPfx+"a", "1")

	f := &follow{onSet: func(n int) {
		if n != 1 {
			return
		}
		// Between the listing and the watch: the watch's start revision goes.
		mustDelete(t, cli, followPfx+"a")
		rev := mustPut(t, cli, followPfx+"b", "2")
		ctx, cancel := context.WithTimeout(context.Background(), waitTimeout)
		defer cancel()
		if _, err := cli.Compact(ctx, rev, clientv3.WithCompactPhysical()); err != nil {
			t.Errorf("compact: %v", err)
		}
	}}
	startFollow(t, cli, f)
	f.next(t, map[string]int{"a": 1})
	select {
	case err := <-f.done:
		if !errors.Is(err, rpctypes.ErrCompacted) {
			t.Fatalf("Follow returned %v, want the compaction", err)
		}
		f.done <- err
	case m := <-f.sets:
		t.Fatalf("set %v from a compacted watch", m)
	case <-time.After(waitTimeout):
		t.Fatal("Follow went on past a compacted watch")
	}

	g := &follow{}
	startFollow(t, cli, g)
	g.next(t, map[string]int{"b": 2})
}
