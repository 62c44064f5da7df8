package registry

import (
	"bytes"
	"strings"
	"testing"

	"github.com/rs/zerolog"
	"go.etcd.io/etcd/api/v3/mvccpb"
	clientv3 "go.etcd.io/etcd/client/v3"
)

// TestRejectedKeyIsLoggedWhenItAppearsAndClears: the same bad value written again and again
// (an agent rewrites its instance every few seconds) or seen again by a re-list is logged
// once; a different error is logged again; the key's recovery is logged.
func TestRejectedKeyIsLoggedWhenItAppearsAndClears(t *testing.T) {
	var buf bytes.Buffer
	var rej rejects
	opts := buildOptions{prefix: "/tether", reject: rej.hook, log: zerolog.New(&buf), allowLoopback: true}
	const key = "/tether/instances/app/a1"
	bad, worse := `{"id":"a1","address":"nowhere","port":5000,"state":"available"}`, `{"id":"a1","port":"x"}`
	apply := func(st *State, ev *clientv3.Event) *State {
		t.Helper()
		next, _, err := applyEvents(opts, st, []*clientv3.Event{ev})
		if err != nil {
			t.Fatal(err)
		}
		return next
	}
	relist := func(rev int64, kvs []*mvccpb.KeyValue, prev *State) *State {
		t.Helper()
		st, err := rebuildState(opts, rev, kvs, prev)
		if err != nil {
			t.Fatal(err)
		}
		return st
	}
	count := func(msg string) int { return strings.Count(buf.String(), msg) }

	st := BuildState("/tether", 1, nil, nil)
	for rev := int64(2); rev < 6; rev++ {
		st = apply(st, put(key, bad, rev))
	}
	if n := count("registry value rejected"); n != 1 || len(rej) != 4 {
		t.Fatalf("4 writes of one bad value: %d rejection logs (want 1), %d hook calls (want 4, one per write for the counter):\n%s", n, len(rej), buf.String())
	}
	st = relist(6, []*mvccpb.KeyValue{{Key: []byte(key), Value: []byte(bad), ModRevision: 5, CreateRevision: 2}}, st)
	if n := count("registry value rejected"); n != 1 {
		t.Errorf("a re-list of the same bad value logged it again (%d logs)", n)
	}
	st = apply(st, put(key, worse, 7))
	if n := count("registry value rejected"); n != 2 {
		t.Errorf("a different error for the key: %d rejection logs, want 2", n)
	}
	if count("no longer rejected") != 0 {
		t.Fatal("a cleared rejection was logged while the key is still rejected")
	}
	st = apply(st, put(key, instJSON("a1", "available", 1), 8))
	if n := count("registry key no longer rejected"); len(st.Rejected) != 0 || n != 1 {
		t.Errorf("a good value: rejected %v, and the recovery logged %d times, want once:\n%s", st.Rejected, n, buf.String())
	}
	st = apply(st, put(key, bad, 9))
	relist(10, nil, st) // the key deleted while the watch was down
	if n := count("registry key no longer rejected"); n != 2 {
		t.Errorf("a rejected key gone at a re-list: the recovery logged %d times in all, want 2", n)
	}
}
