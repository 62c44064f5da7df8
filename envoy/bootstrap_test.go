package envoy_test

import (
	"context"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"testing"
	"time"

	bootstrapv3 "github.com/envoyproxy/go-control-plane/envoy/config/bootstrap/v3"
	clusterv3 "github.com/envoyproxy/go-control-plane/envoy/config/cluster/v3"
	corev3 "github.com/envoyproxy/go-control-plane/envoy/config/core/v3"
	downstreamv3 "github.com/envoyproxy/go-control-plane/envoy/extensions/resource_monitors/downstream_connections/v3"
	httpv3 "github.com/envoyproxy/go-control-plane/envoy/extensions/upstreams/http/v3"
	"google.golang.org/protobuf/encoding/protojson"
	"google.golang.org/protobuf/reflect/protoreflect"
	"google.golang.org/protobuf/types/descriptorpb"
	"google.golang.org/protobuf/types/known/anypb"
	"sigs.k8s.io/yaml"

	// Every type the bootstraps name in a typed_config must be linked in (and
	// so registered) for protojson to resolve its Any.
	_ "github.com/envoyproxy/go-control-plane/envoy/extensions/resource_monitors/fixed_heap/v3"
)

// parse reads one bootstrap as Envoy would: YAML to JSON, then protojson
// that rejects unknown fields, then the protoc-gen-validate rules of the
// bootstrap and of every message packed in an Any.
func parse(y []byte) (*bootstrapv3.Bootstrap, error) {
	j, err := yaml.YAMLToJSON(y)
	if err != nil {
		return nil, fmt.Errorf("YAML to JSON: %w", err)
	}
	var b bootstrapv3.Bootstrap
	if err := (protojson.UnmarshalOptions{}).Unmarshal(j, &b); err != nil {
		return nil, fmt.Errorf("not a valid envoy.config.bootstrap.v3.Bootstrap: %w", err)
	}
	if err := b.ValidateAll(); err != nil {
		return nil, fmt.Errorf("validation: %w", err)
	}
	if err := walk(b.ProtoReflect(), "bootstrap"); err != nil {
		return nil, err
	}
	return &b, nil
}

func load(t *testing.T, path string) *bootstrapv3.Bootstrap {
	t.Helper()
	y, err := os.ReadFile(path)
	if err != nil {
		t.Fatalf("read %s: %v", path, err)
	}
	b, err := parse(y)
	if err != nil {
		t.Fatalf("%s: %v", path, err)
	}
	return b
}

// TestParseRejects makes sure the checks above can fail.
func TestParseRejects(t *testing.T) {
	good, err := os.ReadFile("bootstrap.yaml")
	if err != nil {
		t.Fatal(err)
	}
	if _, err := parse(good); err != nil {
		t.Fatalf("bootstrap.yaml: %v", err)
	}
	for name, edit := range map[string][2]string{
		"unknown field":        {"set_node_on_first_message_only: true", "set_node_on_first_message_only: true\n    no_such_field: 1"},
		"unknown Any type":     {"fixed_heap.v3.FixedHeapConfig", "fixed_heap.v3.NoSuchConfig"},
		"invalid inside Any":   {"max_active_downstream_connections: 50000", "max_active_downstream_connections: 0"},
		"invalid bootstrap":    {"connect_timeout: 1s", "connect_timeout: -1s"},
		"deprecated field":     {"      connect_timeout: 1s", "      connect_timeout: 1s\n      dns_refresh_rate: 5s"},
		"unknown field in Any": {"max_active_downstream_connections: 50000", "max_active_downstream_connections: 50000\n        no_such_field: 1"},
	} {
		t.Run(name, func(t *testing.T) {
			bad := strings.Replace(string(good), edit[0], edit[1], 1)
			if bad == string(good) {
				t.Fatalf("edit %q not applied", edit[0])
			}
			if _, err := parse([]byte(bad)); err == nil {
				t.Fatal("parse accepted a broken bootstrap")
			} else {
				t.Log(err)
			}
		})
	}
}

