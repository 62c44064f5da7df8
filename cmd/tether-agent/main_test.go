package main

import (
	"bytes"
	"context"
	"fmt"
	"net"
	"net/http"
	"os"
	"os/exec"
	"path/filepath"
	"reflect"
	"runtime"
	"slices"
	"strconv"
	"strings"
	"sync"
	"syscall"
	"testing"
	"time"

	"github.com/tetherlb/tether/internal/agenttest"
	"github.com/tetherlb/tether/internal/etcdtest"
	"github.com/tetherlb/tether/internal/eventually"
	"github.com/tetherlb/tether/internal/syncbuf"
	"github.com/tetherlb/tether/internal/winsvc"
	"github.com/tetherlb/tether/registry"
	clientv3 "go.etcd.io/etcd/client/v3"
)

var (
	buildOnce sync.Once
	binPath   string
	buildErr  error
	buildDir  string
)

func TestMain(m *testing.M) {
	code := m.Run()
	if buildDir != "" {
		os.RemoveAll(buildDir)
	}
	os.Exit(code)
}

// binary builds tether-agent once for all tests.
func binary(t *testing.T) string {
	t.Helper()
	buildOnce.Do(func() {
		buildDir, buildErr = os.MkdirTemp("", "tether-agent-test")
		if buildErr != nil {
			return
		}
		binPath = filepath.Join(buildDir, "tether-agent")
		out, err := exec.Command("go", "build", "-o", binPath, ".").CombinedOutput()
		if err != nil {
			buildErr = fmt.Errorf("go build: %v\n%s", err, out)
		}
	})
	if buildErr != nil {
		t.Fatal(buildErr)
	}
	return binPath
}

type proc struct {
	cmd  *exec.Cmd
	out  *syncbuf.Buffer
	done chan struct{}
	err  error
}

func startAgent(t *testing.T, args ...string) *proc {
	t.Helper()
	p := &proc{cmd: exec.Command(binary(t), args...), out: &syncbuf.Buffer{}, done: make(chan struct{})}
	p.cmd.Stdout, p.cmd.Stderr = p.out, p.out
	p.cmd.Env = []string{"PATH=" + os.Getenv("PATH")}
	if err := p.cmd.Start(); err != nil {
		t.Fatal(err)
	}
	go func() { p.err = p.cmd.Wait(); close(p.done) }()
	t.Cleanup(func() {
		select {
		case <-p.done:
		default:
			_ = p.cmd.Process.Kill()
			<-p.done
		}
		if t.Failed() {
			t.Logf("agent output:\n%s", p.out.String())
		}
	})
	return p
}

// exitCode waits for the process and returns its exit code.
func (p *proc) exitCode(t *testing.T, timeout time.Duration) int {
	t.Helper()
	select {
	case <-p.done:
	case <-time.After(timeout):
		t.Fatalf("agent still running after %s; output:\n%s", timeout, p.out.String())
	}
	return p.cmd.ProcessState.ExitCode()
}

// agentArgs are the flags of an agent registering id for backend b with etcd.
func agentArgs(b *agenttest.Backend, etcd *etcdtest.Server, id string, extra ...string) []string {
	return append([]string{
		"--etcd-endpoints", etcd.ClientURL, "--service", "app", "--id", id, "--address", "127.0.0.1", "--port", strconv.Itoa(b.Port),
		"--health-url", b.URL + "/healthcheck", "--sessions-url", b.URL + "/sessions",
		"--ttl", "2s", "--interval", "100ms", "--heartbeat", "1s", "--metrics-addr", "",
	}, extra...)
}

// agentSetup starts an etcd, with a client of it, and a backend for an agent under test.
func agentSetup(t *testing.T) (*etcdtest.Server, *clientv3.Client, *agenttest.Backend) {
	t.Helper()
	etcd := etcdtest.Start(t)
	return etcd, etcd.Client(t), agenttest.NewBackend(t)
}

func inState(s registry.InstanceState) etcdtest.InstanceCond {
	return func(in *registry.Instance, _ int64) bool { return in != nil && in.State == s }
}

