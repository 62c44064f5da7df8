package controlplane_test

import (
	"context"
	"fmt"
	"os"
	"sync"
	"testing"
	"time"

	core "github.com/envoyproxy/go-control-plane/envoy/config/core/v3"
	resourcev3 "github.com/envoyproxy/go-control-plane/pkg/resource/v3"
	"github.com/shirou/gopsutil/v4/process"
	clientv3 "go.etcd.io/etcd/client/v3"
	"google.golang.org/protobuf/proto"

	"github.com/tetherlb/tether/controlplane"
	"github.com/tetherlb/tether/internal/cptest"
	"github.com/tetherlb/tether/internal/xdsclient"
)

// BenchmarkPromotionDelay measures two-phase publication with n simulated Envoys of one
// group (half SotW, half delta): per new instance, the time until every Envoy holds it as
// DRAINING (ms-draining: what one-phase publication would have cost to reach them all) and
// until every Envoy holds it HEALTHY (ms-healthy). Their difference is the promotion delay:
// the extra time before a new server takes new sessions. At 1,000 Envoys every push is
// answered by a burst of ACKs, each of which wakes the evaluation: cpu-ms is the process's CPU
// per new instance (the clients' included), and a profile (-cpuprofile) shows the evaluation's
// share of it.
func BenchmarkPromotionDelay(b *testing.B) {
	for _, n := range []int{1, 10, 50, 1000} {
		b.Run(fmt.Sprintf("envoys=%d", n), func(b *testing.B) {
			srv := twoInstances(b)
			cli := srv.Client(b)
			cp := cptest.Start(b, controlplane.Config{Etcd: clientv3.Config{Endpoints: srv.Endpoints()},
				PublishSettle: 10 * time.Second, MaxConnsPerPeer: 2 * n})
			clocks := make([]*phaseClock, n)
			for i := range clocks {
				v := xdsclient.SotW
				if i%2 == 1 {
					v = xdsclient.Delta
				}
				c := xdsclient.New(v, fmt.Sprintf("envoy-%d", i), "edge")
				clocks[i] = &phaseClock{c: c, done: make(chan struct{})}
				c.OnUpdate = clocks[i].onUpdate
				runClient(b, c, cp.XDSAddr(), nil)
			}
			ctx, cancel := context.WithTimeout(context.Background(), 2*time.Minute)
			for _, pc := range clocks {
				if err := pc.c.WaitFor(ctx, func(v xdsclient.View) bool { return health(v, 5001) == core.HealthStatus_HEALTHY }); err != nil {
					b.Fatalf("first configuration: %v", err)
				}
			}
			cancel()
			var draining, healthy time.Duration
			cpu0 := processCPU(b)
			b.ResetTimer()
			for i := 0; i < b.N; i++ {
				port := uint32(6000 + i%1000)
				id := fmt.Sprintf("n%d", i)
				for _, pc := range clocks {
					pc.expect(port)
				}
				start := time.Now()
				put(b, cli, "/tether/instances/app/"+id, instanceJSON(id, int(port), "available", 0))
				var lastDraining, lastHealthy time.Time
				for _, pc := range clocks {
					d, h := pc.wait(b, port)
					lastDraining, lastHealthy = later(lastDraining, d), later(lastHealthy, h)
				}
				draining += lastDraining.Sub(start)
				healthy += lastHealthy.Sub(start)
			}
			b.ReportMetric(float64(draining.Microseconds())/1000/float64(b.N), "ms-draining")
			b.ReportMetric(float64(healthy.Microseconds())/1000/float64(b.N), "ms-healthy")
			b.ReportMetric(float64((healthy-draining).Microseconds())/1000/float64(b.N), "ms-promotion")
			b.ReportMetric((processCPU(b)-cpu0)*1000/float64(b.N), "cpu-ms")
		})
	}
}

// phaseClock notes when one client is first sent the expected endpoint (DRAINING, in its
// first phase) and when HEALTHY, from its updates: a promotion can come before a poll of the
// client's view would see DRAINING.
type phaseClock struct {
	c *xdsclient.Client

	mu                sync.Mutex
	port              uint32
	seenAt, healthyAt time.Time
	done              chan struct{}
}

func (pc *phaseClock) expect(port uint32) {
	pc.mu.Lock()
	pc.port, pc.seenAt, pc.healthyAt, pc.done = port, time.Time{}, time.Time{}, make(chan struct{})
	pc.mu.Unlock()
}

func (pc *phaseClock) onUpdate(u xdsclient.Update) {
	if u.TypeURL != resourcev3.EndpointType {
		return
	}
	pc.mu.Lock()
	defer pc.mu.Unlock()
	if pc.port == 0 || !pc.healthyAt.IsZero() {
		return
	}
	for _, m := range u.Resources {
		v := xdsclient.View{Resources: map[string]map[string]proto.Message{resourcev3.EndpointType: {"x": m}}}
		switch health(v, pc.port) {
		case -1:
			continue
		case core.HealthStatus_HEALTHY:
			pc.healthyAt = u.At
			if pc.seenAt.IsZero() {
				pc.seenAt = u.At
			}
			close(pc.done)
			return
		default:
			if pc.seenAt.IsZero() {
				pc.seenAt = u.At
			}
		}
	}
}

// wait returns when the client first held the endpoint on port and when it held it HEALTHY.
func (pc *phaseClock) wait(b *testing.B, port uint32) (seen, healthy time.Time) {
	pc.mu.Lock()
	done := pc.done
	pc.mu.Unlock()
	select {
	case <-done:
	case <-time.After(30 * time.Second):
		b.Fatalf("port %d not HEALTHY within 30s", port)
	}
	pc.mu.Lock()
	defer pc.mu.Unlock()
	return pc.seenAt, pc.healthyAt
}

func later(a, b time.Time) time.Time {
	if b.After(a) {
		return b
	}
	return a
}

// processCPU returns this process's CPU seconds so far.
func processCPU(b *testing.B) float64 {
	p, err := process.NewProcess(int32(os.Getpid()))
	if err != nil {
		b.Fatal(err)
	}
	t, err := p.Times()
	if err != nil {
		b.Fatal(err)
	}
	return t.User + t.System
}
