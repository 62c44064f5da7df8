package controlplane_test

import (
	"bufio"
	"context"
	"crypto/tls"
	"errors"
	"fmt"
	"io"
	"net"
	"net/http"
	"strings"
	"testing"
	"time"

	discovery "github.com/envoyproxy/go-control-plane/envoy/service/discovery/v3"
	resourcev3 "github.com/envoyproxy/go-control-plane/pkg/resource/v3"
	"github.com/rs/zerolog"
	clientv3 "go.etcd.io/etcd/client/v3"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/status"

	"github.com/tetherlb/tether/controlplane"
	"github.com/tetherlb/tether/controlplane/xdscache"
	"github.com/tetherlb/tether/internal/cptest"
	"github.com/tetherlb/tether/internal/etcdtest"
	"github.com/tetherlb/tether/internal/eventually"
	"github.com/tetherlb/tether/internal/syncbuf"
	"github.com/tetherlb/tether/internal/tlstest"
)

// Run refuses an invalid configuration with the flag's error, and otherwise serves until its
// context ends, then returns nil.
func TestRunEndsWithItsContext(t *testing.T) {
	if err := controlplane.Run(context.Background(), controlplane.Config{ListenPort: 70000}); err == nil ||
		!strings.Contains(err.Error(), "--envoy-listen-port") {
		t.Fatalf("Run with port 70000: %v", err)
	}
	srv := etcdtest.Start(t)
	admin := fmt.Sprintf("127.0.0.1:%d", etcdtest.FreePort(t))
	ctx, cancel := context.WithCancel(context.Background())
	defer cancel()
	done := make(chan error, 1)
	go func() {
		done <- controlplane.Run(ctx, controlplane.Config{Etcd: clientv3.Config{Endpoints: srv.Endpoints(), DialTimeout: 2 * time.Second},
			XDSAddr: "127.0.0.1:0", AdminAddr: admin, ShutdownTimeout: 2 * time.Second, Logger: testLogger(t)})
	}()
	eventually.True(t, "the admin server answers", 10*time.Second, func() bool {
		select {
		case err := <-done:
			t.Fatalf("Run returned before its context ended: %v", err)
		default:
		}
		resp, err := http.Get("http://" + admin + "/healthz")
		if err == nil {
			resp.Body.Close()
		}
		return err == nil
	})
	cancel()
	select {
	case err := <-done:
		if err != nil {
			t.Errorf("Run after its context ended: %v", err)
		}
	case <-time.After(15 * time.Second):
		t.Fatal("Run did not return within 15s of its context's end")
	}
}

// A taken xDS address fails Start naming the flag.
func TestStartFailsOnATakenXDSAddress(t *testing.T) {
	srv := etcdtest.Start(t)
	taken, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	defer taken.Close()
	_, err = controlplane.Start(context.Background(), controlplane.Config{
		Etcd:    clientv3.Config{Endpoints: srv.Endpoints(), DialTimeout: 2 * time.Second},
		XDSAddr: taken.Addr().String(), AdminAddr: "127.0.0.1:0", Logger: testLogger(t),
	})
	if err == nil || !strings.Contains(err.Error(), "--xds-addr") {
		t.Fatalf("Start with the xDS address taken: %v; want an error naming --xds-addr", err)
	}
}

// xDS over TLS, or in plaintext on loopback, is served without the plaintext warning.
func TestNoPlaintextWarningOnLoopbackOrTLS(t *testing.T) {
	srv := etcdtest.Start(t)
	cert := tlstest.New(t, "xds-server-ca").Server(t, "controlplane")
	for _, tc := range []struct {
		name string
		tls  *tls.Config
	}{{"plaintext on loopback", nil}, {"TLS", &tls.Config{Certificates: []tls.Certificate{cert.Cert}, MinVersion: tls.VersionTLS12}}} {
		var logs syncbuf.Buffer
		ctx, cancel := context.WithCancel(context.Background())
		cp, err := controlplane.Start(ctx, controlplane.Config{Etcd: clientv3.Config{Endpoints: srv.Endpoints(), DialTimeout: 2 * time.Second},
			XDSAddr: "127.0.0.1:0", AdminAddr: "127.0.0.1:0", XDSTLS: tc.tls, ShutdownTimeout: 2 * time.Second,
			Logger: zerolog.New(&logs).Level(zerolog.WarnLevel)})
		if err != nil {
			cancel()
			t.Fatalf("%s: %v", tc.name, err)
		}
		cancel()
		if err := cp.Wait(); err != nil {
			t.Errorf("%s: stopped with %v", tc.name, err)
		}
		if strings.Contains(logs.String(), "plaintext") {
			t.Errorf("%s: warned of plaintext xDS:\n%s", tc.name, logs.String())
		}
	}
}