func absent(in *registry.Instance, _ int64) bool { return in == nil }

func TestKill9KeyExpires(t *testing.T) {
	etcd, cli, b := agentSetup(t)
	p := startAgent(t, agentArgs(b, etcd, "k9")...)
	etcdtest.WaitInstance(t, cli, "k9", 10*time.Second, "registered", inState(registry.StateAvailable))
	ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
	defer cancel()
	resp, err := cli.Get(ctx, registry.InstanceKey("/tether", "app", "k9"))
	if err != nil || len(resp.Kvs) != 1 || resp.Kvs[0].Lease == 0 {
		t.Fatalf("instance key %v, %v: want one key under a lease", resp, err)
	}
	lease := clientv3.LeaseID(resp.Kvs[0].Lease)
	if ttl, err := cli.TimeToLive(ctx, lease); err != nil || ttl.GrantedTTL != 2 {
		t.Fatalf("lease %x: %+v, %v; want granted for the 2s --ttl", int64(lease), ttl, err)
	}
	w := etcdtest.WatchInstance(t, cli, "k9")
	// The agent's last keep-alive was before the kill: the lease's remaining TTL is at least
	// 2 s less the keep-alive period (a third of it), so the key outlives the kill by over 1 s.
	killed := time.Now()
	if err := p.cmd.Process.Kill(); err != nil {
		t.Fatal(err)
	}
	p.exitCode(t, 5*time.Second)
	w.Next(t, 10*time.Second, "gone after the TTL", absent, inState(registry.StateAvailable))
	if waited := time.Since(killed); waited < time.Second {
		t.Errorf("key gone %s after kill -9: it should live until the 2s lease expires", waited)
	}
	if ttl, err := cli.TimeToLive(ctx, lease); err != nil || ttl.TTL != -1 {
		t.Errorf("lease %x after the key went: %+v, %v; want expired (TTL -1)", int64(lease), ttl, err)
	}
}

func TestSIGTERMDrainsThenExits0(t *testing.T) {
	etcd, cli, b := agentSetup(t)
	b.Sessions.Store(2)
	p := startAgent(t, agentArgs(b, etcd, "drain", "--drain-timeout", "1m", "--max-sessions", "100")...)
	etcdtest.WaitInstance(t, cli, "drain", 10*time.Second, "registered", inState(registry.StateAvailable))
	w := etcdtest.WatchInstance(t, cli, "drain")
	if err := p.cmd.Process.Signal(syscall.SIGTERM); err != nil {
		t.Fatal(err)
	}
	w.Next(t, 5*time.Second, "draining", inState(registry.StateDraining), inState(registry.StateAvailable))
	// Sessions remain: for five samples the agent runs and the key stays draining.
	b.WaitSamples(t, 5, 5*time.Second)
	select {
	case <-p.done:
		t.Fatalf("exited with 2 sessions open; output:\n%s", p.out.String())
	default:
	}
	b.Sessions.Store(0)
	if code := p.exitCode(t, 5*time.Second); code != 0 {
		t.Fatalf("exit code %d, want 0", code)
	}
	w.Next(t, time.Second, "removed", absent, inState(registry.StateDraining))
}

func TestDrainTimeoutExits0(t *testing.T) {
	etcd, cli, b := agentSetup(t)
	b.Sessions.Store(5)
	p := startAgent(t, agentArgs(b, etcd, "dt", "--drain-timeout", "1s")...)
	etcdtest.WaitInstance(t, cli, "dt", 10*time.Second, "registered", inState(registry.StateAvailable))
	w := etcdtest.WatchInstance(t, cli, "dt")
	if err := p.cmd.Process.Signal(syscall.SIGINT); err != nil {
		t.Fatal(err)
	}
	w.Next(t, 5*time.Second, "draining", inState(registry.StateDraining), inState(registry.StateAvailable))
	if code := p.exitCode(t, 5*time.Second); code != 0 {
		t.Fatalf("exit code %d, want 0", code)
	}
	w.Next(t, time.Second, "removed at the timeout", absent, inState(registry.StateDraining))
	if !strings.Contains(p.out.String(), "drain timeout") {
		t.Errorf("log does not say the drain timed out:\n%s", p.out.String())
	}
}

