package controlplane_test

import (
	"context"
	"fmt"
	"testing"
	"time"

	core "github.com/envoyproxy/go-control-plane/envoy/config/core/v3"

	"github.com/tetherlb/tether/internal/xdsclient"
)

// BenchmarkPromotionDelay measures two-phase publication with n simulated Envoys of one
// group (half SotW, half delta): per new instance, the time until every Envoy holds it as
// DRAINING (ms-draining: what one-phase publication would have cost to reach them all) and
// until every Envoy holds it HEALTHY (ms-healthy). Their difference is the promotion delay:
// the extra time before a new server takes new sessions.
func BenchmarkPromotionDelay(b *testing.B) {
	for _, n := range []int{1, 10, 50} {
		b.Run(fmt.Sprintf("envoys=%d", n), func(b *testing.B) {
			srv := twoInstances(b)
			cli := srv.Client(b)
			cp := startCPSettle(b, srv.Endpoints(), 10*time.Second)
			clients := make([]*xdsclient.Client, n)
			for i := range clients {
				v := xdsclient.SotW
				if i%2 == 1 {
					v = xdsclient.Delta
				}
				clients[i] = xdsclient.New(v, fmt.Sprintf("envoy-%d", i), "edge")
				runClient(b, clients[i], cp.XDSAddr(), nil)
			}
			wait := func(port uint32, want core.HealthStatus) {
				ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
				defer cancel()
				for _, c := range clients {
					if err := c.WaitFor(ctx, func(v xdsclient.View) bool { return health(v, port) == want }); err != nil {
						b.Fatalf("port %d %v: %v", port, want, err)
					}
				}
			}
			wait(5001, core.HealthStatus_HEALTHY)
			var draining, healthy time.Duration
			b.ResetTimer()
			for i := 0; i < b.N; i++ {
				port := 6000 + i%1000
				id := fmt.Sprintf("n%d", i)
				start := time.Now()
				put(b, cli, "/tether/instances/app/"+id, instanceJSON(id, port, "available", 0))
				wait(uint32(port), core.HealthStatus_DRAINING)
				draining += time.Since(start)
				wait(uint32(port), core.HealthStatus_HEALTHY)
				healthy += time.Since(start)
			}
			b.ReportMetric(float64(draining.Microseconds())/1000/float64(b.N), "ms-draining")
			b.ReportMetric(float64(healthy.Microseconds())/1000/float64(b.N), "ms-healthy")
			b.ReportMetric(float64((healthy-draining).Microseconds())/1000/float64(b.N), "ms-promotion")
		})
	}
}
