package sim

import (
	"context"
	"errors"
	"fmt"
	"maps"
	"math/rand/v2"
	"net/http"
	"slices"
	"strings"
	"sync"
	"sync/atomic"
	"time"

	resourcev3 "github.com/envoyproxy/go-control-plane/pkg/resource/v3"
	"google.golang.org/grpc"
	"google.golang.org/grpc/credentials/insecure"
	"google.golang.org/protobuf/proto"

	"github.com/tetherlb/tether/internal/xdsclient"
)

// envoy is one simulated Envoy: the project's xDS client (SotW or delta) on a stream that it
// re-opens when it breaks, as Envoy does, keeping its configuration meanwhile, and the routing
// model over what it holds. A slow Envoy (freeze) neither applies nor ACKs endpoint updates
// until thawed, as an Envoy busy applying a large configuration.
type envoy struct {
	name    string
	replica int
	cli     *xdsclient.Client
	// joined: its stream runs. In a late-join run (sim.go) only the first Envoy starts with
	// the run; users and faults reach only joined Envoys.
	joined atomic.Bool
	// configured: it has held routes and an assignment of every cluster; users reach it from
	// then on. Envoy starts its workers only once every cluster has initialized, an EDS one
	// with its first assignment (envoy-rules row 37): a joining Envoy whose first endpoints are
	// held back serves no one.
	configured atomic.Bool

	mu        sync.Mutex
	frozen    bool
	tbl       *tables
	responses int64
	tblErr    error
	nacks     []string
	cancel    context.CancelFunc // the current stream's
}

func newEnvoy(name, group string, v xdsclient.Variant, replica int) *envoy {
	e := &envoy{name: name, replica: replica, cli: xdsclient.New(v, name, group)}
	e.cli.NACK = e.nack
	return e
}

// nack is row 11 and ValidateAll: Envoy refuses what its proto validation or RE2 refuses.
// Tether must never be refused (invariant 4).
func (e *envoy) nack(typeURL string, res map[string]proto.Message) string {
	for name, m := range res {
		if v, ok := m.(interface{ ValidateAll() error }); ok {
			if err := v.ValidateAll(); err != nil {
				msg := fmt.Sprintf("%s %s: %v", typeURL, name, err)
				e.mu.Lock()
				e.nacks = append(e.nacks, msg)
				e.mu.Unlock()
				return msg
			}
		}
	}
	return ""
}

// run keeps a stream open to the replica's address (addr() is read at each connect) until ctx
// ends, re-opening it with a short backoff when it breaks.
func (e *envoy) run(ctx context.Context, addr func(int) string) {
	for ctx.Err() == nil {
		conn, err := grpc.NewClient(addr(e.replica), grpc.WithTransportCredentials(insecure.NewCredentials()))
		if err == nil {
			sctx, cancel := context.WithCancel(ctx)
			e.mu.Lock()
			e.cancel = cancel
			e.mu.Unlock()
			_ = e.cli.Run(sctx, conn)
			cancel()
			_ = conn.Close()
		}
		select {
		case <-ctx.Done():
		case <-time.After(time.Duration(50+rand.IntN(200)) * time.Millisecond):
		}
	}
}

// reconnect breaks the stream; run opens a new one.
func (e *envoy) reconnect() {
	e.mu.Lock()
	c := e.cancel
	e.mu.Unlock()
	if c != nil {
		c()
	}
}

// freeze makes the Envoy slow: it holds its endpoint ACKs and routes with what it had.
// "What it had" is what it holds when the ACKs stop, not the tables last built for a user:
// those are built lazily and can be older than responses already ACKed, and a frozen Envoy
// routing without a server it ACKed breaks invariant 1 with no fault of the control plane
// (soak seed 2031893215). Envoy ACKs only what it applied.
func (e *envoy) freeze() {
	e.cli.HoldACKs(resourcev3.EndpointType)
	e.mu.Lock()
	defer e.mu.Unlock()
	v := e.cli.View()
	t, err := decodeTables(v.Resources)
	e.tbl, e.tblErr, e.responses = t, err, v.Responses
	e.frozen = true
}

func (e *envoy) thaw() {
	e.mu.Lock()
	e.frozen = false
	e.mu.Unlock()
	e.cli.ReleaseACKs()
}

// tables returns the routing tables of what the Envoy holds (rebuilt when it received more).
func (e *envoy) tables() (*tables, error) {
	e.mu.Lock()
	defer e.mu.Unlock()
	if e.frozen && e.tbl != nil {
		return e.tbl, nil
	}
	v := e.cli.View()
	if v.Responses != e.responses || e.tbl == nil {
		t, err := decodeTables(v.Resources)
		e.tbl, e.tblErr, e.responses = t, err, v.Responses
	}
	return e.tbl, e.tblErr
}

// serving reports whether users reach it: joined, and configured once.
func (e *envoy) serving() bool {
	if !e.joined.Load() {
		return false
	}
	if e.configured.Load() {
		return true
	}
	t, err := e.tables()
	if err != nil || t == nil || t.routes == nil {
		return false
	}
	for name := range t.clusters {
		if _, ok := t.hosts[name]; !ok {
			return false
		}
	}
	e.configured.Store(true)
	return true
}

// serve routes one request.
func (e *envoy) serve(ctx context.Context, client *http.Client, rng *rand.Rand, req request) (response, error) {
	t, err := e.tables()
	if err != nil {
		return response{}, fmt.Errorf("envoy %s: %w", e.name, err)
	}
	if t == nil {
		return response{}, errors.New("no configuration yet")
	}
	return t.route(ctx, client, rng, req)
}

// endpoints describes what the Envoy holds for every cluster, for convergence checks.
func (e *envoy) endpoints() string {
	t, err := e.tables()
	if err != nil || t == nil {
		return fmt.Sprintf("error: %v", err)
	}
	var b strings.Builder
	for _, name := range slices.Sorted(maps.Keys(t.hosts)) {
		fmt.Fprintf(&b, "%s: %s\n", name, strings.Join(t.sortedHosts(name), " "))
	}
	return b.String()
}
