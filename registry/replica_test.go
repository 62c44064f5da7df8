package registry_test

import (
	"strings"
	"testing"

	"go.etcd.io/etcd/api/v3/mvccpb"

	"github.com/tetherlb/tether/registry"
)

// TestReplicaReportsAreNotRegistryContent: the replicas' reports live under the prefix but
// are no part of the State: not served, not rejected, whatever they hold (a replica's write
// must never start a publication). A key under replicas/ with a bad name is rejected alone.
func TestReplicaReportsAreNotRegistryContent(t *testing.T) {
	kvs := []*mvccpb.KeyValue{
		{Key: []byte("/tether/replicas/gw-1-18000"), Value: []byte(`{"held":12,"wants":15,"host":"gw-1"}`), ModRevision: 3},
		{Key: []byte("/tether/replicas/gw-2-18000"), Value: []byte(`not json`), ModRevision: 4},
		{Key: []byte("/tether/replicas/bad name"), Value: []byte(`{}`), ModRevision: 5},
	}
	var rejected []string
	st := registry.BuildState("/tether", 5, kvs, func(key string, _ error) { rejected = append(rejected, key) })
	if len(st.Services) != 0 {
		t.Errorf("services %v from replica reports, want none", st.Services)
	}
	if len(rejected) != 1 || rejected[0] != "/tether/replicas/bad name" {
		t.Errorf("rejected %v, want only the key with a bad name", rejected)
	}

	r, err := registry.DecodeReplica("gw-1-18000", kvs[0].Value)
	if err != nil || r.Held != 12 || r.Wants != 15 || r.Host != "gw-1" {
		t.Errorf("DecodeReplica = %+v, %v", r, err)
	}
	for _, bad := range []struct{ name, value, want string }{
		{"gw-1", `{"held":-1}`, "held"},
		{"gw-1", `{"wants":-3}`, "wants"},
		{"gw-1", `{"host":"` + strings.Repeat("h", 300) + `"}`, "host"},
		{"gw-1", `[1]`, "JSON object"},
		{"", `{}`, "replica name"},
	} {
		if _, err := registry.DecodeReplica(bad.name, []byte(bad.value)); err == nil || !strings.Contains(err.Error(), bad.want) {
			t.Errorf("DecodeReplica(%q, %s) = %v, want an error about %s", bad.name, bad.value, err, bad.want)
		}
	}
}

// Each bound of a report accepts its edge: no revision yet (0), a host name of 256 bytes.
func TestDecodeReplicaBoundsAreExact(t *testing.T) {
	for _, ok := range []string{`{"held":0,"wants":0}`, `{"host":"` + strings.Repeat("h", 256) + `"}`} {
		if _, err := registry.DecodeReplica("gw-1", []byte(ok)); err != nil {
			t.Errorf("DecodeReplica(%.40s) = %v, want it accepted", ok, err)
		}
	}
	if _, err := registry.DecodeReplica("gw-1", []byte(`{"host":"`+strings.Repeat("h", 257)+`"}`)); err == nil {
		t.Error("a host name of 257 bytes accepted")
	}
}
