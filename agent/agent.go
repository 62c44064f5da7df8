package agent

import (
	"cmp"
	"context"
	"errors"
	"fmt"
	"net"
	"net/http"
	"net/netip"
	"os"
	"sync"
	"time"

	"github.com/rs/zerolog"
	"github.com/tetherlb/tether/internal/etcdconn"
	"github.com/tetherlb/tether/registry"
	clientv3 "go.etcd.io/etcd/client/v3"
)

// ErrIDHeld is returned by Run when another live agent holds the instance ID.
var ErrIDHeld = errors.New("another live agent holds this instance id")

// heldMargin is added to the holder's remaining lease TTL before a held ID is final: etcd
// expires leases on its own schedule, slightly after the TTL.
const heldMargin = 2 * time.Second

// drainReason is the reason published while draining.
const drainReason = "agent shutting down"

type runner struct {
	cfg       Config
	prefix    string
	key       string
	log       zerolog.Logger
	cli       *clientv3.Client
	m         *metrics
	probe     prober
	load      sampler
	adm       admission
	health    healthTracker
	drains    *drainWatch // the operators' drains of the service
	opTimeout time.Duration
	startedAt time.Time
	hostname  string // published with the PID, so that a restarted agent can adopt the key
	// claimSince is the service's claim this agent carries (registry.Instance.ClaimSince):
	// inherited from the live instances it finds when it registers, else its own key's
	// create revision; kept across re-registrations.
	claimSince int64
	backoff    etcdconn.Backoff
	// metricsAddr is the /metrics listener's address as published ("" when disabled).
	metricsAddr string
	// warning is what a control plane may refuse in the instance, logged with each
	// registration ("" when nothing).
	warning string

	lastLoad      registry.Load
	sessionsKnown bool
	failing       map[string]bool // probes failing, to log transitions only
	// addrAnswered is set once address:port accepted a connection; until then each sample
	// checks it (after that the health probe speaks for the app).
	addrAnswered bool
	draining     bool
	reportDrain  bool              // write the next value even inside the dead band (see writeDrain)
	current      registry.Instance // last evaluated value

	lease      lease
	registered bool
	written    registry.Instance
	writtenAt  time.Time
}

// Run registers the instance and keeps it up to date until ctx is canceled, then drains:
// it publishes "draining", waits until the session count reaches zero or cfg.DrainTimeout
// passes (or skipDrain is closed), deletes the key, revokes the lease and returns nil. Zero
// sessions count only in a sample taken cfg.DrainSettle after "draining" reached etcd: a
// session opened just before the signal, or sent by an Envoy that had not yet received the
// draining state, keeps the instance.
// It returns an error when the agent cannot run (ErrIDHeld when another live agent holds
// the ID). Etcd outages are ridden out with re-registration and backoff.
func Run(ctx context.Context, cfg Config, log zerolog.Logger, skipDrain <-chan struct{}) error {
	if err := cfg.Validate(); err != nil {
		return err
	}
	if err := systemHost.resolveIdentity(ctx, &cfg); err != nil {
		return err
	}
	prefix, _ := registry.NormalizePrefix(cfg.Prefix)
	log = log.With().Str("service", cfg.Service).Str("instance", cfg.ID).Logger()
	load, err := newSampler(ctx, cfg)
	if err != nil {
		return err
	}
	cli, err := etcdconn.Dial(ctx, cfg.Etcd, func(err error, wait time.Duration) {
		log.Warn().Err(err).Strs("endpoints", cfg.Etcd.Endpoints).Dur("retryIn", wait).Msg("etcd not reachable yet")
	})
	if err != nil {
		if ctx.Err() != nil {
			log.Info().Msg("stopped before etcd was reached")
			return nil
		}
		return fmt.Errorf("etcd client: %w", err)
	}
	defer cli.Close()
	opTimeout := opTimeoutFor(cfg.TTL)
	r := &runner{
		cfg: cfg, prefix: prefix, key: registry.InstanceKey(prefix, cfg.Service, cfg.ID), log: log, cli: cli,
		m:         newMetrics(cfg.Service, cfg.ID),
		probe:     prober{client: &http.Client{Timeout: cfg.ProbeTimeout}},
		load:      load,
		adm:       admission{th: cfg.Thresholds},
		opTimeout: opTimeout,
		lease:     lease{cli: cli, ttl: cfg.TTL, opTimeout: opTimeout},
		startedAt: time.Now().UTC(),
		hostname:  hostname(),
		failing:   map[string]bool{},
		drains:    newDrainWatch(cli, prefix, cfg.Service, log),
	}
	if registry.IsLoopback(cfg.Address) {
		r.warning = loopbackWarning(cfg.Address)
		r.m.warning = r.warning // and each registration's log line says it
	}
	if cfg.MetricsAddr != "" {
		stop, err := r.serveMetrics()
		if err != nil {
			return err
		}
		defer stop()
	}
	return r.run(ctx, skipDrain)
}