// walk validates the messages packed in Any fields (ValidateAll does not look
// inside them) and rejects deprecated fields and enum values, which Envoy may
// refuse in a later release.
func walk(m protoreflect.Message, at string) error {
	if m.Descriptor().FullName() == "google.protobuf.Any" {
		a, ok := m.Interface().(*anypb.Any)
		if !ok {
			return fmt.Errorf("%s: Any of unexpected Go type %T", at, m.Interface())
		}
		inner, err := a.UnmarshalNew()
		if err != nil {
			return fmt.Errorf("%s: unpack %s: %w", at, a.GetTypeUrl(), err)
		}
		if v, ok := inner.(interface{ ValidateAll() error }); ok {
			if err := v.ValidateAll(); err != nil {
				return fmt.Errorf("%s (%s): %w", at, a.GetTypeUrl(), err)
			}
		}
		return walk(inner.ProtoReflect(), at+"["+string(inner.ProtoReflect().Descriptor().FullName())+"]")
	}
	var err error
	m.Range(func(fd protoreflect.FieldDescriptor, v protoreflect.Value) bool {
		path := at + "." + string(fd.Name())
		if opts, ok := fd.Options().(*descriptorpb.FieldOptions); ok && opts.GetDeprecated() {
			err = fmt.Errorf("%s: deprecated field", path)
			return false
		}
		switch {
		case fd.IsList():
			l := v.List()
			for i := 0; i < l.Len() && err == nil; i++ {
				err = walkValue(fd, l.Get(i), fmt.Sprintf("%s[%d]", path, i))
			}
		case fd.IsMap():
			v.Map().Range(func(k protoreflect.MapKey, mv protoreflect.Value) bool {
				err = walkValue(fd.MapValue(), mv, fmt.Sprintf("%s[%s]", path, k.String()))
				return err == nil
			})
		default:
			err = walkValue(fd, v, path)
		}
		return err == nil
	})
	return err
}

func walkValue(fd protoreflect.FieldDescriptor, v protoreflect.Value, at string) error {
	switch fd.Kind() {
	case protoreflect.MessageKind, protoreflect.GroupKind:
		return walk(v.Message(), at)
	case protoreflect.EnumKind:
		ev := fd.Enum().Values().ByNumber(v.Enum())
		if ev == nil {
			return nil
		}
		if opts, ok := ev.Options().(*descriptorpb.EnumValueOptions); ok && opts.GetDeprecated() {
			return fmt.Errorf("%s: deprecated enum value %s", at, ev.Name())
		}
	default:
		// Scalars have no deprecation of their own; their field's is checked by the caller.
	}
	return nil
}

func bootstrapFiles(t *testing.T) []string {
	t.Helper()
	files, err := filepath.Glob("*.yaml")
	if err != nil {
		t.Fatal(err)
	}
	if len(files) < 2 {
		t.Fatalf("want bootstrap.yaml and bootstrap-compose.yaml, found %v", files)
	}
	return files
}

func TestBootstrapsParseAndValidate(t *testing.T) {
	for _, f := range bootstrapFiles(t) {
		t.Run(f, func(t *testing.T) {
			b := load(t, f)

			ads := b.GetDynamicResources().GetAdsConfig()
			if ads.GetApiType() != corev3.ApiConfigSource_DELTA_GRPC {
				t.Errorf("ads_config.api_type = %v, want DELTA_GRPC", ads.GetApiType())
			}
			if ads.GetTransportApiVersion() != corev3.ApiVersion_V3 || !ads.GetSetNodeOnFirstMessageOnly() {
				t.Errorf("ads_config: transport %v, set_node_on_first_message_only %v", ads.GetTransportApiVersion(), ads.GetSetNodeOnFirstMessageOnly())
			}
			if len(ads.GetGrpcServices()) != 1 || ads.GetGrpcServices()[0].GetEnvoyGrpc().GetClusterName() != "xds_cluster" {
				t.Errorf("ads_config.grpc_services = %v, want envoy_grpc xds_cluster", ads.GetGrpcServices())
			}
			for name, cs := range map[string]*corev3.ConfigSource{
				"lds_config": b.GetDynamicResources().GetLdsConfig(),
				"cds_config": b.GetDynamicResources().GetCdsConfig(),
			} {
				if cs.GetAds() == nil || cs.GetResourceApiVersion() != corev3.ApiVersion_V3 {
					t.Errorf("%s = %v, want ads {} with resource_api_version V3", name, cs)
				}
			}

			if b.GetNode().GetCluster() == "" || b.GetNode().GetId() == "" {
				t.Errorf("node = %v, want id and cluster (the gateway group)", b.GetNode())
			}
			if got := b.GetNode().GetCluster(); got != "default" {
				t.Errorf("node.cluster = %q, want default", got)
			}
			if n := len(b.GetStaticResources().GetListeners()); n != 0 {
				t.Errorf("%d static listeners: listeners come from the control plane", n)
			}

			xds := xdsCluster(t, b)
			if xds.GetConnectTimeout().AsDuration() != time.Second {
				t.Errorf("xds_cluster connect_timeout = %v, want 1s", xds.GetConnectTimeout().AsDuration())
			}
			anyOpts, ok := xds.GetTypedExtensionProtocolOptions()["envoy.extensions.upstreams.http.v3.HttpProtocolOptions"]
			if !ok {
				t.Fatal("xds_cluster lacks HttpProtocolOptions")
			}
			var opts httpv3.HttpProtocolOptions
			if err := anyOpts.UnmarshalTo(&opts); err != nil {
				t.Fatalf("xds_cluster HttpProtocolOptions: %v", err)
			}
			h2 := opts.GetExplicitHttpConfig().GetHttp2ProtocolOptions()
			if h2 == nil {
				t.Fatal("xds_cluster is not explicitly HTTP/2: gRPC needs it")
			}
			if h2.GetConnectionKeepalive().GetInterval() == nil {
				t.Error("xds_cluster has no HTTP/2 connection keepalive")
			}
			addr := xds.GetLoadAssignment().GetEndpoints()[0].GetLbEndpoints()[0].GetEndpoint().GetAddress().GetSocketAddress()
			if addr.GetPortValue() != 18000 {
				t.Errorf("xds_cluster port = %d, want 18000", addr.GetPortValue())
			}

			if got := b.GetAdmin().GetAddress().GetSocketAddress().GetPortValue(); got != 9901 {
				t.Errorf("admin port = %d, want 9901", got)
			}

			om := b.GetOverloadManager()
			var maxConns uint64
			for _, rm := range om.GetResourceMonitors() {
				if rm.GetName() != "envoy.resource_monitors.global_downstream_max_connections" {
					continue
				}
				var dc downstreamv3.DownstreamConnectionsConfig
				if err := rm.GetTypedConfig().UnmarshalTo(&dc); err != nil {
					t.Fatalf("global_downstream_max_connections typed_config: %v", err)
				}
				maxConns = uint64(dc.GetMaxActiveDownstreamConnections())
			}
			if maxConns == 0 {
				t.Error("overload_manager lacks a global_downstream_max_connections limit")
			}
		})
	}
}

