package registry_test

import (
	"context"
	"net/netip"
	"net/url"
	"reflect"
	"strings"
	"testing"
	"time"

	clientv3 "go.etcd.io/etcd/client/v3"
	"go.etcd.io/etcd/server/v3/embed"

	"github.com/tetherlb/tether/internal/etcdtest"
	"github.com/tetherlb/tether/registry"
)

// An agent holding etcd credentials must not point Envoy at the gateway host itself: a
// loopback address is rejected unless the control plane allows it (demo, tests), in every
// spelling, and rejected alone.
func TestWatcherRefusesLoopbackUnlessAllowed(t *testing.T) {
	srv := etcdtest.Start(t)
	cli := srv.Client(t)
	mustPut(t, cli, "/tether/instances/app/good", withField(t, exampleInstance, "id", "good"))
	for id, addr := range map[string]string{"v4": "127.0.0.1", "other": "127.1.2.3", "v6": "::1", "mapped": "::ffff:127.0.0.1"} {
		mustPut(t, cli, "/tether/instances/app/"+id, withField(t, withField(t, exampleInstance, "id", id), "address", addr))
	}

	strict := startWatcher(t, cli)
	st := strict.waitFor(t, "the listing", func(*registry.State) bool { return true })
	if app := st.Services["app"]; app == nil || len(app.Instances) != 1 {
		t.Fatalf("without AllowLoopback: want only instance good, got %+v", app)
	}
	for _, id := range []string{"v4", "other", "v6", "mapped"} {
		if why := st.Rejected["/tether/instances/app/"+id]; !strings.Contains(why, "loopback") {
			t.Errorf("instance %s: rejected for %q, want loopback", id, why)
		}
	}

	demo := startWatcher(t, cli, func(o *registry.WatchOptions) { o.AllowLoopback = true })
	st = demo.waitFor(t, "the listing", func(*registry.State) bool { return true })
	if app := st.Services["app"]; app == nil || len(app.Instances) != 5 || len(st.Rejected) != 0 {
		t.Fatalf("with AllowLoopback: want all five instances, got %+v rejected %v", app, st.Rejected)
	}
}

// A site's own ranges (the gateway hosts, Envoy's admin port's network) given as denied
// CIDRs are rejected alone, in every spelling of an address in them, and reported like any
// other rejected key; loopback embedded in IPv6 is still loopback.
func TestWatcherRefusesDeniedCIDRs(t *testing.T) {
	srv := etcdtest.Start(t)
	cli := srv.Client(t)
	mustPut(t, cli, "/tether/instances/app/good", withField(t, withField(t, exampleInstance, "id", "good"), "address", "10.0.1.5"))
	denied := map[string]string{"gw": "10.0.0.7", "mapped": "::ffff:10.0.0.8", "nat64": "64:ff9b::10.0.0.9", "v6": "fd00:1::5"}
	for id, addr := range denied {
		mustPut(t, cli, "/tether/instances/app/"+id, withField(t, withField(t, exampleInstance, "id", id), "address", addr))
	}
	mustPut(t, cli, "/tether/instances/app/compat-loop", withField(t, withField(t, exampleInstance, "id", "compat-loop"), "address", "::127.0.0.1"))
	w := startWatcher(t, cli, func(o *registry.WatchOptions) {
		o.DenyCIDRs = []netip.Prefix{netip.MustParsePrefix("10.0.0.0/24"), netip.MustParsePrefix("fd00:1::/64")}
	})
	st := w.waitFor(t, "the listing", func(*registry.State) bool { return true })
	if app := st.Services["app"]; app == nil || len(app.Instances) != 1 || app.Instances["good"].Address != "10.0.1.5" {
		t.Fatalf("want only instance good, got %+v", app)
	}
	for id := range denied {
		if why := st.Rejected["/tether/instances/app/"+id]; !strings.Contains(why, "--deny-backend-cidr") {
			t.Errorf("instance %s: rejected for %q, want --deny-backend-cidr", id, why)
		}
	}
	if why := st.Rejected["/tether/instances/app/compat-loop"]; !strings.Contains(why, "loopback") {
		t.Errorf("::127.0.0.1: rejected for %q, want loopback", why)
	}
}

