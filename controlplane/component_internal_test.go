package controlplane

import (
	"context"
	"strings"
	"testing"
	"time"

	"github.com/rs/zerolog"
	clientv3 "go.etcd.io/etcd/client/v3"
	"go.uber.org/zap/zapcore"
	"google.golang.org/grpc/connectivity"

	"github.com/tetherlb/tether/internal/etcdtest"
	"github.com/tetherlb/tether/internal/syncbuf"
)

// A server that stops serving (its listener fails) stops the whole control plane with its
// error, logged; a server stopped by the shutdown is no error.
func TestServerFailureStopsTheControlPlane(t *testing.T) {
	srv := etcdtest.Start(t)
	for _, tc := range []struct {
		name string
		ln   func(*ControlPlane) interface{ Close() error }
	}{
		{"xDS server", func(cp *ControlPlane) interface{ Close() error } { return cp.xdsLn }},
		{"admin server", func(cp *ControlPlane) interface{ Close() error } { return cp.adminLn }},
	} {
		var logs syncbuf.Buffer
		ctx, cancel := context.WithCancel(context.Background())
		cp, err := Start(ctx, Config{Etcd: clientv3.Config{Endpoints: srv.Endpoints(), DialTimeout: 2 * time.Second},
			XDSAddr: "127.0.0.1:0", AdminAddr: "127.0.0.1:0", ShutdownTimeout: 2 * time.Second,
			Logger: zerolog.New(&logs).Level(zerolog.ErrorLevel)})
		if err != nil {
			cancel()
			t.Fatalf("%s: %v", tc.name, err)
		}
		// The etcd client logs nothing of its own: its retries are the watcher's to report.
		if cp.cli.GetLogger().Core().Enabled(zapcore.ErrorLevel) {
			t.Errorf("%s: the etcd client has a logger of its own", tc.name)
		}
		_ = tc.ln(cp).Close()
		done := make(chan error, 1)
		go func() { done <- cp.Wait() }()
		select {
		case err = <-done:
		case <-time.After(15 * time.Second):
			cancel()
			t.Fatalf("%s: the control plane kept running without it", tc.name)
		}
		cancel()
		if err == nil || !strings.HasPrefix(err.Error(), tc.name+": ") {
			t.Errorf("%s failed: the control plane stopped with %v", tc.name, err)
		}
		if cp.cli.ActiveConnection().GetState() != connectivity.Shutdown {
			t.Errorf("%s failed: the etcd client is still open after the stop", tc.name)
		}
		if !strings.Contains(logs.String(), "stopping the control plane") || !strings.Contains(logs.String(), tc.name) {
			t.Errorf("%s failed: logged %s", tc.name, logs.String())
		}
	}
}
