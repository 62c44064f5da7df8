package controlplane_test

import (
	"context"
	"net/http"
	"strings"
	"testing"
	"time"

	"github.com/rs/zerolog"
	clientv3 "go.etcd.io/etcd/client/v3"

	"github.com/tetherlb/tether/controlplane"
	"github.com/tetherlb/tether/internal/etcdtest"
	"github.com/tetherlb/tether/internal/eventually"
	"github.com/tetherlb/tether/internal/syncbuf"
)

// With an etcd user the client authenticates at start: a control plane started before etcd
// must wait for it (retrying with backoff), as it does without a user.
func TestStartWaitsForEtcdWithAuth(t *testing.T) {
	etcd := etcdtest.Start(t, etcdtest.WithFastPasswords())
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	admin := etcd.Client(t)
	for _, step := range []func() error{
		func() error { _, err := admin.UserAdd(ctx, "root", "root-pw"); return err },
		func() error { _, err := admin.UserGrantRole(ctx, "root", "root"); return err },
		func() error { _, err := admin.AuthEnable(ctx); return err },
	} {
		if err := step(); err != nil {
			t.Fatal(err)
		}
	}
	etcd.Stop()

	var logs syncbuf.Buffer
	runCtx, stop := context.WithCancel(context.Background())
	type started struct {
		cp  *controlplane.ControlPlane
		err error
	}
	result := make(chan started, 1)
	go func() {
		cp, err := controlplane.Start(runCtx, controlplane.Config{
			Etcd:    clientv3.Config{Endpoints: etcd.Endpoints(), Username: "root", Password: "root-pw", DialTimeout: 300 * time.Millisecond},
			XDSAddr: "127.0.0.1:0", AdminAddr: "127.0.0.1:0", Logger: zerolog.New(&logs),
		})
		result <- started{cp, err}
	}()
	var got *started
	t.Cleanup(func() {
		stop()
		if got == nil {
			r := <-result
			got = &r
		}
		if got.cp != nil {
			_ = got.cp.Wait()
		}
	})
	eventually.Saying(t, "a retry logged", 10*time.Second, func() (bool, string) {
		select {
		case r := <-result:
			got = &r
			t.Fatalf("Start returned while etcd was down: %v", r.err)
		default:
		}
		return strings.Contains(logs.String(), "etcd not reachable yet"), "\n" + logs.String()
	})
	etcd.StartAgain(t)
	select {
	case r := <-result:
		got = &r
	case <-time.After(15 * time.Second):
		t.Fatal("Start did not return within 15s of etcd coming up")
	}
	if got.err != nil {
		t.Fatalf("Start: %v", got.err)
	}
	eventually.Saying(t, "/readyz 200 once etcd is up", 10*time.Second, func() (bool, string) {
		resp, err := http.Get("http://" + got.cp.AdminAddr() + "/readyz")
		if err != nil {
			return false, err.Error()
		}
		resp.Body.Close()
		return resp.StatusCode == http.StatusOK, resp.Status
	})
}
