package ctl

import (
	"context"
	"fmt"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/tetherlb/tether/internal/etcdtest"
)

func runService(t *testing.T, args ...string) (int, string, string) {
	t.Helper()
	r := run(t, nil, append([]string{"service"}, args...)...)
	return r.code, r.stdout, r.stderr
}

// service put refuses an invalid configuration with every error listed and writes nothing;
// it writes a valid one, which get prints and delete removes.
func TestServicePutValidatesThenWrites(t *testing.T) {
	srv := etcdtest.Start(t)
	cli := srv.Client(t)
	dir := t.TempDir()
	bad := filepath.Join(dir, "bad.json")
	good := filepath.Join(dir, "good.json")
	if err := os.WriteFile(bad, []byte(`{"domains":["shop.test"],"lbPolicy":"fastest","affinity":{"mode":"sticky"}}`), 0o600); err != nil {
		t.Fatal(err)
	}
	if err := os.WriteFile(good, []byte(`{"domains":["shop.test"],"affinity":{"mode":"cookie","strict":true}}`), 0o600); err != nil {
		t.Fatal(err)
	}
	ep := []string{"--etcd-endpoints", srv.ClientURL}
	code, _, errOut := runService(t, append([]string{"put", "shop", bad}, ep...)...)
	if code != 2 || !strings.Contains(errOut, "lbPolicy") || !strings.Contains(errOut, "affinity.mode") {
		t.Errorf("put of an invalid configuration: exit %d, %q; want 2 listing lbPolicy and affinity.mode", code, errOut)
	}
	ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
	defer cancel()
	if resp, err := cli.Get(ctx, "/tether/services/shop"); err != nil || len(resp.Kvs) != 0 {
		t.Fatalf("an invalid configuration was written: %v %v", resp, err)
	}
	if code, out, errOut := runService(t, append(ep, "put", "shop", good)...); code != 0 || !strings.Contains(out, "written") {
		t.Fatalf("put: exit %d, %s %s", code, out, errOut)
	}
	if code, out, _ := runService(t, append([]string{"get", "shop"}, ep...)...); code != 0 || !strings.Contains(out, "shop.test") {
		t.Errorf("get: exit %d, %s", code, out)
	}
	if code, _, _ := runService(t, append([]string{"delete", "shop"}, ep...)...); code != 0 {
		t.Errorf("delete: exit %d", code)
	}
	if code, _, _ := runService(t, append([]string{"get", "shop"}, ep...)...); code != 1 {
		t.Errorf("get after delete: exit %d, want 1", code)
	}
	if code, _, _ := runService(t, "put", "Bad_Name", good); code != 2 {
		t.Errorf("bad service name: exit %d, want 2", code)
	}
}

// An etcd that is not there is said at once and plainly, as by the other commands
// (etcdconn.Open), not as the request's deadline.
func TestServiceSaysEtcdIsUnreachable(t *testing.T) {
	ep := fmt.Sprintf("127.0.0.1:%d", etcdtest.FreePort(t))
	code, _, errOut := runService(t, "get", "shop", "--etcd-endpoints", ep, "--timeout", "5s")
	if code != 1 || !strings.Contains(errOut, "no etcd endpoint reachable") || strings.Contains(errOut, "deadline") {
		t.Errorf("get against no etcd: exit %d, %q; want 1 saying no etcd endpoint is reachable", code, errOut)
	}
}
