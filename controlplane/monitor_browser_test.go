package controlplane_test

import (
	"context"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/chromedp/cdproto/cdp"
	cdplog "github.com/chromedp/cdproto/log"
	"github.com/chromedp/cdproto/runtime"
	"github.com/chromedp/chromedp"

	"github.com/tetherlb/tether/internal/etcdtest"
	"github.com/tetherlb/tether/registry"
)

// findChromium returns the path of a Chromium or Chrome binary, or "".
func findChromium() string {
	for _, name := range []string{"chromium", "chromium-browser", "google-chrome", "google-chrome-stable"} {
		if p, err := exec.LookPath(name); err == nil {
			return p
		}
	}
	return ""
}

// pageErrors collects the page's uncaught exceptions and error log entries (which include
// Content-Security-Policy violations).
type pageErrors struct {
	mu   sync.Mutex
	list []string
}

func (p *pageErrors) add(s string) {
	p.mu.Lock()
	p.list = append(p.list, s)
	p.mu.Unlock()
}

func (p *pageErrors) get() []string {
	p.mu.Lock()
	defer p.mu.Unlock()
	return append([]string(nil), p.list...)
}

func (p *pageErrors) follow(ctx context.Context, t *chromedp.Target) {
	logs := cdp.Events(ctx, t, cdplog.EntryAdded)
	exceptions := cdp.Events(ctx, t, runtime.ExceptionThrown)
	go func() {
		for ev, err := range logs {
			if err == nil && ev.Entry != nil && ev.Entry.Level == cdplog.EntryLevelError {
				p.add(fmt.Sprintf("%s: %s (%s)", ev.Entry.Source, ev.Entry.Text, ev.Entry.URL))
			}
		}
	}()
	go func() {
		for ev, err := range exceptions {
			if err == nil && ev.ExceptionDetails != nil {
				p.add(fmt.Sprintf("exception: %s %s:%d", ev.ExceptionDetails.Text, ev.ExceptionDetails.URL, ev.ExceptionDetails.LineNumber))
			}
		}
	}()
}

