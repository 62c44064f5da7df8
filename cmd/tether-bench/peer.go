//go:build peer

// tether-bench peer measures Tether's control plane beside Traefik's etcd provider, in one
// run against one etcd: each change is one etcd transaction that writes both systems' keys (a
// backend server added to or removed from one service). An add is done when the server takes
// new users: HEALTHY at Tether's delta ADS client (after two-phase publication), listed by
// Traefik's API. A removal is done when the server is gone from both. Changes come in pairs
// per service (a server added, then removed by the next change), one at a time, -gap apart,
// so that any number of changes holds as many removals as adds. Both systems run as child
// processes, so that their CPU time and peak memory are their own.
//
// It is built only with the build tag peer (go build -tags peer ./cmd/tether-bench); see
// bench/peer/run.sh and docs/performance.md, which say how to obtain Traefik.
package main

import (
	"cmp"
	"context"
	"crypto/ecdsa"
	"crypto/elliptic"
	"crypto/rand"
	"crypto/x509"
	"crypto/x509/pkix"
	"encoding/json"
	"encoding/pem"
	"errors"
	"flag"
	"fmt"
	"io"
	"math/big"
	"net/http"
	"os"
	"path/filepath"
	"strings"
	"sync"
	"text/tabwriter"
	"time"

	corev3 "github.com/envoyproxy/go-control-plane/envoy/config/core/v3"
	endpointv3 "github.com/envoyproxy/go-control-plane/envoy/config/endpoint/v3"
	resourcev3 "github.com/envoyproxy/go-control-plane/pkg/resource/v3"
	clientv3 "go.etcd.io/etcd/client/v3"
	"google.golang.org/grpc"
	"google.golang.org/grpc/credentials/insecure"

	"github.com/tetherlb/tether/controlplane/translate"
	"github.com/tetherlb/tether/internal/bench"
	"github.com/tetherlb/tether/internal/etcdembed"
	"github.com/tetherlb/tether/internal/xdsclient"
	"github.com/tetherlb/tether/registry"
)

type peerConfig struct {
	traefik, cp, work, throttle, cpArgs string
	services, servers, changes, envoys  int
	gap, poll, timeout                  time.Duration
	defaultCert, tetherDefaults         bool
}

// noGuard are the control plane's flags that let a server deleted outright leave at once:
// the changes delete servers as Traefik's users would, a service's every few seconds, which
// the mass-disappearance guard holds for 30 s once more than half of a service's servers left
// within 10 s, and the vanish grace keeps DRAINING for 5 s (a Tether agent deregisters with
// its leaving mark, which neither holds). -tether-defaults runs without them.
var noGuard = []string{"--hold-share", "-1", "--vanish-grace", "-1s"}

func peer(args []string, stdout io.Writer, stderr *os.File) int {
	fs := flag.NewFlagSet("tether-bench peer", flag.ContinueOnError)
	fs.SetOutput(stderr)
	var c peerConfig
	fs.StringVar(&c.traefik, "traefik", "", "Traefik v3 binary (required; see bench/peer/run.sh)")
	fs.StringVar(&c.cp, "controlplane", "", "tether-controlplane binary (default: built with the go tool)")
	fs.StringVar(&c.work, "workdir", "", "directory for etcd's data and the logs (default: a temporary one)")
	fs.StringVar(&c.throttle, "traefik-throttle", "", "Traefik's --providers.providersThrottleDuration (empty: its default, 2s)")
	fs.BoolVar(&c.defaultCert, "traefik-default-cert", false, "give Traefik a default certificate in etcd, so that it does not generate one on each reload")
	fs.BoolVar(&c.tetherDefaults, "tether-defaults", false, "run Tether with its defaults: removals are then held by its mass-disappearance guard and vanish grace (reported apart)")
	fs.StringVar(&c.cpArgs, "cp-args", "", "extra flags for the control plane, space-separated")
	fs.IntVar(&c.services, "services", 10, "services")
	fs.IntVar(&c.servers, "servers", 3, "servers (instances) per service")
	fs.IntVar(&c.changes, "changes", 100, "spaced changes, half adds and half removals")
	fs.IntVar(&c.envoys, "envoys", 1, "simulated Envoys (delta clients) of Tether's gateway group: a change is done when every one holds it. With one, a new server skips its first phase (the single-Envoy rule of two-phase publication)")
	fs.DurationVar(&c.gap, "gap", 100*time.Millisecond, "pause between changes")
	fs.DurationVar(&c.poll, "poll", 2*time.Millisecond, "Traefik API polling interval")
	fs.DurationVar(&c.timeout, "timeout", 30*time.Second, "longest wait for one change")
	if err := fs.Parse(args); err != nil {
		if errors.Is(err, flag.ErrHelp) {
			return 0
		}
		return 2
	}
	if c.traefik == "" {
		fmt.Fprintln(stderr, "tether-bench peer: -traefik is required (see bench/peer/run.sh)")
		return 2
	}
	if c.envoys < 1 || c.envoys > 100 {
		fmt.Fprintln(stderr, "tether-bench peer: -envoys must be 1 to 100")
		return 2
	}
	if err := runPeer(context.Background(), c, stdout); err != nil {
		fmt.Fprintln(stderr, "tether-bench peer:", err)
		return 1
	}
	return 0
}