func TestDuplicateIDExitsNonZero(t *testing.T) {
	etcd, cli, b := agentSetup(t)
	startAgent(t, agentArgs(b, etcd, "dup")...)
	etcdtest.WaitInstance(t, cli, "dup", 10*time.Second, "first registered", inState(registry.StateAvailable))
	second := startAgent(t, agentArgs(b, etcd, "dup")...)
	if code := second.exitCode(t, 15*time.Second); code != 1 {
		t.Fatalf("second agent exit code %d, want 1", code)
	}
	if out := second.out.String(); !strings.Contains(out, "another live agent holds") || !strings.Contains(out, `\"dup\"`) {
		t.Fatalf("second agent's message does not explain the duplicate id:\n%s", out)
	}
	etcdtest.WaitInstance(t, cli, "dup", time.Second, "first still registered", inState(registry.StateAvailable))
}

func TestBadFlagsExit2(t *testing.T) {
	dir := t.TempDir()
	broken := filepath.Join(dir, "HealthCheck.json")
	if err := os.WriteFile(broken, []byte("/* header */\n{\"maxCPU\": 150}"), 0o644); err != nil {
		t.Fatal(err)
	}
	misspelt := filepath.Join(dir, "Misspelt.json")
	if err := os.WriteFile(misspelt, []byte("/* header */\n{\"enabled\": true, \"maxSesions\": 50}"), 0o644); err != nil {
		t.Fatal(err)
	}
	quoted := filepath.Join(dir, "Quoted.json")
	if err := os.WriteFile(quoted, []byte(`{"enabled": true, "maxSessions": "50"}`), 0o644); err != nil {
		t.Fatal(err)
	}
	base := []string{"--service", "app", "--port", "5000", "--sessions-url", "http://127.0.0.1:5000/sessions"}
	cases := []struct {
		args []string
		env  string
		want string
	}{
		{[]string{"--port", "5000"}, "", "--service"},
		{append(base, "--max-cpu", "120"), "", "--max-cpu"},
		{append(base, "--max-sessions", "-1"), "", "--max-sessions"},
		{append(base, "--ttl", "soon"), "", "-ttl"},
		{append(base, "--healthcheck-file", broken), "", `"maxCPU"`},
		{base, "TETHER_MAX_SESSIONS=many", "TETHER_MAX_SESSIONS"},
		{base, "TETHER_INTERVAL=1h", "--interval"},
		{append(base, "--log-format", "xml"), "", "--log-format"},
		{append(base, "--etcd-endpoints", "http://127.0.0.1:2379", "--etcd-ca", broken), "", "plaintext"},
		{append(base, "--wisej-version", "4", "--healthcheck-file", broken), "", "--wisej-version"},
		{append(base, "--healthcheck-file", misspelt), "", `unknown field "maxSesions"`},
		{append(base, "--healthcheck-file", quoted), "", `"50" is a string, not a whole number`},
		{base, "TETHER_MAX_SESIONS=50", "TETHER_MAX_SESIONS"},
	}
	for _, c := range cases {
		cmd := exec.Command(binary(t), c.args...)
		cmd.Env = []string{"PATH=" + os.Getenv("PATH")}
		if c.env != "" {
			cmd.Env = append(cmd.Env, c.env)
		}
		out, _ := cmd.CombinedOutput()
		if code := cmd.ProcessState.ExitCode(); code != 2 || !strings.Contains(string(out), c.want) {
			t.Errorf("%v %s: exit %d, output %q; want exit 2 naming %s", c.args, c.env, code, out, c.want)
		}
	}
}

