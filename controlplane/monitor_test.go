package controlplane_test

import (
	"bufio"
	"context"
	"encoding/json"
	"fmt"
	"io/fs"
	"net/http"
	"os"
	"path/filepath"
	"regexp"
	"strings"
	"testing"
	"time"

	clientv3 "go.etcd.io/etcd/client/v3"

	"github.com/tetherlb/tether/controlplane"
	"github.com/tetherlb/tether/controlplane/admin"
	"github.com/tetherlb/tether/internal/etcdtest"
	"github.com/tetherlb/tether/internal/eventually"
	"github.com/tetherlb/tether/internal/xdsclient"
	"github.com/tetherlb/tether/registry"
)

// monitorInstance is a registered demo instance on 127.0.0.1.
func monitorInstance(id string, port, sessions int, state registry.InstanceState, reason string) registry.Instance {
	return registry.Instance{
		ID: id, Address: "127.0.0.1", Port: port, Zone: "zone-a",
		Thresholds: registry.Thresholds{MaxSessions: 100, MaxCPU: 85, MaxMemory: 70},
		Load:       registry.Load{Sessions: sessions, CPU: 20 + float64(sessions)/2, Memory: 35, MemoryMB: 300},
		State:      state, Reason: reason, UpdatedAt: time.Now().UTC(),
		Agent: registry.AgentInfo{Version: "0.1.0", StartedAt: time.Now().UTC().Add(-time.Hour)},
	}
}

// registerDemo registers app-1..app-3 under one lease and returns the lease.
func registerDemo(t *testing.T, cli *clientv3.Client) clientv3.LeaseID {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	lease, err := cli.Grant(ctx, 60)
	if err != nil {
		t.Fatalf("grant: %v", err)
	}
	for i, sessions := range []int{12, 40, 75} {
		in := monitorInstance(fmt.Sprintf("app-%d", i+1), 5001+i, sessions, registry.StateAvailable, "")
		if err := registry.CreateInstance(ctx, cli, "/tether", "app", in, lease.ID); err != nil {
			t.Fatalf("register %s: %v", in.ID, err)
		}
	}
	return lease.ID
}

func updateInstance(t *testing.T, cli *clientv3.Client, lease clientv3.LeaseID, in registry.Instance) {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	if err := registry.UpdateInstance(ctx, cli, "/tether", "app", in, lease); err != nil {
		t.Fatalf("update %s: %v", in.ID, err)
	}
}

func apiState(t *testing.T, cp *controlplane.ControlPlane) admin.MonitorState {
	t.Helper()
	var ms admin.MonitorState
	if err := json.Unmarshal([]byte(get(t, "http://"+cp.AdminAddr()+"/api/state", http.StatusOK)), &ms); err != nil {
		t.Fatalf("decode /api/state: %v", err)
	}
	return ms
}

// waitState polls /api/state until cond holds, for at most 15 s.
func waitState(t *testing.T, cp *controlplane.ControlPlane, what string, cond func(admin.MonitorState) bool) admin.MonitorState {
	t.Helper()
	var ms admin.MonitorState
	eventually.Saying(t, what, 15*time.Second, func() (bool, string) {
		ms = apiState(t, cp)
		return cond(ms), fmt.Sprintf("%+v", ms)
	})
	return ms
}

func instanceOf(ms admin.MonitorState, id string) (inst registry.Instance, weight uint32, health string, ok bool) {
	for _, s := range ms.Services {
		for _, in := range s.Instances {
			if in.ID == id {
				if in.Envoy != nil {
					weight, health = in.Envoy.Weight, in.Envoy.Health
				}
				return in.Instance, weight, health, true
			}
		}
	}
	return inst, 0, "", false
}

func TestMonitorAPIState(t *testing.T) {
	etcd := etcdtest.Start(t)
	cli := etcd.Client(t)
	lease := registerDemo(t, cli)
	cp := startCP(t, etcd.Endpoints())
	connect(t, cp, xdsclient.Delta, "envoy-1", "edge")

	ms := waitState(t, cp, "an in-sync Envoy in group edge", func(ms admin.MonitorState) bool {
		for _, g := range ms.Groups {
			if g.Name == "edge" && len(g.Envoys) == 1 && g.Envoys[0].InSync {
				return true
			}
		}
		return false
	})
	if !ms.Ready || ms.Summary.Instances != 3 || ms.Summary.Available != 3 || ms.Summary.Sessions != 127 {
		t.Errorf("summary: ready %v %+v", ms.Ready, ms.Summary)
	}
	if time.Since(ms.GeneratedAt) > time.Minute || ms.PublishedAt.IsZero() || len(ms.Versions) != 4 {
		t.Errorf("generatedAt %s, publishedAt %s, versions %v", ms.GeneratedAt, ms.PublishedAt, ms.Versions)
	}
	e := ms.Groups[len(ms.Groups)-1].Envoys[0]
	if e.NodeID != "envoy-1" || e.Variant != "delta" || e.Acked["Cluster"] != ms.Versions["Cluster"] {
		t.Errorf("envoy = %+v, versions %v", e, ms.Versions)
	}
	_, w1, h1, _ := instanceOf(ms, "app-1")
	_, w3, _, _ := instanceOf(ms, "app-3")
	if h1 != "HEALTHY" || w1 <= w3 || w3 == 0 {
		t.Errorf("app-1 weight %d %s, app-3 weight %d: the emptier instance should weigh more", w1, h1, w3)
	}

	// A full instance shows its state, reason and DRAINING endpoint.
	full := monitorInstance("app-2", 5002, 100, registry.StateFull, "sessions 100 >= maxSessions 100")
	updateInstance(t, cli, lease, full)
	// Wait for the Envoy's ACK too: the push is published before the client acknowledges it,
	// and the document below must show the Envoy in sync.
	ms = waitState(t, cp, "app-2 full, acknowledged", func(ms admin.MonitorState) bool {
		in, _, h, _ := instanceOf(ms, "app-2")
		return in.State == registry.StateFull && h == "DRAINING" && allInSync(ms)
	})
	if in, _, _, _ := instanceOf(ms, "app-2"); in.Reason != full.Reason || ms.Summary.Full != 1 {
		t.Errorf("app-2 reason %q, summary %+v", in.Reason, ms.Summary)
	}
	// The instance's etcd fields are inlined in the JSON document.
	raw := get(t, "http://"+cp.AdminAddr()+"/api/state", http.StatusOK)
	for _, want := range []string{`"id":"app-2"`, `"maxSessions":100`, `"envoy":{"weight":`, `"inSync":true`, `"summary":{`} {
		if !strings.Contains(raw, want) {
			t.Errorf("/api/state lacks %s", want)
		}
	}
}

