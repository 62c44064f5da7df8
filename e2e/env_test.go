package e2e_test

import (
	"bytes"
	"context"
	"encoding/json"
	"fmt"
	"net"
	"net/http"
	"os"
	"os/exec"
	"path/filepath"
	"strconv"
	"sync"
	"syscall"
	"testing"
	"time"

	"github.com/rs/zerolog"
	clientv3 "go.etcd.io/etcd/client/v3"
	"go.uber.org/zap"

	"github.com/tetherlb/tether/agent"
	"github.com/tetherlb/tether/controlplane"
	"github.com/tetherlb/tether/internal/cptest"
	"github.com/tetherlb/tether/internal/etcdtest"
	"github.com/tetherlb/tether/registry"
)

const (
	// service is the registry service of the three sessionapp instances.
	service = "app"
	// maxSessions is each agent's --max-sessions; synthetic load of this many makes it full.
	maxSessions = 100
)

// names are the sessionapp instances, also their instance IDs.
var names = []string{"app1", "app2", "app3"}

// cookieName is the Envoy session cookie of the service: no service configuration is written,
// so the defaults apply.
var cookieName = registry.DefaultServiceConfig(service).Affinity.CookieName

var (
	binDir    string // removed by TestMain
	buildOnce sync.Once
	buildPath string
	buildErr  error
)

func TestMain(m *testing.M) {
	dir, err := os.MkdirTemp("", "tether-e2e-")
	if err != nil {
		fmt.Fprintln(os.Stderr, "e2e: temp dir:", err)
		os.Exit(1)
	}
	binDir = dir
	code := m.Run()
	os.RemoveAll(dir)
	os.Exit(code)
}

// sessionappBin builds examples/sessionapp (a main package, so it runs as a process) once per
// test binary and returns its path. `go test` puts its own go command first in PATH.
func sessionappBin(t testing.TB) string {
	t.Helper()
	buildOnce.Do(func() {
		goBin, err := exec.LookPath("go")
		if err != nil {
			buildErr = fmt.Errorf("find the go command to build sessionapp: %w", err)
			return
		}
		ctx, cancel := context.WithTimeout(context.Background(), 5*time.Minute)
		defer cancel()
		out := filepath.Join(binDir, "sessionapp")
		cmd := exec.CommandContext(ctx, goBin, "build", "-o", out, "github.com/tetherlb/tether/examples/sessionapp")
		if b, err := cmd.CombinedOutput(); err != nil {
			buildErr = fmt.Errorf("go build sessionapp: %w\n%s", err, b)
			return
		}
		buildPath = out
	})
	if buildErr != nil {
		t.Fatal(buildErr)
	}
	return buildPath
}

// output collects a process's (or the in-process components') output. When addr is set, it
// receives the address of sessionapp's "sessionapp listening" log line.
type output struct {
	mu      sync.Mutex
	all     bytes.Buffer
	partial []byte
	addr    chan string
}

func (o *output) Write(p []byte) (int, error) {
	o.mu.Lock()
	defer o.mu.Unlock()
	o.all.Write(p)
	if o.addr == nil {
		return len(p), nil
	}
	o.partial = append(o.partial, p...)
	for i := bytes.IndexByte(o.partial, '\n'); i >= 0; i = bytes.IndexByte(o.partial, '\n') {
		var line struct{ Message, Listen string }
		if json.Unmarshal(o.partial[:i], &line) == nil && line.Message == "sessionapp listening" && line.Listen != "" {
			select {
			case o.addr <- line.Listen:
			default:
			}
		}
		o.partial = o.partial[i+1:]
	}
	return len(p), nil
}

// tail returns the last n bytes of the output.
func (o *output) tail(n int) string {
	o.mu.Lock()
	defer o.mu.Unlock()
	b := o.all.Bytes()
	if len(b) > n {
		b = b[len(b)-n:]
	}
	return string(b)
}

// dumpOnFailure logs the output's tail when the test has failed by the time cleanups run.
func dumpOnFailure(t testing.TB, what string, o *output) {
	t.Cleanup(func() {
		if t.Failed() {
			t.Logf("--- %s (last 16 KiB) ---\n%s", what, o.tail(16<<10))
		}
	})
}

// proc is a child process stopped with SIGTERM (then killed after a grace period) when the
// test ends.
type proc struct {
	name string
	out  *output
	done chan struct{}
	err  error // how the process ended; set before done is closed
}

