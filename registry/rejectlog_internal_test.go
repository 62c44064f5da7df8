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
	log := zerolog.New(&buf)
	const key = "/tether/instances/app/a1"
	bad, worse := `{"id":"a1","address":"nowhere","port":5000,"state":"available"}`, `{"id":"a1","port":"x"}`
	var rej rejects
	st := BuildState("/tether", 1, nil, nil)
	for rev := int64(2); rev < 6; rev++ {
		st, _ = applyEvents("/tether", st, []*clientv3.Event{put(key, bad, rev)}, rej.hook, log)
	}
	if n := strings.Count(buf.String(), "registry value rejected"); n != 1 || len(rej) != 4 {
		t.Fatalf("4 writes of one bad value: %d rejection logs (want 1), %d hook calls (want 4, one per write for the counter):\n%s", n, len(rej), buf.String())
	}
	st = rebuildState("/tether", 6, []*mvccpb.KeyValue{{Key: []byte(key), Value: []byte(bad), ModRevision: 5}}, st, nil, log)
	if n := strings.Count(buf.String(), "registry value rejected"); n != 1 {
		t.Errorf("a re-list of the same bad value logged it again (%d logs)", n)
	}
	st, _ = applyEvents("/tether", st, []*clientv3.Event{put(key, worse, 7)}, nil, log)
	if n := strings.Count(buf.String(), "registry value rejected"); n != 2 {
		t.Errorf("a different error for the key: %d rejection logs, want 2", n)
	}
	if strings.Contains(buf.String(), "no longer rejected") {
		t.Fatal("a cleared rejection was logged while the key is still rejected")
	}
	st, _ = applyEvents("/tether", st, []*clientv3.Event{put(key, instJSON("a1", "available", 1), 8)}, nil, log)
	if len(st.Rejected) != 0 || strings.Count(buf.String(), "registry key no longer rejected") != 1 {
		t.Errorf("a good value: rejected %v, and the recovery logged %d times, want once:\n%s", st.Rejected, strings.Count(buf.String(), "no longer rejected"), buf.String())
	}
	st, _ = applyEvents("/tether", st, []*clientv3.Event{put(key, bad, 9)}, nil, log)
	rebuildState("/tether", 10, nil, st, nil, log) // the key deleted while the watch was down
	if n := strings.Count(buf.String(), "registry key no longer rejected"); n != 2 {
		t.Errorf("a rejected key gone at a re-list: the recovery logged %d times in all, want 2", n)
	}
}
