// Package cptest starts a control plane for tests: the one way every package's tests do,
// so that a change to how a control plane starts is made here once.
package cptest

import (
	"cmp"
	"context"
	"reflect"
	"testing"
	"time"

	"github.com/rs/zerolog"

	"github.com/tetherlb/tether/controlplane"
)

// Start starts a control plane from cfg and stops it when the test ends, failing the test if
// it stopped with an error. What cfg leaves empty takes a test's value: loopback addresses on
// free ports, a 2 s etcd dial and shutdown bound, and warnings logged to the test. Loopback
// backends are allowed, as the tests' backends are on 127.0.0.1; a test of their refusal
// calls controlplane.Start itself.
func Start(t testing.TB, cfg controlplane.Config) *controlplane.ControlPlane {
	t.Helper()
	cfg.XDSAddr = cmp.Or(cfg.XDSAddr, "127.0.0.1:0")
	cfg.AdminAddr = cmp.Or(cfg.AdminAddr, "127.0.0.1:0")
	cfg.ShutdownTimeout = cmp.Or(cfg.ShutdownTimeout, 2*time.Second)
	cfg.Etcd.DialTimeout = cmp.Or(cfg.Etcd.DialTimeout, 2*time.Second)
	if reflect.ValueOf(cfg.Logger).IsZero() {
		cfg.Logger = zerolog.New(zerolog.NewTestWriter(t)).Level(zerolog.WarnLevel)
	}
	cfg.AllowLoopback = true
	ctx, cancel := context.WithCancel(context.Background())
	cp, err := controlplane.Start(ctx, cfg)
	if err != nil {
		cancel()
		t.Fatalf("start control plane: %v", err)
	}
	t.Cleanup(func() {
		cancel()
		if err := cp.Wait(); err != nil {
			t.Errorf("control plane stopped with %v", err)
		}
	})
	return cp
}