// opTimeoutFor bounds each etcd request by half the lease's TTL, so that a request stuck on
// a dead member leaves time for another attempt before the lease lapses (1-5 s).
func opTimeoutFor(ttl time.Duration) time.Duration {
	return min(max(ttl/2, time.Second), 5*time.Second)
}

// loopbackWarning says that a control plane refuses an instance on loopback address addr.
func loopbackWarning(addr string) string {
	return "address " + addr + " is loopback: a control plane refuses this instance (it is left out of Envoy, listed as rejected) unless started with --allow-loopback-backends, for a demo or tests on one host"
}

// serveMetrics listens on the first free address of --metrics-addr and records it for the
// registry's "agent" field.
func (r *runner) serveMetrics() (func(), error) {
	addrs, err := metricsListenAddrs(r.cfg.MetricsAddr)
	if err != nil {
		return nil, fmt.Errorf("--metrics-addr: %w", err)
	}
	var l net.Listener
	for _, a := range addrs {
		if l, err = net.Listen("tcp", a); err == nil {
			break
		}
	}
	if err != nil {
		if len(addrs) > 1 {
			return nil, fmt.Errorf("--metrics-addr %s: no free port in %s-%s: %w", r.cfg.MetricsAddr, addrs[0], addrs[len(addrs)-1], err)
		}
		return nil, fmt.Errorf("--metrics-addr: %w", err)
	}
	r.metricsAddr = advertised(l.Addr().(*net.TCPAddr), r.cfg.Address)
	srv := &http.Server{Handler: r.m.handler(), ReadHeaderTimeout: 5 * time.Second}
	go func() {
		if err := srv.Serve(l); err != nil && !errors.Is(err, http.ErrServerClosed) {
			r.log.Error().Err(err).Msg("metrics server stopped")
		}
	}()
	r.log.Info().Str("addr", l.Addr().String()).Str("advertised", r.metricsAddr).Msg("serving /metrics and /healthz")
	return func() {
		ctx, cancel := context.WithTimeout(context.Background(), time.Second)
		defer cancel()
		_ = srv.Shutdown(ctx)
	}, nil
}

// advertised is the metrics address published in the registry: the listener's, with an
// unspecified IP (all interfaces) replaced by the instance's address.
func advertised(a *net.TCPAddr, instanceAddr string) string {
	ip, _ := netip.AddrFromSlice(a.IP)
	ip = ip.Unmap()
	if ip.IsUnspecified() || !ip.IsValid() {
		if inst, err := netip.ParseAddr(instanceAddr); err == nil {
			ip = inst.Unmap()
		}
	}
	if !ip.IsValid() || ip.IsUnspecified() {
		return "" // nothing a monitor could link; the registry would refuse it
	}
	return netip.AddrPortFrom(ip, uint16(a.Port)).String()
}

