package ctl

import (
	"context"
	"strings"
	"testing"
	"time"

	core "github.com/envoyproxy/go-control-plane/envoy/config/core/v3"
	typev3 "github.com/envoyproxy/go-control-plane/envoy/type/v3"
	resourcev3 "github.com/envoyproxy/go-control-plane/pkg/resource/v3"
	clientv3 "go.etcd.io/etcd/client/v3"
	"google.golang.org/grpc"
	"google.golang.org/grpc/credentials/insecure"

	"github.com/tetherlb/tether/controlplane"
	"github.com/tetherlb/tether/internal/cptest"
	"github.com/tetherlb/tether/internal/etcdtest"
	"github.com/tetherlb/tether/internal/xdsclient"
)

// TestStatusReportsOldEnvoys: with --admin-addr, status asks the control plane for its
// connected Envoys and names each one older than the minimum version, with what it loses.
func TestStatusReportsOldEnvoys(t *testing.T) {
	srv := etcdtest.Start(t)
	seed(t, srv.Client(t))
	cp := cptest.Start(t, controlplane.Config{Etcd: clientv3.Config{Endpoints: srv.Endpoints()}})
	ctx, cancel := context.WithCancel(context.Background())
	defer cancel()
	conn, err := grpc.NewClient(cp.XDSAddr(), grpc.WithTransportCredentials(insecure.NewCredentials()))
	if err != nil {
		t.Fatal(err)
	}
	defer conn.Close()
	c := xdsclient.New(xdsclient.Delta, "edge-1", "default")
	c.Node.UserAgentName = "envoy"
	c.Node.UserAgentVersionType = &core.Node_UserAgentBuildVersion{UserAgentBuildVersion: &core.BuildVersion{
		Version: &typev3.SemanticVersion{MajorNumber: 1, MinorNumber: 35, Patch: 2}}}
	done := c.Start(ctx, conn)
	wctx, wcancel := context.WithTimeout(ctx, 15*time.Second)
	defer wcancel()
	if err := c.WaitFor(wctx, func(v xdsclient.View) bool { return len(v.Resources[resourcev3.ClusterType]) > 0 }); err != nil {
		t.Fatalf("waiting for clusters: %v", err)
	}
	code, out, errOut := runStatus(t, "--etcd-endpoints", srv.ClientURL, "--admin-addr", cp.AdminAddr())
	if code != 0 || !strings.Contains(out, "edge-1") || !strings.Contains(out, "1.35.2") || !strings.Contains(out, "below "+controlplane.MinEnvoyVersion) {
		t.Errorf("status --admin-addr: exit %d\nstdout:\n%s\nstderr:\n%s\nwant edge-1 reported below %s", code, out, errOut, controlplane.MinEnvoyVersion)
	}
	cancel()
	if err := <-done; err != nil {
		t.Logf("xDS client stopped: %v", err)
	}
}