func runPeer(ctx context.Context, c peerConfig, stdout io.Writer) (err error) {
	dir := c.work
	if dir == "" {
		if dir, err = os.MkdirTemp("", "tether-peer-"); err != nil {
			return err
		}
		defer os.RemoveAll(dir)
	}
	if c.cp == "" {
		if c.cp, err = bench.BuildControlPlane(ctx, dir); err != nil {
			return err
		}
	}
	clientAddr, peerAddr, err := twoAddrs()
	if err != nil {
		return err
	}
	etcd, err := etcdembed.Start(ctx, etcdembed.Config{Dir: filepath.Join(dir, "etcd"), ClientURL: "http://" + clientAddr, PeerURL: "http://" + peerAddr})
	if err != nil {
		return err
	}
	defer etcd.Close()
	cli, err := clientv3.New(clientv3.Config{Endpoints: etcd.Endpoints, DialTimeout: 5 * time.Second})
	if err != nil {
		return err
	}
	defer cli.Close()
	lease, err := cli.Grant(ctx, 3600)
	if err != nil {
		return err
	}
	w := &world{cli: cli, lease: lease.ID}
	if err := w.seed(ctx, c); err != nil {
		return err
	}

	cpArgs := strings.Fields(c.cpArgs)
	if !c.tetherDefaults {
		cpArgs = append(append([]string{}, noGuard...), cpArgs...)
	}
	tether, err := bench.StartControlPlane(ctx, c.cp, etcd.Endpoints, filepath.Join(dir, "tether.log"), cpArgs)
	if err != nil {
		return err
	}
	defer func() { err = errors.Join(err, tether.Stop()) }()
	api, web, err := twoAddrs()
	if err != nil {
		return err
	}
	targs := []string{"--providers.etcd.endpoints=" + clientAddr, "--providers.etcd.rootKey=traefik",
		"--api.insecure=true", "--entrypoints.traefik.address=" + api, "--entrypoints.web.address=" + web, "--api.dashboard=false", "--log.level=ERROR"}
	if c.throttle != "" {
		targs = append(targs, "--providers.providersThrottleDuration="+c.throttle)
	}
	traefik, err := bench.StartChild(filepath.Join(dir, "traefik.log"), c.traefik, targs...)
	if err != nil {
		return err
	}
	defer func() { err = errors.Join(err, traefik.Stop()) }()

	wctx, wcancel := context.WithTimeout(ctx, 2*time.Minute)
	defer wcancel()
	conn, err := grpc.NewClient("passthrough:///"+tether.XDSAddr, grpc.WithTransportCredentials(insecure.NewCredentials()))
	if err != nil {
		return err
	}
	defer conn.Close()
	obs := &tetherObserver{envoys: c.envoys}
	cctx, cancel := context.WithCancel(ctx)
	defer cancel()
	runErr := make(chan error, c.envoys)
	var clients []*xdsclient.Client
	for i := range c.envoys {
		x := xdsclient.New(xdsclient.Delta, fmt.Sprintf("peer-envoy-%d", i), "")
		x.OnUpdate = func(u xdsclient.Update) { obs.onUpdate(i, u) }
		clients = append(clients, x)
		go func() { runErr <- x.Run(cctx, conn) }()
	}
	defer func() {
		ended := 0
		for stop := false; !stop && ended < c.envoys; {
			select {
			case e := <-runErr: // ended before the harness stopped it
				err = errors.Join(err, fmt.Errorf("a simulated Envoy's stream ended early: %w", e))
				ended++
			default:
				stop = true
			}
		}
		cancel()
		for ; ended < c.envoys; ended++ {
			<-runErr
		}
	}()
	for _, x := range clients {
		if err := x.WaitFor(wctx, func(v xdsclient.View) bool { return len(v.Resources[resourcev3.EndpointType]) == c.services }); err != nil {
			return fmt.Errorf("tether: a simulated Envoy did not get every service: %w", err)
		}
	}
	tr := &traefikAPI{base: "http://" + api, client: &http.Client{Timeout: 2 * time.Second}}
	if err := tr.waitServices(wctx, c.services); err != nil {
		return fmt.Errorf("traefik (log %s): %w", filepath.Join(dir, "traefik.log"), err)
	}

	t0, err := tether.Usage(ctx)
	if err != nil {
		return err
	}
	r0, err := traefik.Usage(ctx)
	if err != nil {
		return err
	}
	var changes []*change
	var traefikAdd, traefikRemove []time.Duration
	for i := range c.changes {
		time.Sleep(c.gap)
		ch, err := w.change(i)
		if err != nil {
			return err
		}
		obs.expect(ch)
		if err := w.commit(ctx, ch); err != nil {
			return err
		}
		d, err := measure(ctx, ch, tr, c)
		if err != nil {
			return err
		}
		if ch.add {
			traefikAdd = append(traefikAdd, d)
		} else {
			traefikRemove = append(traefikRemove, d)
		}
		changes = append(changes, ch)
	}
	// Tether's removals under its defaults may be held for the guard's grace (30 s) and the
	// vanish grace (5 s): every change is waited for here, not one by one.
	if err := obs.wait(ctx, changes, c.timeout+40*time.Second); err != nil {
		return err
	}
	t1, err := tether.Usage(ctx)
	if err != nil {
		return err
	}
	r1, err := traefik.Usage(ctx)
	if err != nil {
		return err
	}
	return report(stdout, c, changes, traefikAdd, traefikRemove, [2]float64{t1.CPUSeconds - t0.CPUSeconds, r1.CPUSeconds - r0.CPUSeconds}, [2]int64{t1.PeakRSS, r1.PeakRSS})
}