func xdsCluster(t *testing.T, b *bootstrapv3.Bootstrap) *clusterv3.Cluster {
	t.Helper()
	for _, c := range b.GetStaticResources().GetClusters() {
		if c.GetName() == "xds_cluster" {
			if len(c.GetLoadAssignment().GetEndpoints()) != 1 || len(c.GetLoadAssignment().GetEndpoints()[0].GetLbEndpoints()) != 1 {
				t.Fatalf("xds_cluster wants one endpoint: %v", c.GetLoadAssignment())
			}
			return c
		}
	}
	t.Fatal("no static cluster xds_cluster")
	return nil
}

func TestLocalBootstrap(t *testing.T) {
	b := load(t, "bootstrap.yaml")
	admin := b.GetAdmin().GetAddress().GetSocketAddress()
	if admin.GetAddress() != "127.0.0.1" || admin.GetPortValue() != 9901 {
		t.Errorf("admin = %s:%d, want 127.0.0.1:9901", admin.GetAddress(), admin.GetPortValue())
	}
	if b.GetNode().GetId() != "envoy-local" {
		t.Errorf("node.id = %q, want envoy-local", b.GetNode().GetId())
	}
}

func TestComposeBootstrap(t *testing.T) {
	b := load(t, "bootstrap-compose.yaml")
	c := xdsCluster(t, b)
	addr := c.GetLoadAssignment().GetEndpoints()[0].GetLbEndpoints()[0].GetEndpoint().GetAddress().GetSocketAddress()
	if addr.GetAddress() != "controlplane" {
		t.Errorf("xds_cluster address = %q, want the compose service controlplane", addr.GetAddress())
	}
	if c.GetType() != clusterv3.Cluster_STRICT_DNS && c.GetType() != clusterv3.Cluster_LOGICAL_DNS {
		t.Errorf("xds_cluster type = %v, want a DNS cluster", c.GetType())
	}
}

// TestEnvoyValidate runs the real Envoy's config check when ENVOY_BIN names an
// Envoy binary (there is none on the development machines).
func TestEnvoyValidate(t *testing.T) {
	for _, f := range bootstrapFiles(t) {
		t.Run(f, func(t *testing.T) {
			bin := os.Getenv("ENVOY_BIN")
			if bin == "" {
				t.Skip("ENVOY_BIN not set: skipping envoy --mode validate")
			}
			ctx, cancel := context.WithTimeout(context.Background(), 60*time.Second)
			defer cancel()
			out, err := exec.CommandContext(ctx, bin, "--mode", "validate", "-c", f).CombinedOutput()
			if err != nil {
				t.Fatalf("%s --mode validate -c %s: %v\n%s", bin, f, err, out)
			}
		})
	}
}
