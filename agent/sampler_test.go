package agent

import (
	"context"
	"fmt"
	"net/http"
	"net/http/httptest"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"
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