func twoAddrs() (string, string, error) {
	a, err := bench.FreeAddr()
	if err != nil {
		return "", "", err
	}
	b, err := bench.FreeAddr()
	return a, b, err
}

// report prints one row per system and kind of change.
func report(out io.Writer, c peerConfig, changes []*change, traefikAdd, traefikRemove []time.Duration, cpu [2]float64, peak [2]int64) error {
	var known, usable, outOf, gone []time.Duration
	slow := 0
	for _, ch := range changes {
		if ch.add {
			known, usable = append(known, ch.seen.Sub(ch.issued)), append(usable, ch.healthy.Sub(ch.issued))
			continue
		}
		outOf, gone = append(outOf, ch.out.Sub(ch.issued)), append(gone, ch.gone.Sub(ch.issued))
		if ch.gone.Sub(ch.issued) > time.Second {
			slow++
		}
	}
	tetherFlags := "guard and vanish grace off (" + strings.Join(noGuard, " ") + ")"
	if c.tetherDefaults {
		tetherFlags = "defaults"
	}
	if c.cpArgs != "" {
		tetherFlags += " " + c.cpArgs
	}
	fmt.Fprintf(out, "%d services x %d servers, %d changes %s apart (%d adds, %d removals); Traefik throttle %s, default certificate %v, API polled every %s; Tether %s, %d Envoy(s), done when every one holds it\n",
		c.services, c.servers, len(changes), c.gap, len(usable), len(gone), cmp.Or(c.throttle, "2s (default)"), c.defaultCert, c.poll, tetherFlags, c.envoys)
	tw := tabwriter.NewWriter(out, 0, 0, 2, ' ', tabwriter.AlignRight)
	fmt.Fprintln(tw, "system\tdone when\tn\tp50 ms\tp99 ms\tmax ms\t")
	row := func(sys, what string, d []time.Duration) {
		l := bench.Summarize(d)
		fmt.Fprintf(tw, "%s\t%s\t%d\t%.1f\t%.1f\t%.1f\t\n", sys, what, l.Samples, l.P50, l.P99, l.Max)
	}
	row("tether", "add: first held", known)
	row("tether", "add: usable (HEALTHY)", usable)
	if c.tetherDefaults {
		row("tether", "removal: no new user", outOf)
	}
	row("tether", "removal: gone", gone)
	row("traefik", "add: usable (listed)", traefikAdd)
	row("traefik", "removal: gone", traefikRemove)
	if err := tw.Flush(); err != nil {
		return err
	}
	if slow > 0 {
		fmt.Fprintf(out, "tether: %d of %d removals stayed at the Envoy over 1 s (guard or vanish grace)\n", slow, len(gone))
	}
	fmt.Fprintf(out, "CPU s over the changes: tether %.2f, traefik %.2f; peak RSS MB: tether %.0f, traefik %.0f\n",
		cpu[0], cpu[1], float64(peak[0])/(1<<20), float64(peak[1])/(1<<20))
	return nil
}