func (r *runner) run(ctx context.Context, skipDrain <-chan struct{}) error {
	bg := context.WithoutCancel(ctx) // etcd and probes keep working while draining
	defer r.stopLease(bg)
	dctx, stopDrains := context.WithCancel(bg)
	drainsDone := make(chan struct{})
	go func() { defer close(drainsDone); r.drains.run(dctx) }()
	defer func() { stopDrains(); <-drainsDone }() // it logs: it must end before Run returns
	r.log.Info().Str("version", Version).Str("address", r.cfg.Address).Int("port", r.cfg.Port).
		Interface("thresholds", r.cfg.Thresholds).Str("loadSource", r.cfg.LoadSource).Msg("agent starting")
	if err := r.registerFirst(ctx, bg); err != nil {
		if ctx.Err() != nil && !errors.Is(err, ErrIDHeld) {
			r.log.Info().Msg("stopped before the instance was registered")
			return nil
		}
		return err
	}
	ticker := time.NewTicker(r.cfg.Interval)
	defer ticker.Stop()
	retry := time.NewTimer(time.Hour)
	retry.Stop()
	defer retry.Stop()
	var skip <-chan struct{}
	var drainDeadline, settle <-chan time.Time
	settled := false      // a sample taken DrainSettle after "draining" reached etcd
	var retryAt time.Time // after a failed write, ticks wait for the backoff
	var held time.Time    // the key taken by another lease while this agent was cut off (see checkHeld)
	done := ctx.Done()
	for {
		force := false
		select {
		case <-done:
			done, skip, r.draining, force = nil, skipDrain, true, true
			if r.cfg.DrainTimeout == 0 {
				return r.deregister(bg, "--drain-timeout is 0")
			}
			drainDeadline = time.After(r.cfg.DrainTimeout)
			stopNow := cmp.Or(r.cfg.StopNow, "signal again to stop now")
			ev := r.log.Info().Dur("timeout", r.cfg.DrainTimeout)
			if r.cfg.SessionsURL == "" {
				ev.Msg("draining: no --sessions-url, so waiting the whole drain timeout; " + stopNow)
			} else {
				ev.Int("sessions", r.lastLoad.Sessions).Msg("draining: waiting for sessions to end; " + stopNow)
			}
			r.current = r.instance()
		case <-skip:
			return r.deregister(bg, "second signal")
		case <-drainDeadline:
			return r.deregister(bg, "drain timeout")
		case <-r.lease.Done():
			r.lease.keepAliveLost()
			force = true
			r.log.Warn().Msg("lease keep-alive lost; registering again")
		case <-retry.C:
			force = true
		case <-settle:
			// Envoy has had the coalescing window to stop sending new sessions here:
			// count what the app holds now, not what it held before the signal.
			settle, settled = nil, true
			r.sample(bg)
		case <-ticker.C:
			r.sample(bg)
		case <-r.drains.changed:
			r.sample(bg)
			// drain --wait counts only values written after its drain: an instance already
			// draining (by another drain, or shutting down) must not keep it waiting for
			// the heartbeat.
			r.reportDrain = r.current.State == registry.StateDraining
		}
		if force || !time.Now().Before(retryAt) {
			if err := r.sync(bg); err != nil {
				d := r.backoff.Next()
				if errors.Is(err, registry.ErrInstanceExists) {
					var herr error
					if d, herr = r.checkHeld(bg, &held, d); herr != nil {
						return herr // the same end as a duplicate id at start
					}
				}
				retryAt = time.Now().Add(d)
				retry.Reset(d)
				r.log.Warn().Err(err).Dur("retryIn", d).Msg("cannot write the instance to etcd")
			} else {
				held = time.Time{}
			}
		}
		if r.draining && !settled && settle == nil && r.registered && r.written.State == registry.StateDraining {
			settle = time.After(r.cfg.DrainSettle)
		}
		if settled && r.cfg.SessionsURL != "" && r.sessionsKnown && r.lastLoad.Sessions == 0 {
			return r.deregister(bg, "no sessions left")
		}
	}
}

