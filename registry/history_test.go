package registry_test

import (
	"context"
	"strings"
	"testing"

	clientv3 "go.etcd.io/etcd/client/v3"

	"github.com/tetherlb/tether/internal/etcdtest"
	"github.com/tetherlb/tether/registry"
)

// A configuration whose identity (here its affinity mode) is bad is served as its newest
// valid earlier version of the same key's incarnation, read back from etcd's history past
// other bad versions, down to the incarnation's first version; wholly, with no problems.
// Not a version of an earlier incarnation (the key deleted and put again), and none once
// compaction has removed it: then the service is left out, its domains reserved.
func TestWatcherServesTheLastValidConfigFromHistory(t *testing.T) {
	srv := etcdtest.Start(t)
	cli := srv.Client(t)
	const good = `{"domains":["app.test"],"affinity":{"mode":"cookie","cookieName":"s1"},"lbPolicy":"random"}`
	bad := func(n string) string {
		return `{"domains":["app.test"],"affinity":{"mode":"sticky","cookieName":"s` + n + `"},"lbPolicy":"random"}`
	}
	mustPut(t, cli, svcKey, good) // the incarnation's first version
	mustPut(t, cli, svcKey, bad("2"))
	rev := mustPut(t, cli, svcKey, bad("3"))
	mustPut(t, cli, "/tether/services/web", good)
	mustDelete(t, cli, "/tether/services/web")
	mustPut(t, cli, "/tether/services/web", bad("4"))
	mustPut(t, cli, "/tether/services/web", bad("5"))

	st := startWatcher(t, cli).waitFor(t, "the listing", func(*registry.State) bool { return true })
	app := st.Services["app"]
	if app == nil || app.ConfigError != "" || app.Config.Affinity.CookieName != "s1" || len(app.ConfigProblems) != 0 {
		t.Errorf("app = %+v, want its first version served wholly", app)
	}
	if !strings.Contains(st.Rejected[svcKey], "sticky") {
		t.Errorf("rejected %v, want app's bad mode reported", st.Rejected)
	}
	if web := st.Services["web"]; web == nil || !strings.Contains(web.ConfigError, "sticky") || web.Config.Domains[0] != "app.test" {
		t.Errorf("web = %+v, want left out (its only valid version was another incarnation's), its domain reserved", web)
	}

	ctx, cancel := context.WithTimeout(context.Background(), waitTimeout)
	defer cancel()
	if _, err := cli.Compact(ctx, rev, clientv3.WithCompactPhysical()); err != nil {
		t.Fatalf("compact: %v", err)
	}
	st = startWatcher(t, cli).waitFor(t, "the listing", func(*registry.State) bool { return true })
	if app := st.Services["app"]; app == nil || !strings.Contains(app.ConfigError, "sticky") || app.Config.Domains[0] != "app.test" {
		t.Errorf("after compaction app = %+v, want left out with its domain reserved", app)
	}
}
