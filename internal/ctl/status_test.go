package ctl

import (
	"context"
	"encoding/json"
	"fmt"
	"regexp"
	"strings"
	"testing"
	"time"

	clientv3 "go.etcd.io/etcd/client/v3"

	"github.com/tetherlb/tether/internal/etcdtest"
	"github.com/tetherlb/tether/internal/overview"
	"github.com/tetherlb/tether/registry"
)

func instance(id, addr string, sessions int, state registry.InstanceState, reason string) registry.Instance {
	return registry.Instance{
		ID: id, Address: addr, Port: 5000, Zone: "eu-west-1a",
		Thresholds: registry.Thresholds{MaxSessions: 100, MaxCPU: 85, MaxMemory: 70},
		Load:       registry.Load{Sessions: sessions, CPU: 37.5, Memory: 41, MemoryMB: 812},
		State:      state, Reason: reason, UpdatedAt: time.Now().UTC().Add(-3 * time.Second),
		Agent: registry.AgentInfo{Version: "0.1.0", StartedAt: time.Now().UTC().Add(-time.Hour)},
	}
}

// seed registers three instances of "app" (one full), one of "api" with an IPv6 address, a
// configured service without instances and one invalid key.
func seed(t *testing.T, cli *clientv3.Client) {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	lease, err := cli.Grant(ctx, 60)
	if err != nil {
		t.Fatalf("grant: %v", err)
	}
	for _, in := range []struct {
		svc  string
		inst registry.Instance
	}{
		{"app", instance("app-1", "10.0.0.1", 12, registry.StateAvailable, "")},
		{"app", instance("app-2", "10.0.0.2", 100, registry.StateFull, "sessions 100 >= maxSessions 100")},
		{"app", instance("app-3", "10.0.0.3", 7, registry.StateDraining, "agent\tstopping")},
		{"api", instance("api-1", "fd00::1", 0, registry.StateAvailable, "")},
	} {
		if err := registry.CreateInstance(ctx, cli, "/tether", in.svc, in.inst, lease.ID); err != nil {
			t.Fatalf("create %s: %v", in.inst.ID, err)
		}
	}
	if err := registry.PutServiceConfig(ctx, cli, "/tether", "idle", registry.DefaultServiceConfig("idle")); err != nil {
		t.Fatalf("put service: %v", err)
	}
	if _, err := cli.Put(ctx, "/tether/instances/app/bad", `{"port": 0}`); err != nil {
		t.Fatalf("put bad: %v", err)
	}
}

var ageRE = regexp.MustCompile(` [0-9]{1,2}s$`)

func runStatus(t *testing.T, args ...string) (int, string, string) {
	t.Helper()
	r := run(t, nil, append([]string{"status"}, args...)...)
	return r.code, r.stdout, r.stderr
}

func TestStatusTable(t *testing.T) {
	srv := etcdtest.Start(t)
	seed(t, srv.Client(t))

	code, out, errOut := runStatus(t, "--etcd-endpoints", srv.ClientURL, "--prefix", "/tether/")
	if code != 0 {
		t.Fatalf("exit %d, stderr: %s", code, errOut)
	}
	lines := strings.Split(out, "\n")
	header := lines[0]
	for _, col := range []string{"SERVICE", "INSTANCE", "ADDRESS", "STATE", "REASON", "SESSIONS", "CPU", "MEMORY", "ZONE", "AGENT", "UPDATED"} {
		if !strings.Contains(header, col) {
			t.Errorf("header %q lacks %s", header, col)
		}
	}
	want := [][]string{
		{"api", "api-1", "[fd00::1]:5000", "available", "-", "0/100", "37.5%/85%", "41%/70% 812MiB", "eu-west-1a", "0.1.0"},
		{"app", "app-1", "10.0.0.1:5000", "available", "-", "12/100"},
		{"app", "app-2", "10.0.0.2:5000", "FULL", "sessions 100 >= maxSessions 100", "100/100"},
		{"app", "app-3", "10.0.0.3:5000", "DRAINING", "agent stopping", "7/100"},
		{"idle", "(none)"},
	}
	stateCol := strings.Index(header, "STATE")
	for i, w := range want {
		row := lines[1+i]
		pos := 0
		for _, cell := range w {
			j := strings.Index(row[pos:], cell)
			if j < 0 {
				t.Fatalf("row %d %q: missing %q after offset %d", i, row, cell, pos)
			}
			pos += j + len(cell)
		}
		if len(w) > 3 && strings.Index(row, w[3]) != stateCol {
			t.Errorf("row %q: state at %d, header STATE at %d (not aligned)", row, strings.Index(row, w[3]), stateCol)
		}
		if len(w) > 3 && !ageRE.MatchString(row) {
			t.Errorf("row %q: age should be a few seconds", row)
		}
	}
	if !strings.Contains(out, "3 services, 4 instances (2 available, 1 full, 1 draining, 0 unhealthy), 119 sessions") {
		t.Errorf("summary missing or wrong:\n%s", out)
	}
	if !strings.Contains(out, "1 rejected key left out") || !strings.Contains(out, "/tether/instances/app/bad") {
		t.Errorf("rejected key missing:\n%s", out)
	}
	t.Logf("output:\n%s", out)
}