// registerFirst registers the instance at start. A key held by another lease may be a
// crashed agent's: wait for that lease to expire (its remaining TTL plus a margin) before
// concluding another live agent holds the ID. Other errors (etcd unreachable) are retried
// with backoff until ctx ends.
func (r *runner) registerFirst(ctx, bg context.Context) error {
	var held time.Time
	for {
		r.sample(bg)
		// A refused connection is known at once: say where and why, rather than wait for a
		// request's timeout and report a bare "context deadline exceeded".
		err := r.reachable(bg)
		if err == nil {
			err = r.ensureRegistered(bg, r.current)
		}
		if err == nil {
			return nil
		}
		delay := r.backoff.Next()
		if errors.Is(err, errUnreachable) {
			r.log.Error().Err(err).Dur("retryIn", delay).Msg("cannot register: etcd is not reachable; retrying")
		} else if errors.Is(err, registry.ErrInstanceExists) {
			if delay, err = r.checkHeld(bg, &held, delay); err != nil {
				return err
			}
		} else {
			r.log.Warn().Err(err).Strs("endpoints", r.cfg.Etcd.Endpoints).Dur("retryIn", delay).Msg("cannot register yet")
		}
		if !etcdconn.Sleep(ctx, delay) {
			return ctx.Err()
		}
	}
}

// errUnreachable marks reachable's errors.
var errUnreachable = errors.New("etcd unreachable")

// reachable checks that one of the etcd endpoints accepts a connection.
func (r *runner) reachable(ctx context.Context) error {
	timeout := r.cfg.Etcd.DialTimeout
	if timeout <= 0 || timeout > r.opTimeout {
		timeout = r.opTimeout
	}
	if err := etcdconn.Reachable(ctx, r.cfg.Etcd.Endpoints, timeout); err != nil {
		return fmt.Errorf("%w: %w", errUnreachable, err)
	}
	return nil
}

// checkHeld inspects the key after ErrInstanceExists. A key held by another lease may be a
// crashed agent's (or, after this agent was cut off, its own former key's successor): it
// waits for that lease's remaining TTL plus a margin (until *held, zero before the key is
// first seen held), then returns ErrIDHeld. It returns the wait before the next attempt:
// none when the key is gone, else delay, at most 250ms so that the holder's expiry is seen
// soon.
func (r *runner) checkHeld(ctx context.Context, held *time.Time, delay time.Duration) (time.Duration, error) {
	wait := min(delay, 250*time.Millisecond)
	lease, remaining, exists, herr := r.holder(ctx)
	switch {
	case herr != nil:
		r.log.Warn().Err(herr).Msg("cannot inspect the key's holder")
	case exists && lease == 0:
		return wait, fmt.Errorf("%w: key %s exists without a lease (written by hand?); delete it or choose another --id", ErrIDHeld, r.key)
	case !exists:
		return 0, nil
	case held.IsZero():
		*held = time.Now().Add(remaining + heldMargin)
		r.log.Warn().Str("key", r.key).Str("holder", fmt.Sprintf("%x", int64(lease))).Dur("leaseLeft", remaining).
			Msg("instance id is held by another lease; waiting for it to expire in case it was a crashed agent's")
	case time.Now().After(*held):
		return wait, fmt.Errorf("%w: id %q (key %s, lease %x) is still held after its lease TTL: stop the other agent or start this one with another --id",
			ErrIDHeld, r.cfg.ID, r.key, int64(lease))
	}
	return wait, nil
}

// sync brings etcd up to date with r.current: registration when needed, else a write when
// the change is past the dead band or the heartbeat is due.
func (r *runner) sync(ctx context.Context) error {
	if !r.lease.Alive() || !r.registered {
		return r.ensureRegistered(ctx, r.current)
	}
	cause := writeReason(r.written, r.current, time.Since(r.writtenAt), r.cfg.Heartbeat)
	if cause == "" && r.reportDrain {
		cause = writeDrain
	}
	if cause == "" {
		return nil
	}
	if cause == writeState {
		r.log.Info().Str("from", string(r.written.State)).Str("to", string(r.current.State)).Str("reason", r.current.Reason).Msg("state changed")
	}
	err := r.write(ctx, r.current, cause)
	if err == nil {
		r.reportDrain = false
	}
	if errors.Is(err, registry.ErrLeaseLost) {
		r.log.Warn().Msg("instance key no longer held by our lease; registering again")
		return r.ensureRegistered(ctx, r.current)
	}
	return err
}