// TestRefusedEtcdNamesEndpoint: an agent pointed at an endpoint where nothing listens says
// so at once, naming the endpoint and the likely cause, and keeps trying (etcd may come up).
func TestRefusedEtcdNamesEndpoint(t *testing.T) {
	l, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	ep := l.Addr().String()
	l.Close()
	b := agenttest.NewBackend(t)
	p := startAgent(t, "--etcd-endpoints", ep, "--service", "app", "--id", "r1", "--address", "127.0.0.1", "--port", strconv.Itoa(b.Port),
		"--ttl", "2s", "--interval", "100ms", "--metrics-addr", "", "--log-format", "json")
	eventually.Saying(t, fmt.Sprintf("a log naming %s, the refused connection and --etcd-endpoints", ep), 3*time.Second, func() (bool, string) {
		out := p.out.String()
		return strings.Contains(out, "connection refused") && strings.Contains(out, ep) && strings.Contains(out, "--etcd-endpoints"), "\n" + out
	})
	select {
	case <-p.done:
		t.Fatalf("agent exited; it should keep trying:\n%s", p.out.String())
	default:
	}
}

func TestFlagsHealthCheckFileAndEnv(t *testing.T) {
	file := filepath.Join(t.TempDir(), "HealthCheck.json")
	src := "/**\n * HealthCheck.json\n */\n{\n\t\"enabled\": true,\n\t\"maxSessions\": 50,\n\t\"maxMemory\": 70,\n\t\"maxCPU\": 90,\n\t\"returUrl\": \"\"\n}\n"
	if err := os.WriteFile(file, []byte(src), 0o644); err != nil {
		t.Fatal(err)
	}
	env := map[string]string{"TETHER_MAX_CPU": "80", "TETHER_PORT": "5000"}
	o, err := parseFlags([]string{"--service", "app", "--sessions-url", "http://127.0.0.1:5000/s", "--healthcheck-file", file,
		"--max-sessions", "60", "--label", "a=1,b=2", "--label", "c=3", "--pid", strconv.Itoa(os.Getpid())},
		func(k string) (string, bool) { v, ok := env[k]; return v, ok }, &bytes.Buffer{})
	if err != nil {
		t.Fatal(err)
	}
	th := o.cfg.Thresholds
	if th.MaxSessions != 60 || th.MaxCPU != 80 || th.MaxMemory != 70 {
		t.Errorf("thresholds %+v: want the flag's 60 sessions, the environment's 80%% CPU, the file's 70%% memory", th)
	}
	if o.cfg.Port != 5000 || len(o.cfg.Labels) != 3 || o.cfg.Labels["b"] != "2" || o.cfg.LoadSource != "process" {
		t.Errorf("config %+v", o.cfg)
	}
	o, err = parseFlags([]string{"--service", "app", "--port", "5000", "--health-url", "http://10.0.0.5:5000/healthcheck", "--max-sessions", "100"},
		func(string) (string, bool) { return "", false }, &bytes.Buffer{})
	if err != nil || o.cfg.SessionsURL != "http://10.0.0.5:5000/sessions" {
		t.Fatalf("--max-sessions without --sessions-url: %v, sessions URL %q; want /sessions on the health URL's host", err, o.cfg.SessionsURL)
	}
	if got := o.cfg.Etcd.Endpoints; len(got) != 1 || got[0] != "http://127.0.0.1:2379" {
		t.Errorf("etcd endpoints %v", got)
	}
}

// node_exporter's 9100 is taken on many hosts: the agent with its default --metrics-addr
// must still start, and publish where its /metrics went.
func TestDefaultMetricsAddrBesideNodeExporter(t *testing.T) {
	if l, err := net.Listen("tcp", "127.0.0.1:9100"); err == nil { // else something holds it already
		t.Cleanup(func() { l.Close() })
	}
	etcd, cli, b := agentSetup(t)
	var args []string
	for _, a := range agentArgs(b, etcd, "ne") {
		if a == "--metrics-addr" {
			break // the rest of b.args is the metrics flag's value: left at its default
		}
		args = append(args, a)
	}
	startAgent(t, args...)
	var metrics string
	etcdtest.WaitInstance(t, cli, "ne", 10*time.Second, "registered with its metrics address", func(in *registry.Instance, _ int64) bool {
		if in == nil || in.State != registry.StateAvailable {
			return false
		}
		metrics = in.Agent.Metrics
		return true
	})
	if !strings.HasPrefix(metrics, "127.0.0.1:181") {
		t.Fatalf("agent.metrics %q, want 127.0.0.1 on a port from 18100", metrics)
	}
	resp, err := http.Get("http://" + metrics + "/healthz")
	if err != nil {
		t.Fatal(err)
	}
	resp.Body.Close()
	if resp.StatusCode != http.StatusOK {
		t.Errorf("/healthz at %s: %d", metrics, resp.StatusCode)
	}
}

