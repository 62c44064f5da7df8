package agent

import (
	"context"
	"fmt"
	"math"
	"net/http"
	"net/http/httptest"
	"os"
	"path/filepath"
	"runtime"
	"strings"
	"testing"
	"time"

	"github.com/shirou/gopsutil/v4/mem"
)

func writeFiles(t *testing.T, dir string, files map[string]string) {
	t.Helper()
	for name, content := range files {
		if err := os.WriteFile(filepath.Join(dir, name), []byte(content), 0o644); err != nil {
			t.Fatal(err)
		}
	}
}

func TestCgroupSampler(t *testing.T) {
	dir := t.TempDir()
	now := time.Unix(1000, 0)
	s := &cgroupSampler{dir: dir, now: func() time.Time { return now }}
	writeFiles(t, dir, map[string]string{
		"cpu.stat":       "usage_usec 1000000\nuser_usec 800000\n",
		"cpu.max":        "200000 100000\n", // 2 cores
		"memory.current": fmt.Sprint(600 << 20),
		"memory.stat":    "anon 400\ninactive_file " + fmt.Sprint(88<<20) + "\n",
		"memory.max":     fmt.Sprint(1024 << 20),
	})
	u, err := s.sample(context.Background())
	if err != nil {
		t.Fatal(err)
	}
	if u.CPU != 0 || u.MemoryMB != 512 || u.Memory != 50 {
		t.Fatalf("first sample %+v, want cpu 0 (no interval yet), 512 MB, 50%%", u)
	}
	now = now.Add(time.Second)
	writeFiles(t, dir, map[string]string{"cpu.stat": "usage_usec 2000000\n"}) // one core-second in one second, of 2 cores
	if u, err = s.sample(context.Background()); err != nil || u.CPU != 50 {
		t.Fatalf("second sample %+v, %v; want cpu 50%%", u, err)
	}
	if _, err := (&cgroupSampler{dir: t.TempDir(), now: time.Now}).sample(context.Background()); err == nil {
		t.Fatal("an empty directory is not a cgroup")
	}
}

func TestSessionsParsing(t *testing.T) {
	body := map[string]string{
		"/json":   `{"sessions": 42, "other": 1}`,
		"/nojson": `{"count": 42}`,
		"/prom": `# HELP app_sessions Live sessions.
# TYPE app_sessions gauge
app_sessions{pool="a"} 40
app_sessions{pool="b"} 2
other_metric 7
`,
		"/neg": `{"sessions": -3}`,
	}
	srv := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		b, ok := body[r.URL.Path]
		if !ok {
			http.Error(w, "no", http.StatusNotFound)
			return
		}
		_, _ = w.Write([]byte(b))
	}))
	defer srv.Close()
	p := prober{client: srv.Client()}
	ctx := context.Background()
	if n, err := p.sessions(ctx, srv.URL+"/json", ""); err != nil || n != 42 {
		t.Errorf("json: %d, %v", n, err)
	}
	if n, err := p.sessions(ctx, srv.URL+"/prom", "app_sessions"); err != nil || n != 42 {
		t.Errorf("prometheus sum: %d, %v", n, err)
	}
	for _, c := range []struct{ path, metric, want string }{
		{"/nojson", "", `no "sessions"`},
		{"/prom", "", "--sessions-metric"},
		{"/prom", "missing_metric", "not found"},
		{"/neg", "", "not a count"},
		{"/404", "", "status 404"},
	} {
		if _, err := p.sessions(ctx, srv.URL+c.path, c.metric); err == nil || !strings.Contains(err.Error(), c.want) {
			t.Errorf("%s %s: error %v, want %q", c.path, c.metric, err, c.want)
		}
	}
}

func TestHostAndProcessSamplers(t *testing.T) {
	ctx := context.Background()
	for _, cfg := range []Config{{LoadSource: LoadHost}, {LoadSource: LoadProcess, PID: os.Getpid()}} {
		s, err := newSampler(ctx, cfg)
		if err != nil {
			t.Fatalf("%s: %v", cfg.LoadSource, err)
		}
		u, err := s.sample(ctx)
		if err != nil {
			t.Fatalf("%s: %v", cfg.LoadSource, err)
		}
		if u.MemoryMB <= 0 || u.Memory <= 0 || u.Memory > 100 || u.CPU < 0 || u.CPU > 100 {
			t.Fatalf("%s: implausible sample %+v", cfg.LoadSource, u)
		}
	}
	if _, err := newSampler(ctx, Config{LoadSource: LoadProcess, PID: 1 << 30}); err == nil || !strings.Contains(err.Error(), "--pid") {
		t.Fatalf("missing process: %v", err)
	}
}

