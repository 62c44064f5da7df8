package controlplane_test

import (
	"fmt"
	"io"
	"net/http"
	"strings"
	"testing"
	"time"

	clientv3 "go.etcd.io/etcd/client/v3"

	"github.com/tetherlb/tether/controlplane"
	"github.com/tetherlb/tether/internal/cptest"
	"github.com/tetherlb/tether/internal/etcdtest"
	"github.com/tetherlb/tether/internal/eventually"
	"github.com/tetherlb/tether/internal/xdsclient"
)

// readyz returns the status and body of a control plane's /readyz.
func readyz(t *testing.T, cp *controlplane.ControlPlane) (int, string) {
	t.Helper()
	c := &http.Client{Timeout: 2 * time.Second}
	resp, err := c.Get("http://" + cp.AdminAddr() + "/readyz")
	if err != nil {
		t.Fatalf("GET /readyz: %v", err)
	}
	defer resp.Body.Close()
	b, _ := io.ReadAll(resp.Body)
	return resp.StatusCode, string(b)
}

// waitReadyz polls /readyz until it answers status, failing after within.
func waitReadyz(t *testing.T, cp *controlplane.ControlPlane, status int, within time.Duration) string {
	t.Helper()
	var body string
	eventually.Saying(t, fmt.Sprintf("/readyz %d", status), within, func() (bool, string) {
		var code int
		code, body = readyz(t, cp)
		return code == status, fmt.Sprintf("%d %q", code, strings.TrimSpace(body))
	})
	return body
}

// A replica cut off from etcd (the only member it knows stopped, while the other two go on
// and the other replica follows the registry) stops saying it is ready once it has not
// confirmed etcd's revision for the bound, and closes its xDS streams so that its Envoys
// move to a current replica. Envoys that connect to it meanwhile still get its last
// configuration. When etcd is back it is ready again.
func TestCutOffReplicaStepsDown(t *testing.T) {
	c := etcdtest.StartCluster(t, 3)
	cli := c.Client(t)
	put(t, cli, "/tether/services/app", clusterServiceJSON)
	put(t, cli, "/tether/instances/app/a1", instanceJSON("a1", 5001, "available", 1))
	put(t, cli, "/tether/instances/app/a2", instanceJSON("a2", 5002, "available", 1))
	cut := c.Members[0]
	const bound = 1500 * time.Millisecond
	cp1 := cptest.Start(t, controlplane.Config{Etcd: clientv3.Config{Endpoints: []string{cut.ClientURL}}, StaleAfter: bound})
	cp2 := cptest.Start(t, controlplane.Config{Etcd: clientv3.Config{Endpoints: []string{c.Members[1].ClientURL, c.Members[2].ClientURL}}, StaleAfter: bound})
	for _, cp := range []*controlplane.ControlPlane{cp1, cp2} {
		waitReady(t, cp, 15*time.Second, "a replica")
	}
	x := xdsclient.New(xdsclient.Delta, "envoy-0", "default")
	s := runClient(t, x, cp1.XDSAddr(), nil)
	waitFor(t, x, "everything from the replica", complete(2))
	waitReadyz(t, cp1, http.StatusOK, time.Second)

	cutAt := time.Now()
	cut.Stop()
	put(t, cli, "/tether/instances/app/a3", instanceJSON("a3", 5003, "available", 1))
	body := waitReadyz(t, cp1, http.StatusServiceUnavailable, 10*bound)
	if took := time.Since(cutAt); took < bound/2 {
		t.Errorf("/readyz failed %s after the cut: before the bound could pass", took)
	}
	if !strings.Contains(body, "etcd") {
		t.Errorf("/readyz says %q; want the reason (etcd's revision not confirmed)", body)
	}
	if err := s.wait(t, 5*time.Second); err == nil || !strings.Contains(err.Error(), "Unavailable") {
		t.Errorf("the stream ended with %v, want Unavailable", err)
	}
	if code, _ := readyz(t, cp2); code != http.StatusOK {
		t.Errorf("the replica that follows etcd answers /readyz %d", code)
	}
	// An Envoy that connects to the cut-off replica still gets its last configuration.
	late := xdsclient.New(xdsclient.Delta, "envoy-1", "default")
	runClient(t, late, cp1.XDSAddr(), nil)
	waitFor(t, late, "the last configuration from the cut-off replica", complete(2))

	cut.StartAgain(t)
	waitReadyz(t, cp1, http.StatusOK, 15*time.Second)
	waitFor(t, late, "the change made while cut off", complete(3))
}