func startProc(t testing.TB, name string, out *output, grace time.Duration, bin string, args ...string) *proc {
	t.Helper()
	ctx, cancel := context.WithCancel(context.Background())
	cmd := exec.CommandContext(ctx, bin, args...)
	cmd.Cancel = func() error { return cmd.Process.Signal(syscall.SIGTERM) }
	cmd.WaitDelay = grace
	cmd.Stdout, cmd.Stderr = out, out
	if err := cmd.Start(); err != nil {
		cancel()
		t.Fatalf("start %s (%s): %v", name, bin, err)
	}
	p := &proc{name: name, out: out, done: make(chan struct{})}
	go func() {
		p.err = cmd.Wait()
		close(p.done)
	}()
	dumpOnFailure(t, name+" output", out)
	t.Cleanup(func() {
		cancel()
		select {
		case <-p.done:
		case <-time.After(grace + 5*time.Second):
			t.Errorf("%s still running %s after SIGTERM", name, grace+5*time.Second)
		}
	})
	return p
}

// exited reports whether the process has ended, and how.
func (p *proc) exited() (bool, error) {
	select {
	case <-p.done:
		return true, p.err
	default:
		return false, nil
	}
}

// backend is one sessionapp process and its agent.
type backend struct {
	name      string
	addr      string // 127.0.0.1:port
	proc      *proc
	stopAgent context.CancelFunc
	agentDone chan error // nil once the agent has been stopped and waited for
}

// url is the backend's own URL for path, bypassing Envoy.
func (b *backend) url(path string) string { return "http://" + b.addr + path }

// envConfig varies the setup: the service the three instances register under (default
// service) and the agents' --available-url path (default none).
type envConfig struct {
	Service       string
	AvailablePath string
}

// env is the whole setup but Envoy: etcd, the control plane, three sessionapp instances,
// each registered by a real agent.
type env struct {
	cfg        envConfig
	service    string // the instances' service
	cookieName string // its default session cookie
	etcd       *etcdtest.Server
	cp         *controlplane.ControlPlane
	listenPort int
	logs       *output // control plane and agents
	log        zerolog.Logger
	backends   map[string]*backend
	byAddr     map[string]string // backend address -> name
}

// newEnv starts etcd, the control plane (xDS and admin on free loopback ports, the Envoy
// listener on a free port), and app1..app3 with their agents, and waits until the control
// plane has published its first snapshot.
func newEnv(t testing.TB) *env {
	t.Helper()
	return newEnvWith(t, envConfig{})
}

// newEnvWith is newEnv with a varied setup.
func newEnvWith(t testing.TB, cfg envConfig) *env {
	t.Helper()
	if cfg.Service == "" {
		cfg.Service = service
	}
	e := &env{cfg: cfg, service: cfg.Service, cookieName: registry.DefaultCookieName(cfg.Service),
		logs: &output{}, backends: map[string]*backend{}, byAddr: map[string]string{}}
	dumpOnFailure(t, "control plane and agent logs", e.logs)
	e.log = zerolog.New(e.logs).With().Timestamp().Logger().Level(zerolog.InfoLevel)
	e.etcd = etcdtest.Start(t)
	e.listenPort = etcdtest.FreePort(t)

	// Loopback backends allowed: Envoy and the backends share this host.
	cp := cptest.Start(t, controlplane.Config{
		Etcd:       clientv3.Config{Endpoints: e.etcd.Endpoints()},
		ListenPort: uint32(e.listenPort),
		Logger:     e.log.With().Str("component", "controlplane").Logger(),
	})
	e.cp = cp

	for _, name := range names {
		e.startBackend(t, name)
	}
	select {
	case <-cp.Ready():
	case <-time.After(15 * time.Second):
		t.Fatal("control plane not ready within 15s")
	}
	return e
}