// world is the registry both systems read, and the harness's record of it.
type world struct {
	cli     *clientv3.Client
	lease   clientv3.LeaseID
	extra   map[int]string // service -> address of the server added by the last change
	next    int
	servers int // seeded servers per service
	nsvc    int
}

func svcName(i int) string { return fmt.Sprintf("svc-%04d", i) }

func (w *world) addr() string {
	w.next++
	return fmt.Sprintf("10.%d.%d.%d", (w.next>>16)&255, (w.next>>8)&255, w.next&255)
}

// seed writes both systems' configuration of every service and its servers.
func (w *world) seed(ctx context.Context, c peerConfig) error {
	w.extra, w.servers, w.nsvc = map[int]string{}, c.servers, c.services
	for i := range c.services {
		name := svcName(i)
		cfg := registry.DefaultServiceConfig(name)
		cfg.Domains = []string{name + ".peer.test"}
		if err := registry.PutServiceConfig(ctx, w.cli, registry.DefaultPrefix, name, cfg); err != nil {
			return err
		}
		ops := []clientv3.Op{
			clientv3.OpPut("traefik/http/routers/"+name+"/rule", "Host(`"+name+".peer.test`)"),
			clientv3.OpPut("traefik/http/routers/"+name+"/service", name),
		}
		for j := range c.servers {
			ch, err := w.serverOps(name, w.addr(), j, true)
			if err != nil {
				return err
			}
			ops = append(ops, ch.ops...)
		}
		if _, err := w.cli.Txn(ctx).Then(ops...).Commit(); err != nil {
			return fmt.Errorf("seed %s: %w", name, err)
		}
	}
	if c.defaultCert {
		cert, key, err := selfSigned()
		if err != nil {
			return err
		}
		if _, err := w.cli.Txn(ctx).Then(
			clientv3.OpPut("traefik/tls/stores/default/defaultCertificate/certFile", cert),
			clientv3.OpPut("traefik/tls/stores/default/defaultCertificate/keyFile", key),
		).Commit(); err != nil {
			return fmt.Errorf("default certificate: %w", err)
		}
	}
	return nil
}

// change is one server added to or removed from one service, in both systems' keys, and when
// Tether's client saw it (zero: not yet).
type change struct {
	service, cluster, addr string
	add                    bool
	ops                    []clientv3.Op
	issued                 time.Time
	// seen: first held (an add: DRAINING in its first phase); healthy: held HEALTHY;
	// out: no longer HEALTHY (DRAINING or gone); gone: no longer held. Each is the latest of
	// the Envoys' (by Envoy in per), set once every Envoy is done.
	seen, healthy, out, gone time.Time
	done                     chan struct{} // closed when the change is complete (healthy, or gone) at every Envoy
	per                      []envoyTimes
	left                     int // Envoys not done yet
}

// envoyTimes is what one Envoy held of a change, and when.
type envoyTimes struct {
	seen, healthy, out, gone time.Time
	done                     bool
}