// A rejected service configuration is served identically by a watcher that saw the last
// good value and by one started afterwards: both read the newest valid version from etcd's
// history. Without one (a key invalid since its creation, or history compacted away) the
// service is left out with ConfigError by both, never served with the defaults.
func TestRejectedConfigIsServedAlikeByEveryWatcher(t *testing.T) {
	srv := etcdtest.Start(t)
	cli := srv.Client(t)
	good := withField(t, withField(t, exampleService, "lbPolicy", "random"), "domains", []string{"app.example.com"})
	mustPut(t, cli, svcKey, good)
	mustPut(t, cli, instKey, exampleInstance)
	mustPut(t, cli, "/tether/services/web", `{"affinity":{"mode":"sticky"}}`)
	mustPut(t, cli, "/tether/instances/web/w1", withField(t, exampleInstance, "id", "w1"))

	old := startWatcher(t, cli)
	old.waitFor(t, "app's configuration", func(st *registry.State) bool { return st.Services["app"] != nil })
	mustPut(t, cli, svcKey, withField(t, good, "lbPolicy", "fastest"))
	rev := mustPut(t, cli, svcKey, withField(t, good, "weights", "heaviest"))
	oldSt := old.waitFor(t, "the second bad edit", func(st *registry.State) bool { return st.Revision >= rev })

	newSt := startWatcher(t, cli).waitFor(t, "the listing", func(*registry.State) bool { return true })
	for name, st := range map[string]*registry.State{"running watcher": oldSt, "new watcher": newSt} {
		app := st.Services["app"]
		if app == nil || app.ConfigError != "" || app.Config.LBPolicy != registry.LBRandom || app.Config.Domains[0] != "app.example.com" {
			t.Errorf("%s: app = %+v, want the last valid configuration", name, app)
		}
		if !strings.Contains(st.Rejected[svcKey], "weights") {
			t.Errorf("%s: rejected %v, want the bad edit reported", name, st.Rejected)
		}
		web := st.Services["web"]
		if web == nil || !strings.Contains(web.ConfigError, "sticky") || len(web.Instances) != 1 {
			t.Errorf("%s: web = %+v, want left out (ConfigError) with its instance kept", name, web)
		}
	}
	if !reflect.DeepEqual(oldSt.Services["app"].Config, newSt.Services["app"].Config) {
		t.Errorf("the watchers disagree:\n%+v\n%+v", oldSt.Services["app"].Config, newSt.Services["app"].Config)
	}

	// Once compaction has removed the valid version, a new watcher still serves app: the
	// bad field (weights) takes its default and is reported, what identifies its sessions
	// (mode, cookie name, domains, path) is the value's own.
	ctx, cancel := context.WithTimeout(context.Background(), waitTimeout)
	defer cancel()
	if _, err := cli.Compact(ctx, rev, clientv3.WithCompactPhysical()); err != nil {
		t.Fatalf("compact: %v", err)
	}
	st := startWatcher(t, cli).waitFor(t, "the listing", func(*registry.State) bool { return true })
	if app := st.Services["app"]; app == nil || app.ConfigError != "" || !reflect.DeepEqual(app.Config, oldSt.Services["app"].Config) ||
		len(app.ConfigProblems) != 1 || !strings.Contains(app.ConfigProblems[0], "weights") {
		t.Errorf("after compaction: app = %+v, want served as before with the weights problem", app)
	}

	// A valid edit ends it for everyone.
	mustPut(t, cli, svcKey, good)
	old.waitFor(t, "the fixed configuration", func(st *registry.State) bool {
		_, rejected := st.Rejected[svcKey]
		return !rejected && st.Services["app"].ConfigError == ""
	})
}

