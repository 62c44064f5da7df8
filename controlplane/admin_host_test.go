package controlplane_test

import (
	"io"
	"net/http"
	"testing"
	"time"

	clientv3 "go.etcd.io/etcd/client/v3"

	"github.com/tetherlb/tether/controlplane"
	"github.com/tetherlb/tether/internal/cptest"
	"github.com/tetherlb/tether/internal/etcdtest"
)

// The admin server answers only loopback Host headers and the names the operator allows: a
// DNS-rebinding page (its own name pointed at 127.0.0.1) cannot read the registry, the
// configuration or the profiler through a browser on the control plane's host.
func TestAdminRefusesForeignHosts(t *testing.T) {
	srv := etcdtest.Start(t)
	cp := cptest.Start(t, controlplane.Config{Etcd: clientv3.Config{Endpoints: srv.Endpoints()}, AdminHosts: []string{"tether.example.com"}})
	waitReady(t, cp, 10*time.Second, "the control plane")
	status := func(path, host string) int {
		t.Helper()
		req, err := http.NewRequest(http.MethodGet, "http://"+cp.AdminAddr()+path, nil)
		if err != nil {
			t.Fatal(err)
		}
		req.Host = host
		resp, err := http.DefaultClient.Do(req)
		if err != nil {
			t.Fatal(err)
		}
		_, _ = io.Copy(io.Discard, resp.Body)
		resp.Body.Close()
		return resp.StatusCode
	}
	for _, path := range []string{"/debug/config", "/api/state", "/debug/pprof/", "/metrics", "/"} {
		for _, host := range []string{"rebind.attacker.example", "rebind.attacker.example:18001", "10.1.2.3", "tether.example.com.evil"} {
			if got := status(path, host); got != http.StatusForbidden {
				t.Errorf("%s with Host %s: %d, want 403", path, host, got)
			}
		}
	}
	for _, host := range []string{"127.0.0.1", cp.AdminAddr(), "localhost", "LOCALHOST:18001", "[::1]:18001", "127.0.0.2", "tether.example.com", "Tether.Example.com.:443"} {
		if got := status("/debug/config", host); got != http.StatusOK {
			t.Errorf("/debug/config with Host %s: %d, want 200", host, got)
		}
	}
}
