package agent

import (
	"context"
	"errors"
	"maps"
	"sync"
	"time"

	"github.com/rs/zerolog"
	"go.etcd.io/etcd/api/v3/v3rpc/rpctypes"
	clientv3 "go.etcd.io/etcd/client/v3"

	"github.com/tetherlb/tether/internal/etcdconn"
	"github.com/tetherlb/tether/registry"
)

// drainRetryMax bounds the wait between two attempts to follow the drains.
const drainRetryMax = 30 * time.Second

// drainWatch follows the operators' drains of the agent's service
// (<prefix>/drains/<service>/), so that the agent reports its instance as draining, with the
// drain's name in its reason, while a drain selects it. The control plane serves a drained
// instance as draining whatever the agent reports; this only makes etcdctl, status and the
// monitor agree with what Envoy is told. An agent that cannot read the drains (an etcd role
// without read on <prefix>/drains/) logs it and keeps running.
type drainWatch struct {
	cli     *clientv3.Client
	key     string // the service's drains prefix
	service string
	log     zerolog.Logger

	mu     sync.Mutex
	drains map[string]registry.Drain
	// changed is signalled (without blocking) whenever the drains change.
	changed chan struct{}
}

func newDrainWatch(cli *clientv3.Client, prefix, service string, log zerolog.Logger) *drainWatch {
	return &drainWatch{cli: cli, key: registry.ServiceDrainsPrefix(prefix, service), service: service, log: log,
		drains: map[string]registry.Drain{}, changed: make(chan struct{}, 1)}
}

// match returns the drain that selects in, if any; a nil watch selects nothing.
func (w *drainWatch) match(in *registry.Instance) (registry.DrainMark, bool) {
	if w == nil {
		return registry.DrainMark{}, false
	}
	w.mu.Lock()
	defer w.mu.Unlock()
	return registry.DrainFor(w.drains, in)
}

// run lists and watches the drains until ctx ends, listing again after any failure with a
// backoff from 100ms to drainRetryMax.
func (w *drainWatch) run(ctx context.Context) {
	b := etcdconn.Backoff{Max: drainRetryMax}
	denied := false
	for ctx.Err() == nil {
		err := registry.Follow(ctx, w.cli, w.key, w.decode, w.set, b.Reset)
		if ctx.Err() != nil {
			return
		}
		delay := b.Next()
		switch {
		case errors.Is(err, rpctypes.ErrPermissionDenied):
			if !denied {
				w.log.Warn().Err(err).Str("key", w.key).Msg("cannot read the operators' drains (give the agent's etcd role read on them, see examples/etcd-roles.sh); the control plane still applies them")
			}
			denied, delay = true, drainRetryMax
		default:
			w.log.Debug().Err(err).Dur("retryIn", delay).Msg("following the drains failed")
		}
		if !etcdconn.Sleep(ctx, delay) {
			return
		}
	}
}

// decode reads a drain's value; an invalid one is left out, as the control plane leaves it
// out.
func (w *drainWatch) decode(name string, value []byte) (registry.Drain, bool) {
	d, err := registry.DecodeDrain(w.service, name, value)
	if err != nil {
		w.log.Debug().Err(err).Str("key", w.key+name).Msg("ignoring an invalid drain")
		return d, false
	}
	return d, true
}

func (w *drainWatch) set(m map[string]registry.Drain) {
	w.mu.Lock()
	same := maps.EqualFunc(w.drains, m, func(a, b registry.Drain) bool {
		return a.Instance == b.Instance && maps.Equal(a.Labels, b.Labels) && a.CreatedAt.Equal(b.CreatedAt)
	})
	w.drains = m
	w.mu.Unlock()
	if !same {
		select {
		case w.changed <- struct{}{}:
		default:
		}
	}
}