// Created is the create revision of the service's claim: its configuration key's, else its
// oldest instance key's; it follows deletions.
func TestWatcherCreatedRevisions(t *testing.T) {
	srv := etcdtest.Start(t)
	cli := srv.Client(t)
	first := mustPut(t, cli, "/tether/instances/web/w1", withField(t, exampleInstance, "id", "w1"))
	second := mustPut(t, cli, "/tether/instances/web/w2", withField(t, exampleInstance, "id", "w2"))
	mustPut(t, cli, "/tether/instances/web/w1", withField(t, withField(t, exampleInstance, "id", "w1"), "port", 5001))
	r := startWatcher(t, cli)
	st := r.waitFor(t, "web", func(st *registry.State) bool { return st.Services["web"] != nil })
	if got := st.Services["web"].Created; got != first {
		t.Errorf("web created %d, want its oldest instance's %d", got, first)
	}
	mustDelete(t, cli, "/tether/instances/web/w1")
	r.waitFor(t, "web's claim passing to w2", func(st *registry.State) bool { return st.Services["web"].Created == second })
	cfg := mustPut(t, cli, "/tether/services/web", exampleService)
	r.waitFor(t, "web's configuration's claim", func(st *registry.State) bool { return st.Services["web"].Created == cfg })
	mustPut(t, cli, "/tether/services/web", withField(t, exampleService, "lbPolicy", "random"))
	st = r.waitFor(t, "the edit", func(st *registry.State) bool { return st.Services["web"].Config.LBPolicy == registry.LBRandom })
	if got := st.Services["web"].Created; got != cfg {
		t.Errorf("an edit moved the claim to %d, want %d", got, cfg)
	}
}

// An etcd restored from an older backup (here: a fresh etcd on the same address, at a lower
// revision) is noticed by the progress check and listed again; before, the watch waited for
// revisions that would come with other meanings.
func TestWatcherRelistsAfterRestoreFromBackup(t *testing.T) {
	srv := etcdtest.Start(t)
	cli := srv.Client(t)
	for range 30 {
		mustPut(t, cli, "/tether/instances/app/old", withField(t, exampleInstance, "id", "old"))
		mustPut(t, cli, "/tether/junk-counter", "x")
	}
	r := startWatcher(t, cli, func(o *registry.WatchOptions) { o.ProgressInterval = 100 * time.Millisecond })
	r.waitFor(t, "instance old", func(st *registry.State) bool { _, ok := instance(st, "app", "old"); return ok })

	srv.Stop()
	srv.Dir = t.TempDir() // the "backup": an etcd with other, older contents
	srv.StartAgain(t)
	mustPut(t, cli, "/tether/instances/app/restored", withField(t, exampleInstance, "id", "restored"))

	st := r.waitFor(t, "the restored contents", func(st *registry.State) bool {
		_, restored := instance(st, "app", "restored")
		_, old := instance(st, "app", "old")
		return restored && !old
	})
	if st.Revision >= 60 {
		t.Errorf("state at revision %d, want the restored etcd's lower one", st.Revision)
	}
	if !strings.Contains(r.log.String(), wentBack) {
		t.Errorf("no warning that etcd went back; log:\n%s", r.log)
	}
	// The watch goes on from the restored revision.
	mustPut(t, cli, "/tether/instances/app/later", withField(t, exampleInstance, "id", "later"))
	r.waitFor(t, "a later instance", func(st *registry.State) bool { _, ok := instance(st, "app", "later"); return ok })
}

// A restore found when the watch resumes, not a progress interval later: with the periodic
// check an hour away, the watcher still compares etcd's revision with the one applied as it
// watches again, so a restored etcd (its revision below) is listed before its writes carry its
// revision past the applied one and their events would be applied on top of the old keys
// (issue 24, finding 11).
func TestWatcherComparesRevisionsWhenItWatchesAgain(t *testing.T) {
	srv := etcdtest.Start(t)
	cli := srv.Client(t)
	for range 30 {
		mustPut(t, cli, "/tether/instances/app/old", withField(t, exampleInstance, "id", "old"))
		mustPut(t, cli, "/tether/junk-counter", "x")
	}
	r := startWatcher(t, cli, func(o *registry.WatchOptions) { o.ProgressInterval = time.Hour })
	r.waitFor(t, "instance old", func(st *registry.State) bool { _, ok := instance(st, "app", "old"); return ok })

	srv.Stop()
	srv.Dir = t.TempDir() // the "backup": an etcd with other, older contents
	srv.StartAgain(t)
	mustPut(t, cli, "/tether/instances/app/restored", withField(t, exampleInstance, "id", "restored"))
	r.waitFor(t, "the restored contents", func(st *registry.State) bool {
		_, restored := instance(st, "app", "restored")
		_, old := instance(st, "app", "old")
		return restored && !old
	})
}

