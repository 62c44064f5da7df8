package translate

import (
	"encoding/json"
	"maps"
	"os"
	"slices"
	"testing"

	"github.com/envoyproxy/go-control-plane/pkg/cache/types"
	cachev3 "github.com/envoyproxy/go-control-plane/pkg/cache/v3"
	resourcev3 "github.com/envoyproxy/go-control-plane/pkg/resource/v3"
	"go.etcd.io/etcd/api/v3/mvccpb"
	"google.golang.org/protobuf/encoding/protojson"
	"google.golang.org/protobuf/proto"
	"google.golang.org/protobuf/reflect/protoreflect"
	"google.golang.org/protobuf/types/known/anypb"
	"sigs.k8s.io/yaml"

	"github.com/tetherlb/tether/registry"
)

// loadState reads an etcd key→value map, as agents and operators write it, into a State
// through registry.BuildState, as the control plane reads etcd; a key it rejects fails the
// test.
func loadState(t testing.TB, path string) *registry.State {
	t.Helper()
	raw, err := os.ReadFile(path)
	if err != nil {
		t.Fatalf("read %s: %v", path, err)
	}
	var kv map[string]json.RawMessage
	if err := json.Unmarshal(raw, &kv); err != nil {
		t.Fatalf("parse %s: %v", path, err)
	}
	var kvs []*mvccpb.KeyValue
	for _, key := range slices.Sorted(maps.Keys(kv)) {
		kvs = append(kvs, &mvccpb.KeyValue{Key: []byte(key), Value: kv[key], CreateRevision: 1, ModRevision: 1, Version: 1})
	}
	return registry.BuildState(registry.DefaultPrefix, 1, kvs, func(key string, err error) {
		t.Fatalf("%s: %s: %v", path, key, err)
	})
}

// checkResources validates every resource, including the typed configs packed in Any, and
// requires a consistent go-control-plane snapshot.
func checkResources(t testing.TB, res *Resources) {
	t.Helper()
	for _, m := range allMessages(res) {
		validateDeep(t, m)
	}
	snap, err := cachev3.NewSnapshot("1", map[resourcev3.Type][]types.Resource{
		resourcev3.ListenerType: as[types.Resource](res.Listeners),
		resourcev3.RouteType:    as[types.Resource](res.Routes),
		resourcev3.ClusterType:  as[types.Resource](res.Clusters),
		resourcev3.EndpointType: as[types.Resource](res.Endpoints),
	})
	if err != nil {
		t.Fatalf("NewSnapshot: %v", err)
	}
	if err := snap.Consistent(); err != nil {
		t.Errorf("snapshot not consistent: %v", err)
	}
}

func allMessages(res *Resources) []proto.Message {
	return slices.Concat(as[proto.Message](res.Listeners), as[proto.Message](res.Routes), as[proto.Message](res.Clusters), as[proto.Message](res.Endpoints))
}

func validateDeep(t testing.TB, m proto.Message) {
	t.Helper()
	if v, ok := m.(interface{ ValidateAll() error }); ok {
		if err := v.ValidateAll(); err != nil {
			t.Errorf("%s: %v", m.ProtoReflect().Descriptor().FullName(), err)
		}
	}
	walkAnys(t, m.ProtoReflect())
}

// walkAnys unpacks and validates every Any below m.
func walkAnys(t testing.TB, m protoreflect.Message) {
	t.Helper()
	if a, ok := m.Interface().(*anypb.Any); ok {
		inner, err := a.UnmarshalNew()
		if err != nil {
			t.Errorf("unpack %s: %v", a.GetTypeUrl(), err)
			return
		}
		validateDeep(t, inner)
		return
	}
	m.Range(func(fd protoreflect.FieldDescriptor, v protoreflect.Value) bool {
		switch {
		case fd.IsList():
			if fd.Kind() == protoreflect.MessageKind {
				for i := 0; i < v.List().Len(); i++ {
					walkAnys(t, v.List().Get(i).Message())
				}
			}
		case fd.IsMap():
			if fd.MapValue().Kind() == protoreflect.MessageKind {
				v.Map().Range(func(_ protoreflect.MapKey, mv protoreflect.Value) bool {
					walkAnys(t, mv.Message())
					return true
				})
			}
		case fd.Kind() == protoreflect.MessageKind:
			walkAnys(t, v.Message())
		}
		return true
	})
}

// renderYAML renders resources as stable YAML: protojson (proto field names) of each
// resource, keys sorted by the JSON→YAML conversion.
func renderYAML(t testing.TB, res *Resources) []byte {
	t.Helper()
	js := func(ms []proto.Message) []json.RawMessage {
		out := []json.RawMessage{}
		for _, m := range ms {
			b, err := protojson.MarshalOptions{UseProtoNames: true}.Marshal(m)
			if err != nil {
				t.Fatalf("protojson: %v", err)
			}
			out = append(out, b)
		}
		return out
	}
	doc := map[string]any{
		"listeners": js(as[proto.Message](res.Listeners)),
		"routes":    js(as[proto.Message](res.Routes)),
		"clusters":  js(as[proto.Message](res.Clusters)),
		"endpoints": js(as[proto.Message](res.Endpoints)),
		"problems":  res.Problems,
	}
	if res.Problems == nil {
		doc["problems"] = []Problem{}
	}
	j, err := json.Marshal(doc)
	if err != nil {
		t.Fatalf("json: %v", err)
	}
	y, err := yaml.JSONToYAML(j)
	if err != nil {
		t.Fatalf("yaml: %v", err)
	}
	return y
}

// as converts a slice of resources to a slice of an interface they implement.
func as[O, I any](in []I) []O {
	out := make([]O, len(in))
	for i, m := range in {
		out[i] = any(m).(O)
	}
	return out
}