// TestMonitorInBrowser loads the monitor page in headless Chromium against a real control
// plane with three registered instances, pushes one over its session threshold and checks
// that the page shows it full without a reload. The screenshot is saved in the test's temp
// dir, and also in $TETHER_SCREENSHOT_DIR when set (for CI artifacts).
func TestMonitorInBrowser(t *testing.T) {
	chromium := findChromium()
	if chromium == "" {
		t.Skip("no chromium, chromium-browser or google-chrome binary on PATH: install Debian's chromium package (apt-get install chromium) to run the browser test")
	}
	etcd := etcdtest.Start(t)
	cli := etcd.Client(t)
	lease := registerDemo(t, cli)
	cp := startCP(t, etcd.Endpoints())
	waitReady(t, cp, 15*time.Second, "the control plane")

	// Everything the browser does is bounded by this context.
	ctx, cancel := context.WithTimeout(context.Background(), 2*time.Minute)
	defer cancel()
	actx, acancel := chromedp.NewExecAllocator(ctx,
		chromedp.ExecPath(chromium), chromedp.Headless, chromedp.NoSandbox, chromedp.DisableGPU, chromedp.NoFirstRun,
		chromedp.Flag("disable-background-networking", true), chromedp.Flag("disable-component-update", true),
		chromedp.Flag("disable-sync", true), chromedp.Flag("disable-dev-shm-usage", true),
		chromedp.UserDataDir(t.TempDir()), chromedp.WindowSize(1440, 900))
	defer acancel()
	bctx, bcancel := chromedp.NewContext(actx, chromedp.WithLogf(t.Logf))
	defer bcancel()
	if err := chromedp.Do(bctx); err != nil {
		t.Fatalf("start chromium %s: %v", chromium, err)
	}
	var errs pageErrors
	errs.follow(bctx, chromedp.FromContext(bctx).Target)
	step := func(what string, d time.Duration, actions ...chromedp.Action[chromedp.Void]) {
		t.Helper()
		sctx, scancel := context.WithTimeout(bctx, d)
		defer scancel()
		if err := chromedp.Do(sctx, actions...); err != nil {
			t.Fatalf("%s: %v (page errors: %v)", what, err, errs.get())
		}
	}
	eval := func(expr string) string {
		t.Helper()
		sctx, scancel := context.WithTimeout(bctx, 10*time.Second)
		defer scancel()
		v, err := chromedp.Run(sctx, chromedp.Evaluate[string](expr))
		if err != nil {
			t.Fatalf("evaluate %s: %v", expr, err)
		}
		return v
	}
	step("enable the log domain", 10*time.Second, chromedp.Func(func(ctx context.Context, tg *chromedp.Target) error {
		_, err := cdp.Call(ctx, tg, cdplog.Enable, cdp.Empty{})
		return err
	}))

	step("load the monitor and see the three instances", 30*time.Second,
		chromedp.Navigate("http://"+cp.AdminAddr()+"/"),
		chromedp.WaitVisible(chromedp.CSS(`tr[data-instance="app/app-3"]`)))
	if n := eval(`String(document.querySelectorAll("tr.inst").length)`); n != "3" {
		t.Errorf("instance rows = %s, want 3", n)
	}
	if s := eval(`document.querySelector('tr[data-instance="app/app-2"] .badge').textContent`); s != "available" {
		t.Errorf("app-2 badge = %q before the change", s)
	}
	step("connection shows live", 15*time.Second, chromedp.WaitVisible(chromedp.CSS(`#conn.conn-live`)))
	eval(`window.tetherNoReload = "still here"`)

	// Push app-2 over its session threshold, as its agent would.
	full := monitorInstance("app-2", 5002, 100, registry.StateFull, "sessions 100 >= maxSessions 100")
	updateInstance(t, cli, lease, full)
	step("app-2 turns full without a reload", 15*time.Second,
		chromedp.WaitVisible(chromedp.CSS(`tr[data-instance="app/app-2"][data-state="full"] .badge.b-full`)))
	if v := eval(`String(window.tetherNoReload)`); v != "still here" {
		t.Errorf("the page was reloaded (marker = %q)", v)
	}
	if r := eval(`document.querySelector('tr[data-instance="app/app-2"] .reason').textContent`); r != full.Reason {
		t.Errorf("reason shown = %q, want %q", r, full.Reason)
	}
	// The full row stands out: its background differs from an available row's.
	bg := func(id string) string {
		return eval(`getComputedStyle(document.querySelector('tr[data-instance="app/` + id + `"]')).backgroundColor`)
	}
	if a, f := bg("app-1"), bg("app-2"); a == f {
		t.Errorf("full row background %s equals the available row's", f)
	}
	if s := eval(`document.querySelector(".tile.t-full").className + " " + document.querySelector(".tile.t-full .n").textContent`); s != "tile t-full hot 1" {
		t.Errorf("full tile = %q", s)
	}

	// An operator drains app-1: its row names the drain and the drains card lists it.
	dctx, dcancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer dcancel()
	if _, _, err := registry.PutDrain(dctx, cli, "/tether", "app", "app-1", registry.Drain{Instance: "app-1", Reason: "maintenance", CreatedAt: time.Now().UTC()}); err != nil {
		t.Fatal(err)
	}
	step("app-1 shows its drain", 15*time.Second,
		chromedp.WaitVisible(chromedp.CSS(`tr[data-instance="app/app-1"][data-state="draining"] .drained[data-drain="app-1"]`)),
		chromedp.WaitVisible(chromedp.CSS(`#drains tr[data-drain="app/app-1"]`)))
	if r := eval(`document.querySelector('#drains tr[data-drain="app/app-1"]').textContent`); !strings.Contains(r, "maintenance") || !strings.Contains(r, "app-1") {
		t.Errorf("drains card row = %q", r)
	}

	// Let the change's highlight fade, then take the screenshot.
	step("animations end", 15*time.Second, chromedp.Func(func(ctx context.Context, tg *chromedp.Target) error {
		_, err := chromedp.Poll[bool](`document.getAnimations().length === 0`, chromedp.WithPollingInterval(100*time.Millisecond))(ctx, tg)
		return err
	}))
	sctx, scancel := context.WithTimeout(bctx, 30*time.Second)
	defer scancel()
	png, err := chromedp.Run(sctx, chromedp.FullScreenshot(100))
	if err != nil {
		t.Fatalf("screenshot: %v", err)
	}
	dirs := []string{t.TempDir()}
	if d := os.Getenv("TETHER_SCREENSHOT_DIR"); d != "" {
		dirs = append(dirs, d)
	}
	for _, d := range dirs {
		p := filepath.Join(d, "monitor.png")
		if err := os.WriteFile(p, png, 0o644); err != nil {
			t.Fatalf("save screenshot: %v", err)
		}
		t.Logf("screenshot: %s (%d bytes)", p, len(png))
	}
	if e := errs.get(); len(e) > 0 {
		t.Errorf("page errors: %v", e)
	}
}
