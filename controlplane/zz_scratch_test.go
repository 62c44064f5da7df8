package controlplane_test

import (
	"context"
	"os"
	"testing"
	"time"

	"github.com/chromedp/chromedp"

	"github.com/tetherlb/tether/internal/etcdtest"
	"github.com/tetherlb/tether/registry"
)

func TestZZScratch(t *testing.T) {
	etcd := etcdtest.Start(t)
	cli := etcd.Client(t)
	lease := registerDemo(t, cli)
	cp := startCP(t, etcd.Endpoints())
	<-cp.Ready()
	ctx, cancel := context.WithTimeout(context.Background(), 2*time.Minute)
	defer cancel()
	actx, acancel := chromedp.NewExecAllocator(ctx, chromedp.ExecPath(findChromium()), chromedp.Headless, chromedp.NoSandbox, chromedp.DisableGPU,
		chromedp.UserDataDir(t.TempDir()), chromedp.WindowSize(1366, 768))
	defer acancel()
	bctx, bcancel := chromedp.NewContext(actx)
	defer bcancel()
	if err := chromedp.Do(bctx, chromedp.Navigate("http://"+cp.AdminAddr()+"/"), chromedp.WaitVisible(chromedp.CSS(`tr.inst`))); err != nil {
		t.Fatal(err)
	}
	for i := 0; i < 12; i++ {
		updateInstance(t, cli, lease, monitorInstance("app-1", 5001, 12+i*3, registry.StateAvailable, ""))
		updateInstance(t, cli, lease, monitorInstance("app-2", 5002, 60+i*4, map[bool]string{true: registry.StateFull, false: registry.StateAvailable}[i >= 10], "sessions 100 >= maxSessions 100"))
		time.Sleep(600 * time.Millisecond)
	}
	updateInstance(t, cli, lease, monitorInstance("app-3", 5003, 30, registry.StateDraining, "agent stopping: draining 30 sessions (timeout 5m)"))
	in := monitorInstance("app-4", 5004, 0, registry.StateUnhealthy, "health probe GET /healthcheck: connection refused")
	if err := registry.CreateInstance(ctx, cli, "/tether", "app", in, lease); err != nil {
		t.Fatal(err)
	}
	in2 := monitorInstance("api-1", 6001, 3, registry.StateAvailable, "")
	in2.Thresholds = registry.Thresholds{}
	if err := registry.CreateInstance(ctx, cli, "/tether", "api", in2, lease); err != nil {
		t.Fatal(err)
	}
	cli.Put(ctx, "/tether/instances/app/bad", `{"port":0}`)
	time.Sleep(3 * time.Second)
	png, err := chromedp.Run(bctx, chromedp.FullScreenshot(100))
	if err != nil {
		t.Fatal(err)
	}
	os.WriteFile("/tmp/h7shots/scratch.png", png, 0o644)
}