// deregister ends the drain: mark the instance as leaving, delete the key, revoke the lease.
func (r *runner) deregister(ctx context.Context, why string) error {
	log := r.log.Info().Str("why", why)
	if r.cfg.SessionsURL != "" {
		log = log.Int("sessions", r.lastLoad.Sessions)
	}
	log.Msg("drain finished; removing the instance")
	if r.registered && r.lease.Alive() {
		r.markLeaving(ctx)
		octx, cancel := context.WithTimeout(ctx, r.opTimeout)
		err := registry.DeleteInstance(octx, r.cli, r.prefix, r.cfg.Service, r.cfg.ID, r.lease.ID())
		cancel()
		if err != nil {
			r.m.etcdErrors.WithLabelValues("delete").Inc()
			r.log.Warn().Err(err).Msg("cannot delete the instance key; revoking the lease removes it")
		}
	}
	r.registered = false
	r.m.setRegistered(false)
	r.stopLease(ctx)
	r.log.Info().Msg("instance removed; agent stopped")
	return nil
}

// markLeaving writes the instance once more, marked as leaving on purpose with its final
// load, and gives the control planes DrainSettle to see it before the key goes (etcd cannot
// put and delete one key in one transaction): a control
// plane coalesces changes and sees a deleted key's last value only in the state it last
// served, so a mark deleted within the same push would be lost, and the removal guard would
// take the departure for a lapsed lease. A failed write only costs that: the key still goes.
func (r *runner) markLeaving(ctx context.Context) {
	in := r.instance()
	in.Leaving = true
	if err := r.write(ctx, in, writeLeaving); err != nil {
		r.log.Warn().Err(err).Msg("cannot mark the instance as leaving; removing it anyway")
		return
	}
	etcdconn.Sleep(ctx, r.cfg.DrainSettle)
}

// sample measures load and probes the backend (concurrently, each bounded by ProbeTimeout),
// then evaluates the instance's state into r.current.
func (r *runner) sample(ctx context.Context) {
	pctx, cancel := context.WithTimeout(ctx, r.cfg.ProbeTimeout)
	defer cancel()
	var wg sync.WaitGroup
	var healthErr, availErr, sessErr error
	var sessions int
	if r.cfg.HealthURL != "" {
		wg.Go(func() { healthErr = r.probe.check(pctx, r.cfg.HealthURL) })
	}
	if r.cfg.AvailableURL != "" {
		wg.Go(func() { availErr = r.probe.check(pctx, r.cfg.AvailableURL) })
	}
	if r.cfg.SessionsURL != "" {
		wg.Go(func() { sessions, sessErr = r.probe.sessions(pctx, r.cfg.SessionsURL, r.cfg.SessionsMetric) })
	}
	var addrErr error
	checkAddr := !r.addrAnswered
	if checkAddr {
		wg.Go(func() { addrErr = dialAddress(pctx, r.cfg.Address, r.cfg.Port) })
	}
	u, loadErr := r.load.sample(pctx)
	wg.Wait()
	addrDown := ""
	if checkAddr {
		addrDown = r.addressResult(addrErr)
	}

	if r.probeResult("load", loadErr) {
		r.lastLoad.CPU, r.lastLoad.Memory, r.lastLoad.MemoryMB = round1(u.CPU), round1(u.Memory), round1(u.MemoryMB)
	}
	if r.cfg.SessionsURL != "" {
		r.sessionsKnown = r.probeResult("sessions", sessErr)
		if r.sessionsKnown {
			r.lastLoad.Sessions = sessions
		}
	}
	// Published, so that nobody reads a count the agent could not take as "no session left".
	r.lastLoad.SessionsUnknown = r.cfg.SessionsURL == "" || !r.sessionsKnown
	healthy, healthReason := true, ""
	if r.cfg.HealthURL != "" {
		r.probeResult("health", healthErr)
		healthy, healthReason = r.health.update(healthErr)
	}
	full, reason := r.adm.evaluate(r.lastLoad)
	if r.cfg.AvailableURL != "" && !r.probeResult("available", availErr) {
		full = true
		reason = joinReasons(reason, "application says unavailable")
	}
	in := r.instance()
	mark, drained := r.drains.match(&in)
	switch {
	case r.draining:
	case !healthy:
		in.State, in.Reason = registry.StateUnhealthy, healthReason
	case addrDown != "":
		in.State, in.Reason = registry.StateUnhealthy, addrDown
	case drained: // an operator's drain: keep the sessions, take no new ones
		in.State, in.Reason = registry.StateDraining, registry.OperatorDrainReason(mark.Name)
	case full:
		in.State, in.Reason = registry.StateFull, reason
	default:
		in.State, in.Reason = registry.StateAvailable, ""
	}
	in.Reason = cleanReason(in.Reason)
	r.current = in
	r.m.observe(in)
}

