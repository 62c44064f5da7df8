package registry_test

import (
	"encoding/json"
	"reflect"
	"testing"

	"github.com/tetherlb/tether/registry"
)

// The seed corpus is in testdata/fuzz; f.Add keeps the DESIGN.md examples in it too.

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