// serverOps returns the change adding or removing the server at addr, which Traefik's keys
// list at index idx (Traefik reads a list from numbered keys).
func (w *world) serverOps(service, addr string, idx int, add bool) (*change, error) {
	id := "i-" + strings.ReplaceAll(addr, ".", "-")
	ikey := registry.InstanceKey(registry.DefaultPrefix, service, id)
	tkey := fmt.Sprintf("traefik/http/services/%s/loadBalancer/servers/%d/url", service, idx)
	ch := &change{service: service, cluster: translate.ClusterName(service), addr: addr, add: add, done: make(chan struct{})}
	if !add {
		ch.ops = []clientv3.Op{clientv3.OpDelete(ikey), clientv3.OpDelete(tkey)}
		return ch, nil
	}
	now := time.Now().UTC()
	inst := registry.Instance{ID: id, Address: addr, Port: 8080, State: registry.StateAvailable,
		Thresholds: registry.Thresholds{MaxSessions: 1000}, UpdatedAt: now, Agent: registry.AgentInfo{Version: "peer", StartedAt: now}}
	b, err := json.Marshal(inst)
	if err != nil {
		return nil, err
	}
	ch.ops = []clientv3.Op{clientv3.OpPut(ikey, string(b), clientv3.WithLease(w.lease)), clientv3.OpPut(tkey, "http://"+addr+":8080")}
	return ch, nil
}

// change i is, for service i/2 (round-robin), a server added (i even) or that server removed
// (i odd).
func (w *world) change(i int) (*change, error) {
	svc := (i / 2) % w.nsvc
	name := svcName(svc)
	if a, ok := w.extra[svc]; ok {
		delete(w.extra, svc)
		return w.serverOps(name, a, w.servers, false)
	}
	a := w.addr()
	w.extra[svc] = a
	return w.serverOps(name, a, w.servers, true)
}

func (w *world) commit(ctx context.Context, ch *change) error {
	ch.issued = time.Now()
	if _, err := w.cli.Txn(ctx).Then(ch.ops...).Commit(); err != nil {
		return fmt.Errorf("change %s: %w", ch.service, err)
	}
	return nil
}

// tetherObserver notes, from the simulated Envoy's updates, when it holds each change.
type tetherObserver struct {
	envoys  int
	mu      sync.Mutex
	pending []*change
}

func (o *tetherObserver) expect(ch *change) {
	o.mu.Lock()
	ch.per, ch.left = make([]envoyTimes, o.envoys), o.envoys
	o.pending = append(o.pending, ch)
	o.mu.Unlock()
}

func (o *tetherObserver) onUpdate(envoy int, u xdsclient.Update) {
	if u.TypeURL != resourcev3.EndpointType {
		return
	}
	o.mu.Lock()
	defer o.mu.Unlock()
	kept := o.pending[:0]
	for _, ch := range o.pending {
		if cla, ok := u.Resources[ch.cluster].(*endpointv3.ClusterLoadAssignment); ok {
			ch.observe(envoy, healthOf(cla, ch.addr), u.At)
		}
		select {
		case <-ch.done:
		default:
			kept = append(kept, ch)
		}
	}
	o.pending = kept
}

// observe records what one Envoy holds of ch's server at: its health, or -1 when absent. The
// observer's lock is held.
func (ch *change) observe(envoy int, h corev3.HealthStatus, at time.Time) {
	e := &ch.per[envoy]
	if e.done {
		return
	}
	set := func(t *time.Time) {
		if t.IsZero() {
			*t = at
		}
	}
	switch {
	case ch.add && h >= 0:
		set(&e.seen)
		if h == corev3.HealthStatus_HEALTHY {
			set(&e.healthy)
			e.done = true
		}
	case !ch.add && h != corev3.HealthStatus_HEALTHY:
		set(&e.out)
		if h < 0 {
			set(&e.gone)
			e.done = true
		}
	}
	if !e.done {
		return
	}
	if ch.left--; ch.left > 0 {
		return
	}
	latest := func(t *time.Time, of func(envoyTimes) time.Time) {
		for _, p := range ch.per {
			if v := of(p); v.After(*t) {
				*t = v
			}
		}
	}
	latest(&ch.seen, func(p envoyTimes) time.Time { return p.seen })
	latest(&ch.healthy, func(p envoyTimes) time.Time { return p.healthy })
	latest(&ch.out, func(p envoyTimes) time.Time { return p.out })
	latest(&ch.gone, func(p envoyTimes) time.Time { return p.gone })
	close(ch.done)
}