// instance builds the instance value from the last sample; draining when shutting down.
func (r *runner) instance() registry.Instance {
	in := registry.Instance{
		ID: r.cfg.ID, Address: r.cfg.Address, Port: r.cfg.Port, Zone: r.cfg.Zone, Labels: r.cfg.Labels,
		Thresholds: r.cfg.Thresholds, Load: r.lastLoad, State: r.current.State, Reason: r.current.Reason,
		UpdatedAt: time.Now().UTC().Truncate(time.Millisecond),
		Agent: registry.AgentInfo{Version: Version, StartedAt: r.startedAt.Truncate(time.Second), Metrics: r.metricsAddr,
			Host: r.hostname, PID: os.Getpid()},
		ClaimSince: r.claimSince,
	}
	if r.draining {
		in.State, in.Reason = registry.StateDraining, drainReason
	}
	return in
}

// addressResult records the check of address:port and returns the reason to publish the
// instance unhealthy, or "". Only a refused connection or a missing route counts: nothing
// can connect there, Envoy included. A timeout is logged, the state is left alone.
func (r *runner) addressResult(err error) string {
	if err == nil {
		r.addrAnswered = true
		if r.failing["address"] {
			r.log.Info().Str("address", r.cfg.Address).Int("port", r.cfg.Port).Msg("the instance's address answers now")
		}
		r.failing["address"] = false
		return ""
	}
	r.m.probeFails.WithLabelValues("address").Inc()
	reason := addressReason(r.cfg.Address, r.cfg.Port, err)
	if !r.failing["address"] {
		r.log.Error().Err(err).Str("address", r.cfg.Address).Int("port", r.cfg.Port).
			Msg("the instance's address does not answer: Envoy could not reach the app there; it stays unhealthy until it answers (is the app listening only on 127.0.0.1? pass --address)")
	}
	r.failing["address"] = true
	if !definiteDialFailure(err) {
		return ""
	}
	return reason
}

// probeResult counts a failed probe and logs only its transitions; it reports success.
func (r *runner) probeResult(name string, err error) bool {
	if err != nil {
		r.m.probeFails.WithLabelValues(name).Inc()
		if !r.failing[name] {
			r.log.Warn().Err(err).Str("probe", name).Msg("probe failing")
		}
		r.failing[name] = true
		return false
	}
	if r.failing[name] {
		r.log.Info().Str("probe", name).Msg("probe recovered")
	}
	r.failing[name] = false
	return true
}

func joinReasons(a, b string) string {
	if a == "" {
		return b
	}
	return a + "; " + b
}

// hostname is the host's name, "" when it cannot be read (the key is then never adopted).
func hostname() string { return usableHostname(os.Hostname()) }

// usableHostname is os.Hostname's answer as published: "" when it failed or is longer than
// the registry accepts.
func usableHostname(h string, err error) string {
	if err != nil || len(h) > 255 {
		return ""
	}
	return h
}

func round1(v float64) float64 { return float64(int64(v*10+0.5)) / 10 }
