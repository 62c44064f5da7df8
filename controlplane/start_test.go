package controlplane_test

import (
	"bytes"
	"context"
	"crypto/tls"
	"fmt"
	"net"
	"net/http"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/rs/zerolog"
	clientv3 "go.etcd.io/etcd/client/v3"

	"github.com/tetherlb/tether/controlplane"
	"github.com/tetherlb/tether/internal/etcdtest"
	"github.com/tetherlb/tether/internal/tlstest"
)

// syncBuffer is a log sink read by the test while the control plane writes to it.
type syncBuffer struct {
	mu sync.Mutex
	b  bytes.Buffer
}

func (s *syncBuffer) Write(p []byte) (int, error) {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.b.Write(p)
}

func (s *syncBuffer) String() string {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.b.String()
}

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
	// Wait for the admin server to answer (bounded: 100 tries, 10 s), then end the context.
	deadline := time.Now().Add(10 * time.Second)
	for i := 0; ; i++ {
		select {
		case err := <-done:
			t.Fatalf("Run returned before its context ended: %v", err)
		default:
		}
		resp, err := http.Get("http://" + admin + "/healthz")
		if err == nil {
			resp.Body.Close()
			break
		}
		if i == 100 || time.Now().After(deadline) {
			t.Fatalf("admin server never answered: %v", err)
		}
		time.Sleep(100 * time.Millisecond)
	}
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
		var logs syncBuffer
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