func healthOf(cla *endpointv3.ClusterLoadAssignment, addr string) corev3.HealthStatus {
	for _, l := range cla.GetEndpoints() {
		for _, e := range l.GetLbEndpoints() {
			if e.GetEndpoint().GetAddress().GetSocketAddress().GetAddress() == addr {
				return e.GetHealthStatus()
			}
		}
	}
	return -1
}

// wait waits until Tether's client holds every change, for at most within.
func (o *tetherObserver) wait(ctx context.Context, changes []*change, within time.Duration) error {
	ctx, cancel := context.WithTimeout(ctx, within)
	defer cancel()
	for _, ch := range changes {
		select {
		case <-ch.done:
		case <-ctx.Done():
			o.mu.Lock()
			var by []string
			for i, p := range ch.per {
				by = append(by, fmt.Sprintf("envoy %d: held %v, done %v", i, !p.seen.IsZero(), p.done))
			}
			o.mu.Unlock()
			// An add is removed by the service's next change: one not usable at every Envoy by
			// then (a promotion stalled past -gap x services) never completes.
			return fmt.Errorf("tether's Envoys did not all hold the change to %s (add %v) within %s (%s)", ch.service, ch.add, within, strings.Join(by, "; "))
		}
	}
	return nil
}

// traefikAPI reads Traefik's view through its API.
type traefikAPI struct {
	base   string
	client *http.Client
}

func (t *traefikAPI) get(ctx context.Context, path string) (string, error) {
	req, err := http.NewRequestWithContext(ctx, http.MethodGet, t.base+path, nil)
	if err != nil {
		return "", err
	}
	resp, err := t.client.Do(req)
	if err != nil {
		return "", err
	}
	defer resp.Body.Close()
	b, err := io.ReadAll(resp.Body)
	if resp.StatusCode != http.StatusOK {
		return "", fmt.Errorf("GET %s: %s", path, resp.Status)
	}
	return string(b), err
}

func (t *traefikAPI) waitServices(ctx context.Context, n int) error {
	for {
		body, _ := t.get(ctx, "/api/http/services?per_page=10000")
		if strings.Count(body, "@etcd\"") >= n {
			return nil
		}
		select {
		case <-ctx.Done():
			return fmt.Errorf("its API does not list the %d services: %w", n, ctx.Err())
		case <-time.After(50 * time.Millisecond):
		}
	}
}

// measure polls Traefik's API until it shows ch and returns the delay from the write. The
// change took effect between the last poll that did not show it and the first that did: the
// midpoint is taken, so that polling costs Traefik half its interval on average, not all of it.
func measure(ctx context.Context, ch *change, tr *traefikAPI, c peerConfig) (time.Duration, error) {
	ctx, cancel := context.WithTimeout(ctx, c.timeout)
	defer cancel()
	want := `"url":"http://` + ch.addr + `:8080"`
	tick := time.NewTicker(c.poll)
	defer tick.Stop()
	miss := ch.issued
	for {
		asked := time.Now()
		body, err := tr.get(ctx, "/api/http/services/"+ch.service+"@etcd")
		if err == nil && strings.Contains(body, want) == ch.add {
			return asked.Sub(miss)/2 + miss.Sub(ch.issued), nil
		}
		miss = asked
		select {
		case <-ctx.Done():
			return 0, fmt.Errorf("traefik did not show the change to %s within %s", ch.service, c.timeout)
		case <-tick.C:
		}
	}
}

// selfSigned returns a PEM certificate and key for Traefik's default certificate.
func selfSigned() (string, string, error) {
	key, err := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	if err != nil {
		return "", "", err
	}
	tmpl := &x509.Certificate{SerialNumber: big.NewInt(1), Subject: pkix.Name{CommonName: "peer.test"},
		DNSNames: []string{"*.peer.test"}, NotBefore: time.Now().Add(-time.Hour), NotAfter: time.Now().Add(24 * time.Hour)}
	der, err := x509.CreateCertificate(rand.Reader, tmpl, tmpl, &key.PublicKey, key)
	if err != nil {
		return "", "", err
	}
	kb, err := x509.MarshalECPrivateKey(key)
	if err != nil {
		return "", "", err
	}
	return string(pem.EncodeToMemory(&pem.Block{Type: "CERTIFICATE", Bytes: der})),
		string(pem.EncodeToMemory(&pem.Block{Type: "EC PRIVATE KEY", Bytes: kb})), nil
}
