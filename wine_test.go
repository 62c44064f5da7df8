package tether_test

import (
	"context"
	"encoding/json"
	"fmt"
	"net/http"
	"os"
	"os/exec"
	"path/filepath"
	"regexp"
	"strconv"
	"strings"
	"testing"
	"time"

	"github.com/tetherlb/tether/internal/etcdtest"
	"github.com/tetherlb/tether/internal/eventually"
	"github.com/tetherlb/tether/internal/overview"
	"github.com/tetherlb/tether/internal/syncbuf"
	"github.com/tetherlb/tether/registry"
)

// TestWindowsServiceUnderWine runs the Windows agent as a service under Wine's service manager
// (a Debian trixie chroot with Wine 10, made by scripts/wine-chroot.sh; `make test-windows`),
// against a real control plane and app on the host's loopback: install, start, registered,
// stop drains (with progress) and deregisters, exit codes, uninstall.
func TestWindowsServiceUnderWine(t *testing.T) {
	root := os.Getenv("TETHER_WINE_CHROOT")
	if root == "" {
		t.Skip("TETHER_WINE_CHROOT names no chroot with Wine: run make test-windows")
	}
	if _, err := os.Stat(filepath.Join(root, ".tether-wine-ready")); err != nil {
		t.Fatalf("TETHER_WINE_CHROOT=%s is not a finished chroot (scripts/wine-chroot.sh makes one): %v", root, err)
	}
	// The chroot's /tmp holds the agent and the Wine prefix: Z:\tmp\... to Wine.
	work, err := os.MkdirTemp(filepath.Join(root, "tmp"), "tether-wine-")
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { _ = os.RemoveAll(work) })
	inRoot := "/tmp/" + filepath.Base(work)
	exe := `Z:` + strings.ReplaceAll(inRoot, "/", `\`) + `\tether-agent.exe`

	bin := t.TempDir()
	build := exec.Command("go", "build", "-o", bin+string(filepath.Separator), "./cmd/tether-controlplane", "./examples/sessionapp")
	if out, err := build.CombinedOutput(); err != nil {
		t.Fatalf("go build: %v\n%s", err, out)
	}
	build = exec.Command("go", "build", "-o", filepath.Join(work, "tether-agent.exe"), "./cmd/tether-agent")
	build.Env = append(os.Environ(), "GOOS=windows", "GOARCH=amd64", "CGO_ENABLED=0")
	if out, err := build.CombinedOutput(); err != nil {
		t.Fatalf("go build (windows): %v\n%s", err, out)
	}

	etcdPort, appPort, admin := etcdtest.FreePort(t), etcdtest.FreePort(t), etcdtest.FreePort(t)
	adminURL := fmt.Sprintf("http://127.0.0.1:%d", admin)
	appURL := fmt.Sprintf("http://127.0.0.1:%d", appPort)
	start(t, "control plane", filepath.Join(bin, "tether-controlplane"), "--data-dir", t.TempDir(),
		"--embedded-client-url", fmt.Sprintf("http://127.0.0.1:%d", etcdPort),
		"--embedded-peer-url", fmt.Sprintf("http://127.0.0.1:%d", etcdtest.FreePort(t)),
		"--xds-addr", fmt.Sprintf("127.0.0.1:%d", etcdtest.FreePort(t)), "--admin-addr", fmt.Sprintf("127.0.0.1:%d", admin),
		"--allow-loopback-backends", "--coalesce-quiet", "50ms", "--log-format", "json")
	start(t, "app", filepath.Join(bin, "sessionapp"), "--listen", fmt.Sprintf("127.0.0.1:%d", appPort))
	waitHTTP(t, adminURL+"/readyz", 30*time.Second)
	waitHTTP(t, appURL+"/healthcheck", 10*time.Second)

	began := time.Now()
	w := &wine{t: t, root: root, prefix: inRoot + "/prefix"}
	w.boot(filepath.Join(work, "prefix"))
	booted := time.Now()
	name := fmt.Sprintf("tether-agent-winapp-%d", appPort)
	hc := filepath.Join(work, "HealthCheck.json")
	if err := os.WriteFile(hc, []byte(`{"enabled": true, "maxSessions": 50}`), 0o600); err != nil {
		t.Fatal(err)
	}
	flags := []string{"--service", "winapp", "--port", strconv.Itoa(appPort), "--id", "wine-1", "--address", "127.0.0.1",
		"--etcd-endpoints", fmt.Sprintf("127.0.0.1:%d", etcdPort), "--health-url", appURL + "/healthcheck",
		"--sessions-url", appURL + "/sessions", "--healthcheck-file", `Z:` + strings.ReplaceAll(inRoot, "/", `\`) + `\HealthCheck.json`,
		"--interval", "200ms", "--heartbeat", "2s", "--ttl", "5s", "--drain-settle", "200ms", "--drain-timeout", "2m", "--metrics-addr", ""}

	// A console run of the service path is refused: only the service manager starts it.
	if out, code := w.run(30*time.Second, append([]string{exe, "service", "run"}, flags...)...); code != 1 || !strings.Contains(out, "only the service manager") {
		t.Errorf("service run from a console: exit %d, want 1 naming the service manager:\n%s", code, out)
	}

	out, code := w.run(60*time.Second, append([]string{exe, "service", "install"}, flags...)...)
	if code != 0 || !strings.Contains(out, "service "+name+" installed") {
		t.Fatalf("service install: exit %d:\n%s", code, out)
	}
	key := `HKLM\System\CurrentControlSet\Services\` + name
	if out, _ := w.run(30*time.Second, "reg.exe", "query", key, "/v", "ImagePath"); !strings.Contains(out, `tether-agent.exe service run --address=127.0.0.1`) {
		t.Errorf("the stored command line does not run `service run`:\n%s", out)
	}
	if out, code := w.run(60*time.Second, exe, "service", "install", "--name", name, "--service", "winapp", "--port", "1"); code != 1 || !strings.Contains(out, "already exists") {
		t.Errorf("install over an existing service: exit %d, want 1 naming it:\n%s", code, out)
	}

	if out, code := w.run(60*time.Second, exe, "service", "start", "--name", name); code != 0 || !strings.Contains(out, "running") {
		t.Fatalf("service start: exit %d:\n%s", code, out)
	}
	waitInstance(t, adminURL, "registered available", 30*time.Second, func(in *overview.Instance) bool {
		return in != nil && in.State == registry.StateAvailable
	})

	// Sessions keep the drain waiting: service stop reports its progress meanwhile.
	post(t, appURL+"/load?sessions=2")
	waitInstance(t, adminURL, "2 sessions", 30*time.Second, func(in *overview.Instance) bool { return in != nil && in.Load.Sessions == 2 })
	stop := w.start(exe, "service", "stop", "--name", name)
	waitInstance(t, adminURL, "draining", 30*time.Second, func(in *overview.Instance) bool {
		return in != nil && in.State == registry.StateDraining
	})
	waitOutput(t, stop.out, "draining for 10s: waiting for the instance's sessions to end", 30*time.Second)
	if out, _ := w.run(30*time.Second, "sc.exe", "query", name); !strings.Contains(out, "STOP_PENDING") {
		t.Errorf("sc query during the drain:\n%s", out)
	}
	post(t, appURL+"/load?sessions=0")
	if code := stop.wait(t, 60*time.Second); code != 0 || !strings.Contains(stop.out.String(), "service "+name+" stopped") {
		t.Fatalf("service stop: exit %d:\n%s", code, stop.out)
	}
	// The agent's checkpoint, which mgr.Service.Query leaves at 0, grows during the drain.
	progress := regexp.MustCompile(`draining for 10s: .*\(agent progress ([0-9]+)\)`).FindStringSubmatch(stop.out.String())
	if progress == nil || progress[1] == "0" || progress[1] == "1" || strings.Contains(stop.out.String(), "no progress") {
		t.Errorf("service stop's progress:\n%s", stop.out)
	}
	waitInstance(t, adminURL, "deregistered", 15*time.Second, func(in *overview.Instance) bool { return in == nil })
	if out, _ := w.run(30*time.Second, "sc.exe", "query", name); !strings.Contains(out, "STOPPED") {
		t.Errorf("sc query after the stop:\n%s", out)
	}

	// Bad stored flags (the HealthCheck.json is gone): the service stops with exit code 2.
	if err := os.Remove(hc); err != nil {
		t.Fatal(err)
	}
	if out, code := w.run(60*time.Second, exe, "service", "start", "--name", name); code != 1 || !strings.Contains(out, "exit code 2") {
		t.Errorf("service start with bad stored flags: exit %d, want 1 reporting the service's exit code 2:\n%s", code, out)
	}

	if out, code := w.run(60*time.Second, exe, "service", "uninstall", "--name", name); code != 0 || !strings.Contains(out, "removed") {
		t.Fatalf("service uninstall: exit %d:\n%s", code, out)
	}
	if out, code := w.run(30*time.Second, "sc.exe", "query", name); code == 0 {
		t.Errorf("sc query after uninstall: exit 0:\n%s", out)
	}

	// The event log, as Wine traces it: the drain says what ends its wait on Windows (no
	// second stop), and the bad flags are an error event.
	b, err := os.ReadFile(w.log)
	if err != nil {
		t.Fatal(err)
	}
	events := string(b)
	for _, want := range []string{
		"draining: waiting for sessions to end; Windows sends a stopping service no second stop",
		"instance removed; agent stopped",
		"err:eventlog:ReportEventW L\"ERR bad stored flags",
	} {
		if !strings.Contains(events, want) {
			t.Errorf("the event log lacks %q:\n%s", want, events)
		}
	}
	if strings.Contains(events, "signal again") {
		t.Errorf("the event log tells a service's operator to signal again:\n%s", events)
	}
	t.Logf("prefix made in %s, lifecycle in %s", booted.Sub(began).Round(time.Second), time.Since(booted).Round(time.Second))
}

// wine runs commands under Wine in the chroot, with one prefix and wineserver for the test.
type wine struct {
	t            *testing.T
	root, prefix string
	log          string // the output of the service manager and the services
}

func (w *wine) cmd(ctx context.Context, args ...string) *exec.Cmd {
	// The chroot shares the host's network namespace: the agent reaches the control plane and
	// the app on 127.0.0.1.
	// Wine finds itself through /proc/self: /proc is mounted in a mount namespace of the
	// command's own, so that nothing stays mounted when it ends.
	full := append([]string{"--mount", "--fork", "sh", "-c",
		`root=$0 prefix=$1; shift; mount -t proc proc "$root/proc" && exec chroot "$root" env -i HOME=/root PATH=/usr/bin:/bin WINEPREFIX="$prefix" XDG_RUNTIME_DIR="$prefix/../run" WINEDEBUG=-all,+eventlog WINEDLLOVERRIDES=mscoree,mshtml= "$@"`,
		w.root, w.prefix}, args...)
	c := exec.CommandContext(ctx, "unshare", full...)
	c.WaitDelay = 5 * time.Second
	return c
}

// boot makes the prefix under a wineserver that lives until the test ends: one that exits
// between two commands would take the service manager with it, and the next command would boot
// the prefix again, starting the automatic services as Windows does at boot.
func (w *wine) boot(hostPrefix string) {
	w.t.Helper()
	if err := os.Mkdir(hostPrefix, 0o700); err != nil {
		w.t.Fatal(err)
	}
	// Wine wants a private runtime directory (and says so on every command without one).
	if err := os.Mkdir(filepath.Join(hostPrefix, "..", "run"), 0o700); err != nil {
		w.t.Fatal(err)
	}
	// Making the prefix starts a service manager twice (a boot, then one after the prefix's
	// update): the service commands would reach either. End that server, and let the first
	// command under the persistent one boot the prefix once.
	if out, code := w.run(180*time.Second, "wineboot", "-i"); code != 0 {
		w.t.Fatalf("wineboot -i: exit %d:\n%s", code, out)
	}
	if out, code := w.run(30*time.Second, "wineserver", "-k"); code != 0 {
		w.t.Fatalf("wineserver -k: exit %d:\n%s", code, out)
	}
	server := w.cmd(context.Background(), "wineserver", "--persistent", "--foreground")
	var out syncbuf.Buffer
	server.Stdout, server.Stderr = &out, &out
	if err := server.Start(); err != nil {
		w.t.Fatalf("wineserver: %v", err)
	}
	done := make(chan struct{})
	go func() { _ = server.Wait(); close(done) }()
	// Boot the prefix: the service manager and the services it starts write to this file,
	// the agent's event log lines among them (Wine traces ReportEvent on its eventlog channel).
	log, err := os.Create(filepath.Join(hostPrefix, "..", "services.log"))
	if err != nil {
		w.t.Fatal(err)
	}
	defer log.Close()
	w.log = log.Name()
	ctx, cancel := context.WithTimeout(context.Background(), 60*time.Second)
	defer cancel()
	c := w.cmd(ctx, "wineboot")
	c.Stdout, c.Stderr = log, log
	if err := c.Run(); err != nil {
		w.t.Fatalf("wineboot: %v", err)
	}
	w.t.Cleanup(func() {
		ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
		defer cancel()
		if b, err := w.cmd(ctx, "wineserver", "-k").CombinedOutput(); err != nil {
			w.t.Logf("wineserver -k: %v %s", err, b)
		}
		select {
		case <-done:
		case <-time.After(30 * time.Second):
			_ = server.Process.Kill()
			<-done
		}
		if w.t.Failed() {
			w.t.Logf("wineserver output:\n%s", out.String())
		}
		// The server's socket directory, /tmp/wine-XXXXXX, is named in the prefix.
		if dir, err := os.ReadFile(filepath.Join(hostPrefix, "wineserver")); err == nil && strings.HasPrefix(string(dir), "wine-") {
			_ = os.RemoveAll(filepath.Join(w.root, "tmp", strings.TrimSpace(string(dir))))
		}
	})
}

// run runs a Windows program (or wineboot) to its end within timeout, and returns its output
// and exit code.
func (w *wine) run(timeout time.Duration, args ...string) (string, int) {
	w.t.Helper()
	if args[0] != "wineboot" && args[0] != "wineserver" {
		args = append([]string{"wine"}, args...)
	}
	ctx, cancel := context.WithTimeout(context.Background(), timeout)
	defer cancel()
	c := w.cmd(ctx, args...)
	// A file, not a pipe: the Wine processes a command starts (the service manager, the
	// services) inherit its output and outlive it.
	f, err := os.CreateTemp(w.t.TempDir(), "out")
	if err != nil {
		w.t.Fatal(err)
	}
	defer f.Close()
	c.Stdout, c.Stderr = f, f
	err = c.Run()
	out, _ := os.ReadFile(f.Name())
	if ctx.Err() != nil {
		w.t.Fatalf("%s: not done within %s:\n%s", strings.Join(args, " "), timeout, out)
	}
	if err != nil && c.ProcessState == nil {
		w.t.Fatalf("%s: %v", strings.Join(args, " "), err)
	}
	return string(out), c.ProcessState.ExitCode()
}

type running struct {
	cmd  *exec.Cmd
	out  *syncbuf.Buffer
	done chan struct{}
}

func (w *wine) start(args ...string) *running {
	w.t.Helper()
	r := &running{cmd: w.cmd(context.Background(), append([]string{"wine"}, args...)...), out: &syncbuf.Buffer{}, done: make(chan struct{})}
	r.cmd.Stdout, r.cmd.Stderr = r.out, r.out
	if err := r.cmd.Start(); err != nil {
		w.t.Fatal(err)
	}
	go func() { _ = r.cmd.Wait(); close(r.done) }()
	w.t.Cleanup(func() {
		select {
		case <-r.done:
		default:
			_ = r.cmd.Process.Kill()
			<-r.done
		}
	})
	return r
}

func (r *running) wait(t *testing.T, timeout time.Duration) int {
	t.Helper()
	select {
	case <-r.done:
		return r.cmd.ProcessState.ExitCode()
	case <-time.After(timeout):
		t.Fatalf("%v still running after %s:\n%s", r.cmd.Args, timeout, r.out)
		return -1
	}
}

// start runs a host process for the test's length; its output is shown if the test fails.
func start(t *testing.T, what, path string, args ...string) {
	t.Helper()
	out := &syncbuf.Buffer{}
	c := exec.Command(path, args...)
	c.Stdout, c.Stderr = out, out
	if err := c.Start(); err != nil {
		t.Fatalf("start %s: %v", what, err)
	}
	done := make(chan struct{})
	go func() { _ = c.Wait(); close(done) }()
	t.Cleanup(func() {
		_ = c.Process.Signal(os.Interrupt)
		select {
		case <-done:
		case <-time.After(10 * time.Second):
			_ = c.Process.Kill()
			<-done
		}
		if t.Failed() {
			t.Logf("%s output:\n%s", what, out)
		}
	})
}

func waitHTTP(t *testing.T, url string, timeout time.Duration) {
	t.Helper()
	eventually.Saying(t, url+" answering 2xx", timeout, func() (bool, string) {
		resp, err := http.Get(url) //nolint:gosec,noctx // a loopback URL of the test
		if err != nil {
			return false, err.Error()
		}
		resp.Body.Close()
		return resp.StatusCode/100 == 2, resp.Status
	})
}

func post(t *testing.T, url string) {
	t.Helper()
	resp, err := http.Post(url, "", nil) //nolint:gosec,noctx // a loopback URL of the test
	if err != nil {
		t.Fatal(err)
	}
	resp.Body.Close()
	if resp.StatusCode != http.StatusOK {
		t.Fatalf("POST %s: %s", url, resp.Status)
	}
}

// waitInstance polls the control plane's /api/state until the instance wine-1 (nil when the
// control plane does not list it) satisfies cond.
func waitInstance(t *testing.T, adminURL, what string, timeout time.Duration, cond func(*overview.Instance) bool) {
	t.Helper()
	eventually.Saying(t, "instance wine-1 "+what+", as the control plane shows it", timeout, func() (bool, string) {
		resp, err := http.Get(adminURL + "/api/state") //nolint:gosec,noctx // a loopback URL of the test
		if err != nil {
			return false, err.Error()
		}
		defer resp.Body.Close()
		var st overview.Overview
		if err := json.NewDecoder(resp.Body).Decode(&st); err != nil {
			return false, err.Error()
		}
		var found *overview.Instance
		for _, s := range st.Services {
			for i := range s.Instances {
				if s.Instances[i].ID == "wine-1" {
					found = &s.Instances[i]
				}
			}
		}
		b, _ := json.Marshal(found)
		return cond(found), string(b)
	})
}

func waitOutput(t *testing.T, out *syncbuf.Buffer, want string, timeout time.Duration) {
	t.Helper()
	eventually.Saying(t, fmt.Sprintf("output with %q", want), timeout, func() (bool, string) {
		return strings.Contains(out.String(), want), "\n" + out.String()
	})
}
