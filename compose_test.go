package tether_test

import (
	"bufio"
	"bytes"
	"context"
	"encoding/json"
	"maps"
	"os"
	"path/filepath"
	"reflect"
	"regexp"
	"slices"
	"strings"
	"testing"
	"time"

	"github.com/compose-spec/compose-go/v2/loader"
	"github.com/compose-spec/compose-go/v2/types"
	"sigs.k8s.io/yaml"
)

// loadCompose parses docker-compose.yml as docker compose would (schema
// validation, interpolation with an empty environment, normalization,
// absolute paths), without a Docker engine.
func loadCompose(t *testing.T) *types.Project {
	t.Helper()
	wd, err := os.Getwd()
	if err != nil {
		t.Fatal(err)
	}
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	p, err := loader.LoadWithContext(ctx, types.ConfigDetails{
		WorkingDir:  wd,
		ConfigFiles: []types.ConfigFile{{Filename: filepath.Join(wd, "docker-compose.yml")}},
		Environment: types.Mapping{},
	}, func(o *loader.Options) {
		o.SetProjectName("tether", true)
		o.ResolvePaths = true
		o.SkipResolveEnvironment = true
	})
	if err != nil {
		t.Fatalf("load docker-compose.yml: %v", err)
	}
	return p
}

func service(t *testing.T, p *types.Project, name string) types.ServiceConfig {
	t.Helper()
	s, ok := p.Services[name]
	if !ok {
		t.Fatalf("service %q missing from docker-compose.yml", name)
	}
	return s
}

var apps = []string{"app1", "app2", "app3"}

func TestComposeServices(t *testing.T) {
	p := loadCompose(t)
	want := []string{"etcd", "seed", "controlplane", "envoy", "app1", "app2", "app3", "agent1", "agent2", "agent3", "prometheus"}
	for _, name := range want {
		service(t, p, name)
	}
	if len(p.Services) != len(want) {
		t.Errorf("services %v, want exactly %v", slices.Sorted(maps.Keys(p.Services)), want)
	}

	etcd := service(t, p, "etcd")
	if etcd.HealthCheck == nil || len(etcd.HealthCheck.Test) == 0 {
		t.Error("etcd has no healthcheck: depends_on service_healthy would never pass")
	}
	for _, flag := range []string{"--listen-client-urls=http://0.0.0.0:2379", "--advertise-client-urls=http://etcd:2379"} {
		if !slices.Contains(etcd.Command, flag) {
			t.Errorf("etcd command lacks %s: %v", flag, etcd.Command)
		}
	}

	cp := service(t, p, "controlplane")
	if cp.Build == nil || cp.Build.Target != "controlplane" {
		t.Errorf("controlplane build = %+v, want target controlplane", cp.Build)
	}
	for _, flag := range []string{"--etcd-endpoints=etcd:2379", "--xds-addr=:18000", "--admin-addr=0.0.0.0:18001"} {
		if !slices.Contains(cp.Command, flag) {
			t.Errorf("controlplane command lacks %s: %v", flag, cp.Command)
		}
	}
	if d, ok := cp.DependsOn["etcd"]; !ok || d.Condition != types.ServiceConditionHealthy {
		t.Errorf("controlplane depends_on etcd = %+v, want service_healthy", d)
	}

	envoy := service(t, p, "envoy")
	if !strings.HasPrefix(envoy.Image, "envoyproxy/envoy:v1.3") {
		t.Errorf("envoy image %q, want envoyproxy/envoy:v1.3x", envoy.Image)
	}
	cmd := strings.Join(envoy.Command, " ")
	for _, part := range []string{"-c /etc/envoy/bootstrap.yaml", "--service-cluster default", "--service-node envoy-1"} {
		if !strings.Contains(cmd, part) {
			t.Errorf("envoy command %q lacks %q", cmd, part)
		}
	}
	if !published(envoy, 10000) {
		t.Errorf("envoy does not publish 10000: %+v", envoy.Ports)
	}
	if !published(envoy, 9901) {
		t.Errorf("envoy does not publish its admin port 9901: %+v", envoy.Ports)
	}
}

func published(s types.ServiceConfig, target uint32) bool {
	for _, port := range s.Ports {
		if port.Target == target && port.Published != "" {
			return true
		}
	}
	return false
}

// TestComposePortsOnLoopback: only Envoy's listener is published on every
// interface; admin, debug and direct app ports only on the host's loopback.
func TestComposePortsOnLoopback(t *testing.T) {
	p := loadCompose(t)
	for name, s := range p.Services {
		for _, port := range s.Ports {
			if name == "envoy" && port.Target == 10000 {
				continue
			}
			if port.HostIP != "127.0.0.1" {
				t.Errorf("%s publishes %s->%d on %q, want 127.0.0.1", name, port.Published, port.Target, port.HostIP)
			}
		}
	}
}