// TestCgroupSamplerEdges: each fallback of the cgroup sampler, and the clamps at their
// edges: no CPU limit counts every host core, no memory limit the host's memory, a counter
// that went back or no time passed gives no CPU figure, an inactive_file above the current
// use is not subtracted.
func TestCgroupSamplerEdges(t *testing.T) {
	for _, tc := range []struct {
		v, want float64
	}{{math.NaN(), 0}, {-0.1, 0}, {0, 0}, {0.1, 0.1}, {99.9, 99.9}, {100, 100}, {100.1, 100}} {
		if got := clampPercent(tc.v); got != tc.want {
			t.Errorf("clampPercent(%v) = %v, want %v", tc.v, got, tc.want)
		}
	}
	ctx := context.Background()
	dir := t.TempDir()
	now := time.Unix(1000, 0)
	s := &cgroupSampler{dir: dir, now: func() time.Time { return now }}
	cores := float64(runtime.NumCPU())
	writeFiles(t, dir, map[string]string{
		"cpu.stat":       "garbage\nusage_usec notanumber extra\nusage_usec 1000000\n",
		"cpu.max":        "max 100000\n",
		"memory.current": "max\n",
		"memory.stat":    "inactive_file 1\n",
		"memory.max":     "max\n",
	})
	u, err := s.sample(ctx)
	if err != nil || u.Memory != 0 || u.MemoryMB != 0 {
		t.Fatalf("first sample %+v, %v; want no memory (memory.current reads max as 0, inactive_file above it kept)", u, err)
	}
	for _, step := range []struct {
		name     string
		after    time.Duration
		usec     string
		cpuMax   string
		wantCPU  float64
		wantMiB  float64
		current  uint64
		inactive uint64
		limit    string
		wantMem  float64
	}{
		{"no CPU limit: all host cores", time.Second, "2000000", "max 100000", 100 / cores, 64, 64 << 20, 0, fmt.Sprint(128 << 20), 50},
		{"a quota of 0 is no limit", time.Second, "3000000", "0 100000", 100 / cores, 64, 64 << 20, 0, fmt.Sprint(128 << 20), 50},
		{"a period of 0 is no limit", time.Second, "4000000", "100000 0", 100 / cores, 64, 64 << 20, 0, fmt.Sprint(128 << 20), 50},
		{"one field is no limit", time.Second, "5000000", "100000", 100 / cores, 64, 64 << 20, 0, fmt.Sprint(128 << 20), 50},
		{"half a core, used whole", time.Second, "5500000", "50000 100000", 100, 32, 64 << 20, 32 << 20, fmt.Sprint(128 << 20), 25},
		{"a quarter used of 4 cores", 2 * time.Second, "7500000", "400000 100000", 25, 32, 64 << 20, 32 << 20, fmt.Sprint(128 << 20), 25},
		{"inactive equal to current", time.Second, "7500000", "400000 100000", 0, 0, 64 << 20, 64 << 20, fmt.Sprint(128 << 20), 0},
		{"the counter went back", time.Second, "100", "400000 100000", 0, 64, 64 << 20, 64<<20 + 1, fmt.Sprint(128 << 20), 50},
		{"no time passed", 0, "200", "400000 100000", 0, 64, 64 << 20, 0, fmt.Sprint(128 << 20), 50},
		{"over the limit", time.Second, "200", "400000 100000", 0, 256, 256 << 20, 0, fmt.Sprint(128 << 20), 100},
	} {
		now = now.Add(step.after)
		writeFiles(t, dir, map[string]string{
			"cpu.stat":       "usage_usec " + step.usec + "\n",
			"cpu.max":        step.cpuMax,
			"memory.current": fmt.Sprint(step.current),
			"memory.stat":    fmt.Sprintf("inactive_file %d\n", step.inactive),
			"memory.max":     step.limit,
		})
		u, err := s.sample(ctx)
		if err != nil || math.Abs(u.CPU-step.wantCPU) > 1e-9 || u.MemoryMB != step.wantMiB || u.Memory != step.wantMem {
			t.Errorf("%s: %+v, %v; want cpu %v, %v MiB, memory %v%%", step.name, u, err, step.wantCPU, step.wantMiB, step.wantMem)
		}
	}
	// No memory limit: the host's memory.
	now = now.Add(time.Second)
	writeFiles(t, dir, map[string]string{"memory.current": fmt.Sprint(1 << 20), "memory.max": "max", "memory.stat": ""})
	vm, err := mem.VirtualMemoryWithContext(ctx)
	if err != nil {
		t.Skip("no host memory:", err)
	}
	if u, err := s.sample(ctx); err != nil || math.Abs(u.Memory-clampPercent(float64(1<<20)/float64(vm.Total)*100)) > 1e-9 {
		t.Errorf("no memory limit: %+v, %v; want 1 MiB of the host's %d bytes", u, err, vm.Total)
	}
	for name, files := range map[string]map[string]string{
		"no usage_usec":        {"cpu.stat": "user_usec 1\n"},
		"no memory.current":    {"cpu.stat": "usage_usec 1\n"},
		"a bad memory.current": {"cpu.stat": "usage_usec 1\n", "memory.current": "lots"},
		"no memory.max":        {"cpu.stat": "usage_usec 1\n", "memory.current": "1"},
		"a bad memory.max":     {"cpu.stat": "usage_usec 1\n", "memory.current": "1", "memory.max": "-1"},
	} {
		d := t.TempDir()
		writeFiles(t, d, files)
		if _, err := (&cgroupSampler{dir: d, now: time.Now}).sample(ctx); err == nil {
			t.Errorf("%s: no error", name)
		}
		if _, err := newSampler(ctx, Config{LoadSource: LoadCgroup, CgroupDir: d}); err == nil || !strings.Contains(err.Error(), "--cgroup") {
			t.Errorf("%s: newSampler: %v, want an error naming --cgroup", name, err)
		}
	}
	if s, err := newSampler(ctx, Config{LoadSource: LoadCgroup, CgroupDir: dir}); err != nil || s.(*cgroupSampler).dir != dir {
		t.Errorf("newSampler of a cgroup: %v, %v", s, err)
	}
}