// Before the first publication a stream may subscribe 2 x --max-services names per type plus
// the margin (Envoys back from a restart ask for what they held), no more.
func TestNamesBeforeTheFirstPublicationFollowMaxServices(t *testing.T) {
	dead := fmt.Sprintf("http://127.0.0.1:%d", etcdtest.FreePort(t))
	cp := cptest.Start(t, controlplane.Config{Etcd: clientv3.Config{Endpoints: []string{dead}}, MaxServices: 2})
	conn := rawConn(t, cp)
	limit := 2*2 + xdscache.DefaultNameMargin
	for _, n := range []int{limit, limit + 1} {
		ctx, cancel := context.WithTimeout(context.Background(), 20*time.Second)
		s, err := discovery.NewAggregatedDiscoveryServiceClient(conn).DeltaAggregatedResources(ctx)
		if err != nil {
			cancel()
			t.Fatal(err)
		}
		names := make([]string, n)
		for i := range names {
			names[i] = fmt.Sprintf("tether_svc-%d", i)
		}
		if err := s.Send(&discovery.DeltaDiscoveryRequest{TypeUrl: resourcev3.EndpointType, ResourceNamesSubscribe: names}); err != nil {
			cancel()
			t.Fatal(err)
		}
		// The server reads the request before the end of the stream: it ends the stream
		// refusing the request, or at the end.
		_ = s.CloseSend()
		_, err = s.Recv()
		cancel()
		if refused := status.Code(err) == codes.InvalidArgument; refused != (n > limit) || (!refused && !errors.Is(err, io.EOF)) {
			t.Errorf("%d names before the first publication: %v", n, err)
		}
	}
}

// A request still running on the admin server when the shutdown bound ends is cut, not
// left to finish (a 20 s profile here).
func TestShutdownCutsAdminRequestsPastItsBound(t *testing.T) {
	srv := etcdtest.Start(t)
	ctx, cancel := context.WithCancel(context.Background())
	defer cancel()
	cp, err := controlplane.Start(ctx, controlplane.Config{Etcd: clientv3.Config{Endpoints: srv.Endpoints(), DialTimeout: 2 * time.Second},
		XDSAddr: "127.0.0.1:0", AdminAddr: "127.0.0.1:0", ShutdownTimeout: 300 * time.Millisecond, Logger: testLogger(t)})
	if err != nil {
		t.Fatal(err)
	}
	conn, err := net.Dial("tcp", cp.AdminAddr())
	if err != nil {
		t.Fatal(err)
	}
	defer conn.Close()
	// An execution trace of 20 s: its response's first bytes show it running.
	if _, err := io.WriteString(conn, "GET /debug/pprof/trace?seconds=20 HTTP/1.1\r\nHost: localhost\r\n\r\n"); err != nil {
		t.Fatal(err)
	}
	_ = conn.SetReadDeadline(time.Now().Add(10 * time.Second))
	br := bufio.NewReader(conn)
	resp, err := http.ReadResponse(br, nil)
	if err != nil {
		t.Fatalf("trace: %v", err)
	}
	if err := cp.Stop(); err != nil {
		t.Fatalf("stop: %v", err)
	}
	_ = conn.SetReadDeadline(time.Now().Add(10 * time.Second))
	b, err := io.ReadAll(resp.Body)
	var ne net.Error
	if errors.As(err, &ne) && ne.Timeout() {
		t.Fatalf("the admin connection was not closed at the shutdown bound (%d bytes read)", len(b))
	}
}