func TestComposeAgentsShareAppNetwork(t *testing.T) {
	p := loadCompose(t)
	for i, app := range apps {
		a := service(t, p, app)
		if a.Build == nil || a.Build.Target != "sessionapp" {
			t.Errorf("%s build = %+v, want target sessionapp", app, a.Build)
		}
		for _, flag := range []string{"--listen=0.0.0.0:5000", "--name=" + app} {
			if !slices.Contains(a.Command, flag) {
				t.Errorf("%s command lacks %s: %v", app, flag, a.Command)
			}
		}

		name := "agent" + string(rune('1'+i))
		ag := service(t, p, name)
		if ag.NetworkMode != "service:"+app {
			t.Errorf("%s network_mode = %q, want service:%s", name, ag.NetworkMode, app)
		}
		if len(ag.Ports) != 0 {
			t.Errorf("%s publishes ports: with a shared network namespace they belong on %s", name, app)
		}
		if ag.Build == nil || ag.Build.Target != "agent" {
			t.Errorf("%s build = %+v, want target agent", name, ag.Build)
		}
		for _, flag := range []string{
			"--etcd-endpoints=etcd:2379", "--service=app", "--id=" + app, "--port=5000",
			"--health-url=http://127.0.0.1:5000/healthcheck", "--sessions-url=http://127.0.0.1:5000/sessions",
			"--max-sessions=100", "--metrics-addr=0.0.0.0:9100",
		} {
			if !slices.Contains(ag.Command, flag) {
				t.Errorf("%s command lacks %s: %v", name, flag, ag.Command)
			}
		}
		if _, ok := ag.DependsOn[app]; !ok {
			t.Errorf("%s does not depend on %s", name, app)
		}
	}
}

// TestComposeReferencedFiles: every bind mount and build context exists, and
// every build target is a stage of the Dockerfile.
func TestComposeReferencedFiles(t *testing.T) {
	p := loadCompose(t)
	targets := dockerfileStages(t, "Dockerfile")
	mounts := 0
	for name, s := range p.Services {
		for _, v := range s.Volumes {
			if v.Type != types.VolumeTypeBind {
				continue
			}
			mounts++
			if _, err := os.Stat(v.Source); err != nil {
				t.Errorf("%s mounts missing %s: %v", name, v.Source, err)
			}
			if !v.ReadOnly {
				t.Errorf("%s mounts %s read-write; configuration mounts should be :ro", name, v.Source)
			}
		}
		if s.Build == nil {
			continue
		}
		df := s.Build.Dockerfile
		if df == "" {
			df = "Dockerfile"
		}
		if !filepath.IsAbs(df) {
			df = filepath.Join(s.Build.Context, df)
		}
		if _, err := os.Stat(df); err != nil {
			t.Errorf("%s builds from missing %s: %v", name, df, err)
		}
		if _, ok := targets[s.Build.Target]; !ok {
			t.Errorf("%s builds target %q, not a stage of the Dockerfile (%v)", name, s.Build.Target, slices.Sorted(maps.Keys(targets)))
		}
	}
	if mounts < 2 {
		t.Errorf("found %d bind mounts, want the Envoy bootstrap and prometheus.yml", mounts)
	}
	envoy := service(t, p, "envoy")
	var bootstrap bool
	for _, v := range envoy.Volumes {
		if v.Target == "/etc/envoy/bootstrap.yaml" && filepath.Base(v.Source) == "bootstrap-compose.yaml" {
			bootstrap = true
		}
	}
	if !bootstrap {
		t.Errorf("envoy does not mount envoy/bootstrap-compose.yaml at /etc/envoy/bootstrap.yaml: %+v", envoy.Volumes)
	}
}

type stage struct {
	from  string
	lines []string
}

var fromRe = regexp.MustCompile(`(?i)^FROM\s+(\S+)(?:\s+AS\s+(\S+))?\s*$`)

// dockerfileStages splits a Dockerfile into its named stages.
func dockerfileStages(t *testing.T, path string) map[string]stage {
	t.Helper()
	b, err := os.ReadFile(path)
	if err != nil {
		t.Fatalf("read %s: %v", path, err)
	}
	stages := map[string]stage{}
	current := ""
	sc := bufio.NewScanner(bytes.NewReader(b))
	for sc.Scan() {
		line := strings.TrimSpace(sc.Text())
		if line == "" || strings.HasPrefix(line, "#") {
			continue
		}
		if m := fromRe.FindStringSubmatch(line); m != nil {
			current = m[2]
			if current != "" {
				stages[current] = stage{from: m[1]}
			}
			continue
		}
		if current != "" {
			s := stages[current]
			s.lines = append(s.lines, line)
			stages[current] = s
		}
	}
	if err := sc.Err(); err != nil {
		t.Fatal(err)
	}
	return stages
}