// startBackend runs one sessionapp on a free loopback port and its agent in-process: health
// from /healthcheck, sessions from /sessions, --max-sessions maxSessions, and a drain timeout
// of 0 so that stopping the agent removes the instance at once.
func (e *env) startBackend(t testing.TB, name string) {
	t.Helper()
	out := &output{addr: make(chan string, 1)}
	p := startProc(t, name, out, 5*time.Second, sessionappBin(t), "--listen", "127.0.0.1:0", "--name", name)
	var addr string
	select {
	case addr = <-out.addr:
	case <-p.done:
		t.Fatalf("%s exited before listening: %v", name, p.err)
	case <-time.After(15 * time.Second):
		t.Fatalf("%s did not log its listen address within 15s", name)
	}
	_, portStr, err := net.SplitHostPort(addr)
	if err != nil {
		t.Fatalf("%s listen address %q: %v", name, addr, err)
	}
	port, err := strconv.Atoi(portStr)
	if err != nil {
		t.Fatalf("%s listen address %q: %v", name, addr, err)
	}
	b := &backend{name: name, addr: addr, proc: p}
	base := b.url("")
	cfg := agent.Config{
		Etcd:         clientv3.Config{Endpoints: e.etcd.Endpoints(), DialTimeout: 2 * time.Second, Logger: zap.NewNop()},
		Prefix:       registry.DefaultPrefix,
		Service:      e.service,
		ID:           name,
		Address:      "127.0.0.1",
		Port:         port,
		HealthURL:    base + "/healthcheck",
		AvailableURL: availableURL(base, e.cfg.AvailablePath),
		SessionsURL:  base + "/sessions",
		ProbeTimeout: time.Second,
		Thresholds:   registry.Thresholds{MaxSessions: maxSessions},
		LoadSource:   agent.LoadHost,
		TTL:          5 * time.Second,
		Interval:     100 * time.Millisecond,
		Heartbeat:    2 * time.Second,
		DrainTimeout: 0,
	}
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan error, 1)
	log := e.log.With().Str("component", "agent").Logger()
	go func() { done <- agent.Run(ctx, cfg, log, nil) }()
	b.stopAgent, b.agentDone = cancel, done
	t.Cleanup(func() { b.stop(t) })
	e.backends[name] = b
	e.byAddr[addr] = name
}

// availableURL is the agent's --available-url: base+path, or none when path is empty.
func availableURL(base, path string) string {
	if path == "" {
		return ""
	}
	return base + path
}

// stop stops the backend's agent, which deletes its instance key (drain timeout 0); the
// sessionapp process keeps running.
func (b *backend) stop(t testing.TB) {
	t.Helper()
	if b.agentDone == nil {
		return
	}
	b.stopAgent()
	select {
	case err := <-b.agentDone:
		if err != nil {
			t.Errorf("agent %s: %v", b.name, err)
		}
	case <-time.After(15 * time.Second):
		t.Errorf("agent %s did not stop within 15s", b.name)
	}
	b.agentDone = nil
}

// post sends a POST to one backend directly and requires a 200.
func (e *env) post(t testing.TB, name, path string) {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
	defer cancel()
	req, err := http.NewRequestWithContext(ctx, http.MethodPost, e.backends[name].url(path), nil)
	if err != nil {
		t.Fatalf("POST %s%s: %v", name, path, err)
	}
	resp, err := http.DefaultClient.Do(req)
	if err != nil {
		t.Fatalf("POST %s%s: %v", name, path, err)
	}
	resp.Body.Close()
	if resp.StatusCode != http.StatusOK {
		t.Fatalf("POST %s%s: status %d, want 200", name, path, resp.StatusCode)
	}
}

// setFull gives a backend maxSessions synthetic sessions, over its agent's --max-sessions, so
// that the agent publishes it as full; off clears them.
func (e *env) setFull(t testing.TB, name string, on bool) {
	t.Helper()
	n := 0
	if on {
		n = maxSessions
	}
	e.post(t, name, fmt.Sprintf("/load?sessions=%d", n))
}

// setRefuse turns a backend's refuse mode on or off: 503 to requests without its own session.
// Its health check keeps answering 202, so it stays available in the registry.
func (e *env) setRefuse(t testing.TB, name string, on bool) {
	t.Helper()
	e.post(t, name, "/admin/refuse?on="+strconv.FormatBool(on))
}

// endpointStates is instance name (or address, for an unknown one) -> health status name,
// as a simulated or real Envoy sees the service's endpoints.
type endpointStates map[string]string

// statesAre reports whether got holds exactly the instances of want with those statuses.
func statesAre(got endpointStates, want endpointStates) bool {
	if len(got) != len(want) {
		return false
	}
	for k, v := range want {
		if got[k] != v {
			return false
		}
	}
	return true
}

// allHealthy is the expected state of every backend at start.
func allHealthy() endpointStates {
	s := endpointStates{}
	for _, n := range names {
		s[n] = "HEALTHY"
	}
	return s
}
