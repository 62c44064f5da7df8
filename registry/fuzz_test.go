package registry_test

import (
	"encoding/json"
	"reflect"
	"slices"
	"strings"
	"testing"

	"github.com/tetherlb/tether/controlplane/translate"
	"github.com/tetherlb/tether/registry"
)

// The seed corpus is in testdata/fuzz; f.Add keeps the docs/design.md examples in it too.
// FuzzDecodeServiceConfig also translates every accepted configuration: a value the registry
// accepts must never be left out by the translation.

func FuzzDecodeInstance(f *testing.F) {
	f.Add([]byte(exampleInstance))
	f.Fuzz(func(t *testing.T, raw []byte) {
		inst, err := registry.DecodeInstance("app", "app-7f3c", raw)
		if err != nil {
			return
		}
		b, err := json.Marshal(inst)
		if err != nil {
			t.Fatalf("accepted value does not encode: %v", err)
		}
		again, err := registry.DecodeInstance("app", "app-7f3c", b)
		if err != nil {
			t.Fatalf("re-encoded value %s is rejected: %v", b, err)
		}
		if !reflect.DeepEqual(inst, again) {
			t.Fatalf("round trip changed the value:\n%#v\n%#v", inst, again)
		}
	})
}

func FuzzDecodeServiceConfig(f *testing.F) {
	f.Add([]byte(exampleService))
	f.Fuzz(func(t *testing.T, raw []byte) {
		// A rejected value decodes field by field: what it serves (identity valid) validates.
		if p := registry.DecodeServiceConfigPartial("app", raw); p.Identity == nil {
			if err := p.Config.Validate(); err != nil {
				t.Fatalf("partial configuration of %s is served but invalid: %v", raw, err)
			}
		}
		cfg, err := registry.DecodeServiceConfig("app", raw)
		if err != nil {
			return
		}
		b, err := json.Marshal(cfg)
		if err != nil {
			t.Fatalf("accepted value does not encode: %v", err)
		}
		again, err := registry.DecodeServiceConfig("app", b)
		if err != nil {
			t.Fatalf("re-encoded value %s is rejected: %v", b, err)
		}
		if !reflect.DeepEqual(cfg, again) {
			t.Fatalf("round trip changed the value:\n%#v\n%#v", cfg, again)
		}
		// What the registry accepts, the translation serves: no "service left out".
		svc := &registry.Service{Name: "app", Config: cfg, Configured: true, Instances: map[string]registry.Instance{
			"a1": {ID: "a1", Address: "127.0.0.1", Port: 5001, State: registry.StateAvailable},
			"a2": {ID: "a2", Address: "127.0.0.1", Port: 5002, State: registry.StateFull},
		}}
		sr := translate.TranslateService(svc, translate.Options{})
		// A domain's port is dropped and said (issue 24 #12): advice, not a service left out.
		sr.Problems = slices.DeleteFunc(sr.Problems, func(p translate.Problem) bool { return strings.Contains(p.Message, "is ignored (Envoy matches") })
		if sr.Cluster == nil || len(sr.Problems) > 0 {
			t.Fatalf("accepted configuration %s does not translate: %v", raw, sr.Problems)
		}
	})
}

func FuzzDecodeDrain(f *testing.F) {
	f.Add([]byte(`{"labels":{"version":"1.4.1"},"reason":"deploy","createdAt":"2026-11-22T15:40:00Z"}`))
	f.Add([]byte(`{"instance":"app-7f3c"}`))
	f.Fuzz(func(t *testing.T, raw []byte) {
		d, err := registry.DecodeDrain("app", "version=1.4.1", raw)
		if err != nil {
			return
		}
		b, err := json.Marshal(d)
		if err != nil {
			t.Fatalf("accepted value does not encode: %v", err)
		}
		again, err := registry.DecodeDrain("app", "version=1.4.1", b)
		if err != nil {
			t.Fatalf("re-encoded value %s is rejected: %v", b, err)
		}
		if !reflect.DeepEqual(d, again) {
			t.Fatalf("round trip changed the value:\n%#v\n%#v", d, again)
		}
	})
}