func TestDockerfileTargets(t *testing.T) {
	stages := dockerfileStages(t, "Dockerfile")
	b, err := os.ReadFile("Dockerfile")
	if err != nil {
		t.Fatal(err)
	}
	if !regexp.MustCompile(`(?m)^FROM golang:\$\{GO_VERSION\}`).Match(b) || !strings.Contains(string(b), "ARG GO_VERSION=1.26") {
		t.Error("the build stage is not golang:1.26")
	}
	if !strings.Contains(string(b), "CGO_ENABLED=0") {
		t.Error("the build does not set CGO_ENABLED=0: distroless/static has no libc")
	}
	for target, pkg := range map[string]string{
		"controlplane": "./cmd/tether-controlplane",
		"agent":        "./cmd/tether-agent",
		"sessionapp":   "./examples/sessionapp",
	} {
		s, ok := stages[target]
		if !ok {
			t.Errorf("Dockerfile has no target %q", target)
			continue
		}
		if s.from != "gcr.io/distroless/static-debian12:nonroot" {
			t.Errorf("target %s is FROM %s, want gcr.io/distroless/static-debian12:nonroot", target, s.from)
		}
		var user string
		for _, l := range s.lines {
			if f := strings.Fields(l); len(f) == 2 && strings.EqualFold(f[0], "USER") {
				user = f[1]
			}
		}
		if name := strings.Split(user, ":")[0]; name == "" || name == "root" || name == "0" {
			t.Errorf("target %s runs as %q, want a non-root USER", target, user)
		}
		if !strings.Contains(string(b), pkg) {
			t.Errorf("Dockerfile does not build %s for target %s", pkg, target)
		}
		if _, err := os.Stat(pkg); err != nil {
			t.Errorf("target %s builds %s: %v", target, pkg, err)
		}
	}
}

// TestComposeSeedMatchesExample: the seed service writes examples/services/app.json.
func TestComposeSeedMatchesExample(t *testing.T) {
	p := loadCompose(t)
	seed := service(t, p, "seed")
	if len(seed.Command) != 3 || seed.Command[0] != "put" || seed.Command[1] != "/tether/services/app" {
		t.Fatalf("seed command = %v, want put /tether/services/app JSON", seed.Command)
	}
	var inline, file any
	if err := json.Unmarshal([]byte(seed.Command[2]), &inline); err != nil {
		t.Fatalf("seed value: %v", err)
	}
	b, err := os.ReadFile("examples/services/app.json")
	if err != nil {
		t.Fatal(err)
	}
	if err := json.Unmarshal(b, &file); err != nil {
		t.Fatalf("examples/services/app.json: %v", err)
	}
	if !reflect.DeepEqual(inline, file) {
		t.Errorf("seed value differs from examples/services/app.json:\n%s\n%s", seed.Command[2], b)
	}
}

func TestPrometheusScrapesEverything(t *testing.T) {
	b, err := os.ReadFile("examples/prometheus.yml")
	if err != nil {
		t.Fatal(err)
	}
	var cfg struct {
		ScrapeConfigs []struct {
			JobName       string `json:"job_name"`
			StaticConfigs []struct {
				Targets []string `json:"targets"`
			} `json:"static_configs"`
		} `json:"scrape_configs"`
	}
	if err := yaml.Unmarshal(b, &cfg); err != nil {
		t.Fatalf("examples/prometheus.yml: %v", err)
	}
	var targets []string
	for _, sc := range cfg.ScrapeConfigs {
		for _, st := range sc.StaticConfigs {
			targets = append(targets, st.Targets...)
		}
	}
	for _, want := range []string{"controlplane:18001", "app1:9100", "app2:9100", "app3:9100", "envoy:9901"} {
		if !slices.Contains(targets, want) {
			t.Errorf("prometheus.yml does not scrape %s (targets %v)", want, targets)
		}
	}
}

// TestWisejHealthCheckExample: examples/HealthCheck.json has the layout of
// Wisej's default file: a /* */ comment header, then the settings, with
// Wisej's own key names (returUrl is Wisej's spelling).
func TestWisejHealthCheckExample(t *testing.T) {
	b, err := os.ReadFile("examples/HealthCheck.json")
	if err != nil {
		t.Fatal(err)
	}
	s := string(b)
	if !strings.HasPrefix(s, "/*") {
		t.Fatal("HealthCheck.json does not start with a /* */ comment header")
	}
	end := strings.Index(s, "*/")
	if end < 0 {
		t.Fatal("HealthCheck.json comment header is not closed")
	}
	var hc map[string]any
	if err := json.Unmarshal([]byte(s[end+2:]), &hc); err != nil {
		t.Fatalf("HealthCheck.json settings: %v", err)
	}
	want := map[string]any{
		"enabled": false, "maxSessions": 0.0, "maxMemory": 0.0, "maxCPU": 0.0,
		"returnCode": 503.0, "retryAfter": 10.0, "returUrl": "",
	}
	if !reflect.DeepEqual(hc, want) {
		t.Errorf("HealthCheck.json settings = %v, want %v", hc, want)
	}
}