// Writes while the revision is checked are no restore: the check compares etcd's answer with
// the revision applied before it asked, not with one the watch applied while the answer was
// on its way (which made a busy registry list itself again now and then).
func TestWatcherRevisionCheckRacesNoWrite(t *testing.T) {
	srv := etcdtest.Start(t)
	cli := srv.Client(t)
	r := startWatcher(t, cli, func(o *registry.WatchOptions) { o.ProgressInterval = time.Millisecond })
	for i := range 300 {
		mustPut(t, cli, "/tether/instances/app/a", withField(t, withField(t, exampleInstance, "id", "a"), "port", 1000+i))
	}
	r.waitFor(t, "the last write", func(st *registry.State) bool { in, _ := instance(st, "app", "a"); return in.Port == 1299 })
	if n := strings.Count(r.log.String(), "registry listed"); n != 1 {
		t.Errorf("the registry was listed %d times, want once; log:\n%s", n, r.log)
	}
}

// Another etcd cluster behind the same address, ahead in revisions (a different cluster
// restored or moved there): its events carry another cluster ID, and the watcher lists again
// instead of applying them on top of the old cluster's keys.
func TestWatcherRelistsWhenClusterChanges(t *testing.T) {
	srv := etcdtest.Start(t)
	cli := srv.Client(t)
	mustPut(t, cli, "/tether/instances/app/old", withField(t, exampleInstance, "id", "old"))
	// Only the watch's own responses can tell here: the revision check waits an hour.
	r := startWatcher(t, cli, func(o *registry.WatchOptions) { o.ProgressInterval = time.Hour })
	r.waitFor(t, "instance old", func(st *registry.State) bool { _, ok := instance(st, "app", "old"); return ok })

	other := anotherClusterAt(t, srv)
	ocli := other.Client(t)
	for range 20 {
		mustPut(t, ocli, "/tether/junk-counter", "x")
	}
	mustPut(t, ocli, "/tether/instances/app/new", withField(t, exampleInstance, "id", "new"))
	r.waitFor(t, "the other cluster's contents only", func(st *registry.State) bool {
		_, n := instance(st, "app", "new")
		_, old := instance(st, "app", "old")
		return n && !old
	})
	if !strings.Contains(r.log.String(), wentBack) {
		t.Errorf("no warning that etcd's cluster changed; log:\n%s", r.log)
	}
}

