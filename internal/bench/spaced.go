package bench

import (
	"context"
	"errors"
	"fmt"
	"time"
)

// spaced makes Config.Spaced single changes, one at a time, each SpacedGap after every Envoy
// held the previous one, so that each meets an idle control plane: what a lone change costs
// over etcd's own delivery. For each change and Envoy, the figure is the Envoy's receive time
// minus the time the harness's plain etcd watch saw the same change; both clocks are this
// process's monotonic clock.
func (h *harness) spaced(ctx context.Context, rep *Report) error {
	var floor []time.Duration
	prop := make([][]time.Duration, len(h.variants))
	over := make([][]time.Duration, len(h.variants))
	rng := h.newRand(1 << 61)
	m0, err := h.cp.metrics(ctx)
	if err != nil {
		return err
	}
	made := 0
	for i := 0; made < h.cfg.Spaced && i < 4*h.cfg.Spaced; i++ {
		t := time.NewTimer(h.cfg.SpacedGap)
		select {
		case <-ctx.Done():
			t.Stop()
			return fmt.Errorf("spaced changes: %w", ctx.Err())
		case <-t.C:
		}
		s := h.svcs[i%len(h.svcs)]
		s.busy.Store(true)
		kind := h.cfg.SpacedKind
		if kind == "" {
			kind = drawKind(rng)
		}
		o, err := h.change(ctx, s, kind, rng)
		s.busy.Store(false)
		if errors.Is(err, errInvisible) {
			continue
		}
		if err != nil {
			return fmt.Errorf("spaced change: %w", err)
		}
		made++
		rep.SpacedChanges++
		if o.floor.IsZero() {
			rep.SpacedFloorMissed++
		} else {
			floor = append(floor, o.floor.Sub(o.tw))
		}
		for e, at := range o.seen {
			v := h.envoys[e].variant
			if at.IsZero() {
				rep.Variants[v].SpacedMissed++
				continue
			}
			prop[v] = append(prop[v], at.Sub(o.tw))
			if !o.floor.IsZero() {
				over[v] = append(over[v], at.Sub(o.floor))
			}
		}
	}
	rep.SpacedFloor = Summarize(floor)
	m1, err := h.cp.metrics(ctx)
	if err != nil {
		return err
	}
	rep.SpacedTranslateMeanMs = meanDelta(m0, m1, "tether_translate_duration_seconds")
	rep.SpacedEventToPushMeanMs = meanDelta(m0, m1, "tether_event_to_push_seconds")
	for v := range h.variants {
		rep.Variants[v].SpacedPropagation = Summarize(prop[v])
		rep.Variants[v].SpacedOverFloor = Summarize(over[v])
	}
	return nil
}
