// Package deploy_test checks the operator's files of deploy/: the Prometheus alert rules
// with Prometheus's own rule parser, and every query of the rules and of the Grafana
// dashboard against the metrics a real control plane and a real agent export.
package deploy_test

import (
	"context"
	"encoding/json"
	"fmt"
	"net/http"
	"os"
	"os/exec"
	"path/filepath"
	"slices"
	"strings"
	"testing"
	"time"

	"github.com/prometheus/common/expfmt"
	"github.com/prometheus/common/model"
	"github.com/prometheus/prometheus/model/rulefmt"
	"github.com/prometheus/prometheus/promql/parser"
	"github.com/rs/zerolog"

	"github.com/tetherlb/tether/agent"
	"github.com/tetherlb/tether/controlplane"
	"github.com/tetherlb/tether/internal/agenttest"
	"github.com/tetherlb/tether/internal/etcdtest"
	"github.com/tetherlb/tether/internal/eventually"
	clientv3 "go.etcd.io/etcd/client/v3"
)

// exported scrapes a real control plane's and a real agent's /metrics and returns the
// metric family names they export.
func exported(t *testing.T) map[string]bool {
	t.Helper()
	etcd := etcdtest.Start(t)
	ctx, cancel := context.WithCancel(context.Background())
	adminAddr := fmt.Sprintf("127.0.0.1:%d", etcdtest.FreePort(t))
	cfg := controlplane.DefaultConfig()
	cfg.Etcd = clientv3.Config{Endpoints: etcd.Endpoints(), DialTimeout: 2 * time.Second}
	cfg.XDSAddr, cfg.AdminAddr, cfg.Logger, cfg.AllowLoopback, cfg.ShutdownTimeout = "127.0.0.1:0", adminAddr, zerolog.Nop(), true, 2*time.Second
	cpDone := make(chan error, 1)
	go func() { cpDone <- controlplane.Run(ctx, cfg) }()

	b := agenttest.NewBackend(t)
	metricsAddr := fmt.Sprintf("127.0.0.1:%d", etcdtest.FreePort(t))
	acfg := agent.DefaultConfig()
	acfg.Etcd = clientv3.Config{Endpoints: etcd.Endpoints(), DialTimeout: 2 * time.Second}
	acfg.Service, acfg.ID, acfg.Address, acfg.Port, acfg.LoadSource = "app", "m1", "127.0.0.1", b.Port, agent.LoadHost
	acfg.HealthURL, acfg.SessionsURL, acfg.MetricsAddr = b.URL+"/healthcheck", b.URL+"/sessions", metricsAddr
	acfg.TTL, acfg.Interval, acfg.Heartbeat, acfg.DrainTimeout = 2*time.Second, 100*time.Millisecond, time.Second, 0
	skip := make(chan struct{})
	agDone := make(chan error, 1)
	go func() { agDone <- agent.Run(ctx, acfg, zerolog.Nop(), skip) }()
	t.Cleanup(func() {
		cancel()
		close(skip)
		for _, ch := range []chan error{cpDone, agDone} {
			if err := <-ch; err != nil {
				t.Logf("stopped: %v", err)
			}
		}
	})

	names := map[string]bool{}
	for _, addr := range []string{adminAddr, metricsAddr} {
		var fams map[string]*dto
		eventually.Saying(t, "scrape "+addr, 15*time.Second, func() (bool, string) {
			var err error
			if fams, err = scrape(addr); err == nil && (addr != adminAddr || fams["tether_ready"] != nil && fams["tether_ready"].ready) {
				return true, ""
			}
			select {
			case err := <-cpDone:
				cpDone <- err
				t.Fatalf("control plane stopped: %v", err)
			case err := <-agDone:
				agDone <- err
				t.Fatalf("agent stopped: %v", err)
			default:
			}
			return false, fmt.Sprint(err)
		})
		for n := range fams {
			names[n] = true
		}
	}
	return names
}

type dto struct{ ready bool }

func scrape(addr string) (map[string]*dto, error) {
	resp, err := http.Get("http://" + addr + "/metrics")
	if err != nil {
		return nil, err
	}
	defer resp.Body.Close()
	if resp.StatusCode != http.StatusOK {
		return nil, fmt.Errorf("GET /metrics: %s", resp.Status)
	}
	tp := expfmt.NewTextParser(model.UTF8Validation)
	fams, err := tp.TextToMetricFamilies(resp.Body)
	if err != nil {
		return nil, fmt.Errorf("parse /metrics: %w", err)
	}
	out := map[string]*dto{}
	for n, f := range fams {
		d := &dto{}
		if n == "tether_ready" && len(f.GetMetric()) == 1 {
			d.ready = f.GetMetric()[0].GetGauge().GetValue() == 1
		}
		out[n] = d
	}
	return out, nil
}

// metricNames parses a PromQL expression and returns the metric names it selects, the
// series suffixes of histograms and summaries mapped to their family.
func metricNames(t *testing.T, expr string) []string {
	t.Helper()
	e, err := parser.ParseExpr(expr)
	if err != nil {
		t.Errorf("%q: %v", expr, err)
		return nil
	}
	var names []string
	parser.Inspect(e, func(n parser.Node, _ []parser.Node) error {
		if vs, ok := n.(*parser.VectorSelector); ok {
			name := vs.Name
			for _, suf := range []string{"_bucket", "_sum", "_count"} {
				name = strings.TrimSuffix(name, suf)
			}
			names = append(names, name)
		}
		return nil
	})
	if len(names) == 0 {
		t.Errorf("%q selects no metric", expr)
	}
	return names
}