// A configuration whose identity (mode, cookie name, domains, path) is valid is served
// whatever etcd's history holds, its bad optional fields at their defaults and reported; one
// whose identity is bad and has no valid version left is left out, its domains and path kept
// (reserved) when they are valid, none when the value is not even JSON.
func TestRejectedConfigWithoutHistory(t *testing.T) {
	srv := etcdtest.Start(t)
	cli := srv.Client(t)
	shop := `{"domains":["shop.test"],"affinity":{"mode":"cookie","cookieName":"shop-s","strict":true},"lbPolicy":"fastest",` +
		`"healthCheck":{"interval":"soon","path":"/health"},"overload":{"status":42},"retryInitialOn503":{"attempts":"two"}}`
	mustPut(t, cli, "/tether/services/shop", shop)
	mustPut(t, cli, "/tether/services/web", `{"domains":["web.test"],"pathPrefix":"/w","affinity":{"mode":"sticky"}}`)
	mustPut(t, cli, "/tether/services/bad", `{"domains":["bad.test"`)
	rev := mustPut(t, cli, "/tether/services/both", `{"domains":["both.test", "not a domain"],"lbPolicy":"fastest"}`)
	ctx, cancel := context.WithTimeout(context.Background(), waitTimeout)
	defer cancel()
	if _, err := cli.Compact(ctx, rev, clientv3.WithCompactPhysical()); err != nil {
		t.Fatalf("compact: %v", err)
	}
	st := startWatcher(t, cli).waitFor(t, "the listing", func(*registry.State) bool { return true })

	s := st.Services["shop"]
	want := registry.DefaultServiceConfig("shop")
	want.Domains, want.Affinity.CookieName, want.Affinity.Strict, want.HealthCheck.Path = []string{"shop.test"}, "shop-s", true, "/health"
	if s == nil || s.ConfigError != "" || !reflect.DeepEqual(s.Config, want) {
		t.Fatalf("shop = %+v, want served with its identity and the defaults of its bad fields %+v", s, want)
	}
	for _, field := range []string{"lbPolicy", "healthCheck.interval", "overload.status", "retryInitialOn503.attempts"} {
		found := false
		for _, p := range s.ConfigProblems {
			found = found || strings.HasPrefix(p, field+":")
		}
		if !found {
			t.Errorf("shop's problems %q do not name %s", s.ConfigProblems, field)
		}
	}
	if len(s.ConfigProblems) != 4 {
		t.Errorf("shop's problems %q, want 4", s.ConfigProblems)
	}
	if _, ok := st.Rejected["/tether/services/shop"]; !ok {
		t.Errorf("shop's value not reported rejected: %v", st.Rejected)
	}
	web := st.Services["web"]
	if web == nil || !strings.Contains(web.ConfigError, "sticky") || !reflect.DeepEqual(web.Config.Domains, []string{"web.test"}) || web.Config.PathPrefix != "/w" {
		t.Errorf("web = %+v, want left out with web.test /w reserved", web)
	}
	for _, name := range []string{"bad", "both"} {
		if b := st.Services[name]; b == nil || b.ConfigError == "" || len(b.Config.Domains) != 0 {
			t.Errorf("%s = %+v, want left out with nothing reserved", name, b)
		}
	}
}

// Another cluster at exactly the applied revision, with nothing under the prefix: no watch
// response and no revision check tells, only the cluster ID of the periodic read does.
func TestWatcherReadNoticesAnotherClusterAtTheSameRevision(t *testing.T) {
	srv := etcdtest.Start(t)
	cli := srv.Client(t)
	applied := mustPut(t, cli, "/tether/instances/app/old", withField(t, exampleInstance, "id", "old"))
	r := startWatcher(t, cli, func(o *registry.WatchOptions) { o.ProgressInterval = 100 * time.Millisecond })
	r.waitFor(t, "instance old", func(st *registry.State) bool { _, ok := instance(st, "app", "old"); return ok })

	other := anotherClusterAt(t, srv)
	ocli := other.Client(t)
	var rev int64
	for rev < applied {
		rev = mustPut(t, ocli, "/elsewhere/k", "x")
	}
	if rev != applied {
		t.Fatalf("the other cluster at revision %d, want %d", rev, applied)
	}
	r.waitFor(t, "the other cluster's contents", func(st *registry.State) bool { _, old := instance(st, "app", "old"); return !old })
	if !strings.Contains(r.log.String(), wentBack) {
		t.Errorf("no warning that etcd's cluster changed; log:\n%s", r.log)
	}
}

// anotherClusterAt stops srv and starts another etcd cluster (another cluster ID, its own
// revisions) on srv's client address, as a restore to the wrong cluster would.
func anotherClusterAt(t *testing.T, srv *etcdtest.Server) *etcdtest.Server {
	t.Helper()
	addr := srv.ClientURL
	srv.Stop()
	return etcdtest.Start(t, func(c *embed.Config) {
		u, err := url.Parse(addr)
		if err != nil {
			t.Fatal(err)
		}
		c.ListenClientUrls, c.AdvertiseClientUrls = []url.URL{*u}, []url.URL{*u}
		c.InitialClusterToken = "another-cluster"
	})
}