func TestFlagsWisej3HealthCheckFile(t *testing.T) {
	file := filepath.Join(t.TempDir(), "HealthCheck.json")
	if err := os.WriteFile(file, []byte("/* Wisej 3 */\n{\"enabled\": true, \"maxMemory\": 2048}"), 0o644); err != nil {
		t.Fatal(err)
	}
	none := func(string) (string, bool) { return "", false }
	o, err := parseFlags([]string{"--service", "app", "--port", "5000", "--healthcheck-file", file}, none, &bytes.Buffer{})
	if err != nil {
		t.Fatal(err)
	}
	if th := o.cfg.Thresholds; th.MaxMemoryMB != 2048 || th.MaxMemory != 0 {
		t.Errorf("thresholds %+v: want maxMemory 2048 read as 2048 MB", th)
	}
	_, err = parseFlags([]string{"--service", "app", "--port", "5000", "--healthcheck-file", file, "--wisej-version", "2"}, none, &bytes.Buffer{})
	if err == nil || !strings.Contains(err.Error(), "maxMemory") {
		t.Errorf("--wisej-version 2 with maxMemory 2048: %v, want an error naming maxMemory", err)
	}
}

// The flags stored with a Windows service give the same configuration when the service
// starts in System32: relative file paths are made absolute.
func TestServiceArgsRoundTrip(t *testing.T) {
	dir := t.TempDir()
	if err := os.WriteFile(filepath.Join(dir, "HealthCheck.json"), []byte(`{"enabled": true, "maxSessions": 40, "maxMemory": 4096}`), 0o644); err != nil {
		t.Fatal(err)
	}
	t.Chdir(dir)
	none := func(string) (string, bool) { return "", false }
	args := []string{"--service", "app", "--port", "5000", "--healthcheck-file", "HealthCheck.json", "--label", "a=1",
		"--health-url", "http://127.0.0.1:5000/healthcheck.wx", "--drain-timeout", "3m", "--metrics-addr", "0.0.0.0:auto"}
	o, err := parseFlags(args, none, &bytes.Buffer{})
	if err != nil {
		t.Fatal(err)
	}
	stored, err := serviceArgs(o)
	if err != nil {
		t.Fatal(err)
	}
	want := "--healthcheck-file=" + filepath.Join(dir, "HealthCheck.json")
	if !slices.Contains(stored, want) {
		t.Errorf("stored %v lacks %s", stored, want)
	}
	t.Chdir(t.TempDir()) // as a service, elsewhere
	again, err := parseFlags(stored, none, &bytes.Buffer{})
	if err != nil {
		t.Fatalf("stored flags %v: %v", stored, err)
	}
	if !reflect.DeepEqual(again.cfg, o.cfg) {
		t.Errorf("stored flags give\n%+v\nwant\n%+v", again.cfg, o.cfg)
	}
}