func TestAlertRulesAndDashboard(t *testing.T) {
	groups, errs := rulefmt.ParseFile("prometheus/tether-alerts.yml", false)
	for _, err := range errs {
		t.Errorf("prometheus/tether-alerts.yml: %v", err)
	}
	if t.Failed() {
		return
	}
	var alerts []string
	var exprs []string
	for _, g := range groups.Groups {
		for _, r := range g.Rules {
			alerts = append(alerts, r.Alert)
			exprs = append(exprs, r.Expr)
			if r.Annotations["summary"] == "" || r.Labels["severity"] == "" {
				t.Errorf("alert %s: needs a summary annotation and a severity label", r.Alert)
			}
		}
	}
	// The alerts an operator needs, by what they select.
	for _, m := range []string{"tether_lagging_envoys", "tether_held_instances", "tether_registry_rejected_entries",
		"tether_translate_problems", "tether_ready", "tether_envoys_below_min_version"} {
		found := false
		for _, e := range exprs {
			found = found || slices.Contains(metricNames(t, e), m)
		}
		if !found {
			t.Errorf("no alert on %s (alerts: %v)", m, alerts)
		}
	}

	raw, err := os.ReadFile("grafana/tether-dashboard.json")
	if err != nil {
		t.Fatal(err)
	}
	var dash struct {
		UID    string `json:"uid"`
		Panels []struct {
			Title   string `json:"title"`
			Targets []struct {
				Expr string `json:"expr"`
			} `json:"targets"`
		} `json:"panels"`
	}
	if err := json.Unmarshal(raw, &dash); err != nil {
		t.Fatalf("grafana/tether-dashboard.json: %v", err)
	}
	if dash.UID == "" || len(dash.Panels) == 0 {
		t.Fatalf("dashboard without uid or panels")
	}
	where := map[string]string{}
	for i, e := range exprs {
		where[e] = "alert " + alerts[i]
	}
	for _, p := range dash.Panels {
		if len(p.Targets) == 0 {
			t.Errorf("panel %q has no query", p.Title)
		}
		for _, tg := range p.Targets {
			exprs = append(exprs, tg.Expr)
			where[tg.Expr] = "panel " + p.Title
		}
	}

	have := exported(t)
	for _, e := range exprs {
		for _, n := range metricNames(t, e) {
			if !have[n] {
				t.Errorf("%s: %q uses %s, which neither a control plane nor an agent exports", where[e], e, n)
			}
		}
	}
}

// unitSettings reads the Key=Value lines of a systemd unit (the last value of each key).
func unitSettings(t *testing.T, path string) map[string]string {
	t.Helper()
	b, err := os.ReadFile(path)
	if err != nil {
		t.Fatal(err)
	}
	out := map[string]string{}
	for _, l := range strings.Split(string(b), "\n") {
		if k, v, ok := strings.Cut(strings.TrimSpace(l), "="); ok && !strings.HasPrefix(l, "#") {
			out[k] = v
		}
	}
	return out
}

// TestSystemdUnits: SIGTERM drains the agent, and systemd waits longer than the agent's
// default drain before it kills it; a bad flag (exit 2) is not restarted in a loop.
func TestSystemdUnits(t *testing.T) {
	agentUnit := unitSettings(t, "systemd/tether-agent@.service")
	stop, err := time.ParseDuration(strings.ReplaceAll(agentUnit["TimeoutStopSec"], "min", "m"))
	if err != nil {
		t.Fatalf("agent TimeoutStopSec %q: %v", agentUnit["TimeoutStopSec"], err)
	}
	if d := agent.DefaultConfig(); stop <= d.DrainTimeout+d.DrainSettle+5*time.Second {
		t.Errorf("agent TimeoutStopSec %s: systemd would kill the agent before its default drain (%s) ends", stop, d.DrainTimeout)
	}
	for name, u := range map[string]map[string]string{"agent": agentUnit, "control plane": unitSettings(t, "systemd/tether-controlplane.service")} {
		if u["KillSignal"] != "SIGTERM" || u["RestartPreventExitStatus"] != "2" || !strings.HasPrefix(u["ExecStart"], "/usr/local/bin/tether-") {
			t.Errorf("%s unit: KillSignal %q, RestartPreventExitStatus %q, ExecStart %q", name, u["KillSignal"], u["RestartPreventExitStatus"], u["ExecStart"])
		}
	}
}

// TestVersionStamp: the release build's -X stamp (Makefile's LDFLAGS) is what --version
// prints, in both binaries.
func TestVersionStamp(t *testing.T) {
	if testing.Short() {
		t.Skip("builds the binaries")
	}
	dir := t.TempDir()
	build := exec.Command("go", "build", "-ldflags", "-X github.com/tetherlb/tether/internal/version.Version=9.8.7-test",
		"-o", dir+string(os.PathSeparator), "../cmd/tether-controlplane", "../cmd/tether-agent")
	if out, err := build.CombinedOutput(); err != nil {
		t.Fatalf("go build: %v\n%s", err, out)
	}
	for _, bin := range []string{"tether-controlplane", "tether-agent"} {
		out, err := exec.Command(filepath.Join(dir, bin), "--version").CombinedOutput()
		if err != nil || !strings.HasPrefix(string(out), bin+" 9.8.7-test ") {
			t.Errorf("%s --version: %v, %q; want %q first", bin, err, out, bin+" 9.8.7-test")
		}
	}
}