func TestMonitorEventsFollowRegistry(t *testing.T) {
	etcd := etcdtest.Start(t)
	cli := etcd.Client(t)
	lease := registerDemo(t, cli)
	cp := startCP(t, etcd.Endpoints())
	<-cp.Ready()

	ctx, cancel := context.WithTimeout(context.Background(), 20*time.Second)
	defer cancel()
	req, _ := http.NewRequestWithContext(ctx, http.MethodGet, "http://"+cp.AdminAddr()+"/api/events", nil)
	resp, err := http.DefaultClient.Do(req)
	if err != nil {
		t.Fatalf("GET /api/events: %v", err)
	}
	defer resp.Body.Close()
	if resp.StatusCode != http.StatusOK || resp.Header.Get("Content-Type") != "text/event-stream" {
		t.Fatalf("GET /api/events: %d %s", resp.StatusCode, resp.Header.Get("Content-Type"))
	}
	sc := bufio.NewScanner(resp.Body)
	sc.Buffer(make([]byte, 1<<20), 1<<20)
	nextState := func() admin.MonitorState {
		t.Helper()
		for sc.Scan() {
			if data, ok := strings.CutPrefix(sc.Text(), "data: "); ok {
				var ms admin.MonitorState
				if err := json.Unmarshal([]byte(data), &ms); err != nil {
					t.Fatalf("decode event: %v", err)
				}
				return ms
			}
		}
		t.Fatalf("stream ended: %v", sc.Err())
		return admin.MonitorState{}
	}
	if ms := nextState(); ms.Summary.Instances != 3 {
		t.Fatalf("first event: %+v", ms.Summary)
	}
	updateInstance(t, cli, lease, monitorInstance("app-3", 5003, 80, registry.StateUnhealthy, "health probe: connection refused"))
	for i := 0; ; i++ {
		if i == 50 {
			t.Fatal("no event showed app-3 unhealthy")
		}
		if in, _, h, _ := instanceOf(nextState(), "app-3"); in.State == registry.StateUnhealthy && h == "UNHEALTHY" {
			break
		}
	}
}

func TestMonitorPageAndAssets(t *testing.T) {
	etcd := etcdtest.Start(t)
	cp := startCP(t, etcd.Endpoints())
	base := "http://" + cp.AdminAddr()

	resp, err := http.Get(base + "/")
	if err != nil {
		t.Fatal(err)
	}
	resp.Body.Close()
	if resp.StatusCode != http.StatusOK || !strings.HasPrefix(resp.Header.Get("Content-Type"), "text/html") ||
		!strings.Contains(resp.Header.Get("Content-Security-Policy"), "default-src 'none'") {
		t.Errorf("GET /: %d, %s, CSP %q", resp.StatusCode, resp.Header.Get("Content-Type"), resp.Header.Get("Content-Security-Policy"))
	}
	for path, ctype := range map[string]string{"/ui/app.js": "javascript", "/ui/style.css": "text/css", "/ui/icon.svg": "image/svg+xml"} {
		resp, err := http.Get(base + path)
		if err != nil {
			t.Fatal(err)
		}
		resp.Body.Close()
		if resp.StatusCode != http.StatusOK || !strings.Contains(resp.Header.Get("Content-Type"), ctype) {
			t.Errorf("GET %s: %d %s", path, resp.StatusCode, resp.Header.Get("Content-Type"))
		}
	}
	get(t, base+"/nope", http.StatusNotFound)

	// The page loads nothing from another host: no absolute URL in src, href, url() or fetches.
	external := regexp.MustCompile(`(?i)(src|href)\s*=\s*["']?(https?:)?//|url\(\s*["']?(https?:)?//|@import|(fetch|EventSource)\(\s*["']https?:`)
	err = filepath.WalkDir(filepath.Join("admin", "ui"), func(path string, d fs.DirEntry, err error) error {
		if err != nil || d.IsDir() {
			return err
		}
		b, err := os.ReadFile(path)
		if err != nil {
			return err
		}
		if m := external.Find(b); m != nil {
			t.Errorf("%s refers to another host: %s", path, m)
		}
		return nil
	})
	if err != nil {
		t.Fatal(err)
	}
}

// allInSync reports whether every connected Envoy has acknowledged the versions served.
func allInSync(ms admin.MonitorState) bool {
	n := 0
	for _, g := range ms.Groups {
		for _, e := range g.Envoys {
			if !e.InSync {
				return false
			}
			n++
		}
	}
	return n > 0
}