func TestServiceCommandInput(t *testing.T) {
	type serviceCase struct {
		args []string
		code int
		want string
	}
	cases := []serviceCase{
		{[]string{}, 2, "Usage"},
		{[]string{"restart"}, 2, "Usage"},
		{[]string{"start"}, 2, "--name"},
		{[]string{"install", "--port", "5000"}, 2, "--service"},
		{[]string{"install", "--service", "app", "--port", "5000", "--etcd-user", "u"}, 2, "--etcd-password-file"},
	}
	if runtime.GOOS != "windows" {
		cases = append(cases, serviceCase{[]string{"stop", "--service", "app", "--port", "5000"}, 1, "only on Windows"})
	}
	for _, c := range cases {
		var out, errOut bytes.Buffer
		code := serviceCommand(c.args, &out, &errOut)
		if code != c.code || !strings.Contains(errOut.String(), c.want) {
			t.Errorf("service %v: exit %d, %q; want exit %d naming %s", c.args, code, errOut.String(), c.code, c.want)
		}
	}
	name, rest, err := serviceName([]string{"--service=app", "--port", "5000", "--name", "web", "--max-sessions", "9"})
	if err != nil || name != "web" || strings.Join(rest, " ") != "--service=app --port 5000 --max-sessions 9" {
		t.Errorf("serviceName: %q %v %v", name, rest, err)
	}
	if name, _, _ := serviceName([]string{"--service", "app", "--port=5000"}); name != "tether-agent-app-5000" {
		t.Errorf("derived name %q", name)
	}
}

// service stop prints how long the drain has lasted every 10 s, not the checkpoint every
// second, and says so when the agent's checkpoint stops growing past its wait hint.
func TestStopReporter(t *testing.T) {
	r := stopReporter{every: 10 * time.Second}
	hint := 10 * time.Second
	var lines []string
	cp := uint32(1)
	for s := 1; s <= 60; s++ {
		if s <= 30 && s%5 == 0 {
			cp++ // the agent's progress every WaitHint/2, then it stalls
		}
		if l := r.line(winsvc.Progress{Elapsed: time.Duration(s) * time.Second, CheckPoint: cp, WaitHint: hint}); l != "" {
			lines = append(lines, l)
		}
	}
	if len(lines) != 6 {
		t.Fatalf("%d lines in 60 s, want 6:\n%s", len(lines), strings.Join(lines, "\n"))
	}
	if !strings.HasPrefix(lines[0], "draining for 10s: waiting for the instance's sessions to end") || !strings.Contains(lines[4], "no progress") ||
		!strings.Contains(lines[5], "draining for 1m0s: the agent has shown no progress for 30s") || strings.Contains(lines[3], "no progress") {
		t.Errorf("lines:\n%s", strings.Join(lines, "\n"))
	}
}

// An agent killed with -9 and started again (a service manager's restart) while its lease
// lives: the new agent adopts the key in one etcd transaction, so the instance never leaves
// the registry, and the key is bound to the new lease long before the old one expires.
func TestKill9RestartAdoptsKey(t *testing.T) {
	etcd, cli, b := agentSetup(t)
	args := agentArgs(b, etcd, "k9", "--ttl", "6s")
	p := startAgent(t, args...)
	first := etcdtest.WaitInstance(t, cli, "k9", 10*time.Second, "registered", inState(registry.StateAvailable))
	ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
	defer cancel()
	resp, err := cli.Get(ctx, registry.InstanceKey("/tether", "app", "k9"))
	if err != nil || len(resp.Kvs) != 1 || resp.Kvs[0].Lease == 0 {
		t.Fatalf("instance key %v, %v: want one key under a lease", resp, err)
	}
	old := resp.Kvs[0].Lease
	w := etcdtest.WatchInstance(t, cli, "k9")
	if err := p.cmd.Process.Kill(); err != nil {
		t.Fatal(err)
	}
	p.exitCode(t, 5*time.Second)
	killed := time.Now()
	startAgent(t, args...)
	in := w.Next(t, 10*time.Second, "adopted by the restarted agent",
		func(in *registry.Instance, lease int64) bool { return in != nil && lease != old },
		func(in *registry.Instance, _ int64) bool { return in != nil })
	if took := time.Since(killed); took > 4*time.Second {
		t.Errorf("adopted %s after the kill: the 6s lease should not have been waited for", took)
	}
	if in.Port != first.Port || in.Address != first.Address {
		t.Errorf("adopted value %+v, want the same server as %+v", in, first)
	}
	w.Quiet(t, "after the adoption", func(in *registry.Instance, lease int64) bool { return in != nil && lease != old })
}