func TestStatusJSON(t *testing.T) {
	srv := etcdtest.Start(t)
	seed(t, srv.Client(t))

	code, out, errOut := runStatus(t, "--etcd-endpoints", srv.ClientURL, "--json")
	if code != 0 {
		t.Fatalf("exit %d, stderr: %s", code, errOut)
	}
	var ov overview.Overview
	if err := json.Unmarshal([]byte(out), &ov); err != nil {
		t.Fatalf("decode %s: %v", out, err)
	}
	var names []string
	for _, s := range ov.Services {
		for _, in := range s.Instances {
			names = append(names, fmt.Sprintf("%s/%s:%s:%d", s.Name, in.ID, in.State, in.Load.Sessions))
		}
	}
	if got, want := strings.Join(names, " "), "api/api-1:available:0 app/app-1:available:12 app/app-2:full:100 app/app-3:draining:7"; got != want {
		t.Errorf("instances = %s, want %s", got, want)
	}
	if ov.Revision == 0 || ov.Summary.Full != 1 || ov.Summary.Instances != 4 || len(ov.Rejected) != 1 {
		t.Errorf("revision %d, summary %+v, rejected %v", ov.Revision, ov.Summary, ov.Rejected)
	}
	// The instance's etcd fields are inlined, as in the etcd value.
	if !strings.Contains(out, `"maxSessions": 100`) || !strings.Contains(out, `"address": "10.0.0.2"`) {
		t.Errorf("JSON does not inline the instance fields:\n%s", out)
	}
}

func TestStatusErrors(t *testing.T) {
	if code, _, errOut := runStatus(t, "extra"); code != 2 || !strings.Contains(errOut, `unexpected argument "extra"`) {
		t.Errorf("extra argument: exit %d, %s", code, errOut)
	}
	if code, _, errOut := runStatus(t, "--prefix", "tether"); code != 2 || !strings.Contains(errOut, "--prefix") {
		t.Errorf("bad prefix: exit %d, %s", code, errOut)
	}
	port := etcdtest.FreePort(t)
	code, _, errOut := runStatus(t, "--etcd-endpoints", fmt.Sprintf("127.0.0.1:%d", port), "--timeout", "500ms", "--etcd-dial-timeout", "200ms")
	if code != 1 || !strings.Contains(errOut, "127.0.0.1:") {
		t.Errorf("unreachable etcd: exit %d, %s", code, errOut)
	}
}

// TestStatusShowsLoopbackRejected: a control plane refuses an instance on a loopback address
// unless started with --allow-loopback-backends; status says the same, not "available".
func TestStatusShowsLoopbackRejected(t *testing.T) {
	srv := etcdtest.Start(t)
	cli := srv.Client(t)
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	lease, err := cli.Grant(ctx, 60)
	if err != nil {
		t.Fatal(err)
	}
	for _, in := range []registry.Instance{instance("lo-1", "127.0.0.1", 0, registry.StateAvailable, ""), instance("ok-1", "10.0.0.1", 0, registry.StateAvailable, "")} {
		if err := registry.CreateInstance(ctx, cli, "/tether", "app", in, lease.ID); err != nil {
			t.Fatal(err)
		}
	}
	code, out, errOut := runStatus(t, "--etcd-endpoints", srv.ClientURL)
	if code != 0 {
		t.Fatalf("status: exit %d, %s", code, errOut)
	}
	if regexp.MustCompile(`(?m)^app +lo-1 .*available`).MatchString(out) || !strings.Contains(out, "/tether/instances/app/lo-1") ||
		!strings.Contains(out, "--allow-loopback-backends") || !strings.Contains(out, "1 available") {
		t.Errorf("status shows the loopback instance as served:\n%s", out)
	}
	code, out, errOut = runStatus(t, "--etcd-endpoints", srv.ClientURL, "--allow-loopback-backends")
	if code != 0 || !regexp.MustCompile(`(?m)^app +lo-1 .*available`).MatchString(out) {
		t.Errorf("status --allow-loopback-backends: exit %d %s, want lo-1 available:\n%s", code, errOut, out)
	}
}
