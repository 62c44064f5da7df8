//go:build peer

// Command peer measures Tether's control plane beside Traefik's etcd provider, in one run
// against one etcd: each change is one etcd transaction that writes both systems' keys (a
// backend server added to or removed from one service), and the time is taken from issuing
// that transaction until Tether's delta ADS client holds the change, and until Traefik's API
// (polled every -poll) shows it. Changes are spaced: one at a time, -gap apart. Both run as
// child processes, so that their CPU time and peak memory are their own.
//
// It is not part of the module's build or of make test (build tag peer); see run.sh and
// docs/performance.md, which say how to obtain Traefik.
package main

import (
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
	"net"
	"net/http"
	"os"
	"os/exec"
	"path/filepath"
	"slices"
	"strings"
	"sync"
	"time"

	endpointv3 "github.com/envoyproxy/go-control-plane/envoy/config/endpoint/v3"
	resourcev3 "github.com/envoyproxy/go-control-plane/pkg/resource/v3"
	"github.com/shirou/gopsutil/v4/process"
	clientv3 "go.etcd.io/etcd/client/v3"
	"google.golang.org/grpc"
	"google.golang.org/grpc/credentials/insecure"

	"github.com/tetherlb/tether/controlplane/translate"
	"github.com/tetherlb/tether/internal/bench"
	"github.com/tetherlb/tether/internal/etcdembed"
	"github.com/tetherlb/tether/internal/xdsclient"
	"github.com/tetherlb/tether/registry"
)

type config struct {
	traefik, cp, work, throttle, cpArgs string
	services, servers, changes          int
	gap, poll, timeout                  time.Duration
	defaultCert                         bool
}

func main() {
	var c config
	flag.StringVar(&c.traefik, "traefik", "", "Traefik v3 binary (required; see run.sh)")
	flag.StringVar(&c.cp, "controlplane", "", "tether-controlplane binary (default: built with the go tool)")
	flag.StringVar(&c.work, "workdir", "", "directory for etcd's data and the logs (default: a temporary one)")
	flag.StringVar(&c.throttle, "traefik-throttle", "", "Traefik's --providers.providersThrottleDuration (empty: its default, 2s)")
	flag.BoolVar(&c.defaultCert, "traefik-default-cert", false, "give Traefik a default certificate in etcd, so that it does not generate one on each reload")
	flag.StringVar(&c.cpArgs, "cp-args", "", "extra flags for the control plane, space-separated")
	flag.IntVar(&c.services, "services", 10, "services")
	flag.IntVar(&c.servers, "servers", 3, "servers (instances) per service")
	flag.IntVar(&c.changes, "changes", 200, "spaced changes")
	flag.DurationVar(&c.gap, "gap", 100*time.Millisecond, "pause between changes")
	flag.DurationVar(&c.poll, "poll", 5*time.Millisecond, "Traefik API polling interval")
	flag.DurationVar(&c.timeout, "timeout", 30*time.Second, "longest wait for one change")
	flag.Parse()
	if c.traefik == "" {
		fmt.Fprintln(os.Stderr, "peer: -traefik is required (see bench/peer/run.sh)")
		os.Exit(2)
	}
	if err := run(context.Background(), c); err != nil {
		fmt.Fprintln(os.Stderr, "peer:", err)
		os.Exit(1)
	}
}

func run(ctx context.Context, c config) error {
	dir := c.work
	if dir == "" {
		var err error
		if dir, err = os.MkdirTemp("", "tether-peer-"); err != nil {
			return err
		}
		defer os.RemoveAll(dir)
	}
	if c.cp == "" {
		var err error
		if c.cp, err = bench.BuildControlPlane(ctx, dir); err != nil {
			return err
		}
	}
	clientURL, peerURL := "http://"+freeAddr(), "http://"+freeAddr()
	etcd, err := etcdembed.Start(ctx, etcdembed.Config{Dir: filepath.Join(dir, "etcd"), ClientURL: clientURL, PeerURL: peerURL})
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

	xdsAddr, adminAddr := freeAddr(), freeAddr()
	tether, err := start(filepath.Join(dir, "tether.log"), c.cp, append([]string{"--etcd-endpoints", strings.Join(etcd.Endpoints, ","),
		"--xds-addr", xdsAddr, "--admin-addr", adminAddr, "--log-level", "warn",
		// The changes delete servers outright, a service's every few seconds: Tether's guard
		// against mass disappearances would hold them (Traefik has no such guard).
		"--hold-share", "-1"}, strings.Fields(c.cpArgs)...)...)
	if err != nil {
		return err
	}
	defer tether.stop()
	api := freeAddr()
	targs := []string{"--providers.etcd.endpoints=" + strings.TrimPrefix(clientURL, "http://"), "--providers.etcd.rootKey=traefik",
		"--api.insecure=true", "--entrypoints.traefik.address=" + api, "--entrypoints.web.address=" + freeAddr(), "--api.dashboard=false", "--log.level=ERROR"}
	if c.throttle != "" {
		targs = append(targs, "--providers.providersThrottleDuration="+c.throttle)
	}
	traefik, err := start(filepath.Join(dir, "traefik.log"), c.traefik, targs...)
	if err != nil {
		return err
	}
	defer traefik.stop()

	wctx, wcancel := context.WithTimeout(ctx, 2*time.Minute)
	defer wcancel()
	if err := waitOK(wctx, "http://"+adminAddr+"/readyz"); err != nil {
		return fmt.Errorf("tether (log %s): %w", filepath.Join(dir, "tether.log"), err)
	}
	conn, err := grpc.NewClient("passthrough:///"+xdsAddr, grpc.WithTransportCredentials(insecure.NewCredentials()))
	if err != nil {
		return err
	}
	defer conn.Close()
	obs := &tetherObserver{}
	x := xdsclient.New(xdsclient.Delta, "peer-envoy", "")
	x.OnUpdate = obs.onUpdate
	cctx, cancel := context.WithCancel(ctx)
	defer cancel()
	runErr := make(chan error, 1)
	go func() { runErr <- x.Run(cctx, conn) }()
	defer func() {
		select {
		case err := <-runErr: // ended before the harness stopped it
			fmt.Fprintln(os.Stderr, "peer: the simulated Envoy's stream ended early:", err)
		default:
			cancel()
			<-runErr
		}
	}()
	if err := x.WaitFor(wctx, func(v xdsclient.View) bool { return len(v.Resources[resourcev3.EndpointType]) == c.services }); err != nil {
		return fmt.Errorf("tether: the simulated Envoy did not get every service: %w", err)
	}
	tr := &traefikAPI{base: "http://" + api, client: &http.Client{Timeout: 2 * time.Second}}
	if err := tr.waitServices(wctx, c.services); err != nil {
		return fmt.Errorf("traefik (log %s): %w", filepath.Join(dir, "traefik.log"), err)
	}

	t0, tr0 := tether.usage(), traefik.usage()
	var latT, latR []time.Duration
	for i := range c.changes {
		time.Sleep(c.gap)
		ch, err := w.change(i % c.services)
		if err != nil {
			return err
		}
		obs.expect(ch)
		if err := w.commit(ctx, ch); err != nil {
			return err
		}
		dT, dR, err := measure(ctx, ch, obs, tr, c)
		if err != nil {
			return err
		}
		latT, latR = append(latT, dT), append(latR, dR)
	}
	t1, tr1 := tether.usage(), traefik.usage()
	fmt.Printf("%d services x %d servers, %d spaced changes %s apart; Traefik throttle %s, default certificate %v; Tether flags %q\n",
		c.services, c.servers, c.changes, c.gap, orDefault(c.throttle, "2s (default)"), c.defaultCert, c.cpArgs)
	fmt.Printf("%-8s %8s %8s %8s %10s %10s\n", "system", "p50 ms", "p99 ms", "max ms", "CPU s", "peak MB")
	for _, r := range []struct {
		name   string
		lat    []time.Duration
		u0, u1 usage
	}{{"tether", latT, t0, t1}, {"traefik", latR, tr0, tr1}} {
		p50, p99, mx := quantiles(r.lat)
		fmt.Printf("%-8s %8.1f %8.1f %8.1f %10.2f %10.0f\n", r.name, p50, p99, mx, r.u1.cpu-r.u0.cpu, float64(r.u1.peak)/(1<<20))
	}
	return nil
}

// waitOK polls url until it answers 200.
func waitOK(ctx context.Context, url string) error {
	for {
		req, err := http.NewRequestWithContext(ctx, http.MethodGet, url, nil)
		if err != nil {
			return err
		}
		if resp, err := http.DefaultClient.Do(req); err == nil {
			resp.Body.Close()
			if resp.StatusCode == http.StatusOK {
				return nil
			}
		}
		select {
		case <-ctx.Done():
			return fmt.Errorf("%s not ready: %w", url, ctx.Err())
		case <-time.After(20 * time.Millisecond):
		}
	}
}

func orDefault(s, d string) string {
	if s == "" {
		return d
	}
	return s
}

// world is the registry both systems read, and the harness's record of it.
type world struct {
	cli     *clientv3.Client
	lease   clientv3.LeaseID
	extra   map[int]string // service -> address of the server added by the last change
	next    int
	servers int // seeded servers per service
}

func svcName(i int) string { return fmt.Sprintf("svc-%04d", i) }

func (w *world) addr() string {
	w.next++
	return fmt.Sprintf("10.%d.%d.%d", (w.next>>16)&255, (w.next>>8)&255, w.next&255)
}

// seed writes both systems' configuration of every service and its servers.
func (w *world) seed(ctx context.Context, c config) error {
	w.extra, w.servers = map[int]string{}, c.servers
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

// change is one server added to or removed from one service, in both systems' keys.
type change struct {
	service string
	addr    string
	add     bool
	ops     []clientv3.Op
	issued  time.Time
}

// serverOps returns the change adding or removing the server at addr, which Traefik's keys
// list at index idx (Traefik reads a list from numbered keys).
func (w *world) serverOps(service, addr string, idx int, add bool) (*change, error) {
	id := "i-" + strings.ReplaceAll(addr, ".", "-")
	ikey := registry.InstanceKey(registry.DefaultPrefix, service, id)
	tkey := fmt.Sprintf("traefik/http/services/%s/loadBalancer/servers/%d/url", service, idx)
	ch := &change{service: service, addr: addr, add: add}
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

// change alternates, per service: add a server after the seeded ones, then remove it.
func (w *world) change(svc int) (*change, error) {
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

// tetherObserver notes when the simulated Envoy holds the change in flight.
type tetherObserver struct {
	mu   sync.Mutex
	want *change
	at   time.Time
	done chan struct{}
}

func (o *tetherObserver) expect(ch *change) {
	o.mu.Lock()
	o.want, o.at, o.done = ch, time.Time{}, make(chan struct{})
	o.mu.Unlock()
}

func (o *tetherObserver) onUpdate(u xdsclient.Update) {
	if u.TypeURL != resourcev3.EndpointType {
		return
	}
	o.mu.Lock()
	defer o.mu.Unlock()
	if o.want == nil || !o.at.IsZero() {
		return
	}
	cla, ok := u.Resources[translate.ClusterName(o.want.service)].(*endpointv3.ClusterLoadAssignment)
	if !ok {
		return
	}
	has := false
	for _, l := range cla.GetEndpoints() {
		for _, e := range l.GetLbEndpoints() {
			has = has || e.GetEndpoint().GetAddress().GetSocketAddress().GetAddress() == o.want.addr
		}
	}
	if has == o.want.add {
		o.at = u.At
		close(o.done)
	}
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
	if resp.StatusCode == http.StatusNotFound {
		return "", nil
	}
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

// measure waits for both systems to hold ch and returns each one's delay from the write.
func measure(ctx context.Context, ch *change, obs *tetherObserver, tr *traefikAPI, c config) (time.Duration, time.Duration, error) {
	ctx, cancel := context.WithTimeout(ctx, c.timeout)
	defer cancel()
	want := `"url":"http://` + ch.addr + `:8080"`
	var traefikAt time.Time
	tick := time.NewTicker(c.poll)
	defer tick.Stop()
	for traefikAt.IsZero() {
		body, err := tr.get(ctx, "/api/http/services/"+ch.service+"@etcd")
		if err == nil && strings.Contains(body, want) == ch.add {
			traefikAt = time.Now()
			break
		}
		select {
		case <-ctx.Done():
			return 0, 0, fmt.Errorf("traefik did not show the change to %s within %s", ch.service, c.timeout)
		case <-tick.C:
		}
	}
	select {
	case <-obs.done:
	case <-ctx.Done():
		return 0, 0, fmt.Errorf("tether's client did not hold the change to %s within %s", ch.service, c.timeout)
	}
	obs.mu.Lock()
	at := obs.at
	obs.mu.Unlock()
	return at.Sub(ch.issued), traefikAt.Sub(ch.issued), nil
}

func quantiles(d []time.Duration) (p50, p99, mx float64) {
	if len(d) == 0 {
		return 0, 0, 0
	}
	s := slices.Clone(d)
	slices.Sort(s)
	ms := func(x time.Duration) float64 { return float64(x.Microseconds()) / 1000 }
	at := func(q float64) time.Duration { return s[min(len(s)-1, max(0, int(q*float64(len(s))+0.5)-1))] }
	return ms(at(0.5)), ms(at(0.99)), ms(s[len(s)-1])
}

// child is a process the harness started.
type child struct {
	cmd  *exec.Cmd
	proc *process.Process
	log  *os.File
}

type usage struct {
	cpu  float64
	peak int64
}

func start(logPath, bin string, args ...string) (*child, error) {
	f, err := os.Create(logPath)
	if err != nil {
		return nil, err
	}
	cmd := exec.Command(bin, args...)
	cmd.Stdout, cmd.Stderr = f, f
	if err := cmd.Start(); err != nil {
		f.Close()
		return nil, fmt.Errorf("start %s: %w", bin, err)
	}
	p, err := process.NewProcess(int32(cmd.Process.Pid))
	if err != nil {
		cmd.Process.Kill()
		return nil, err
	}
	return &child{cmd: cmd, proc: p, log: f}, nil
}

func (c *child) usage() usage {
	var u usage
	if t, err := c.proc.Times(); err == nil {
		u.cpu = t.User + t.System
	}
	if b, err := os.ReadFile(fmt.Sprintf("/proc/%d/status", c.cmd.Process.Pid)); err == nil {
		for _, line := range strings.Split(string(b), "\n") {
			if rest, ok := strings.CutPrefix(line, "VmHWM:"); ok {
				fmt.Sscanf(strings.TrimSpace(rest), "%d", &u.peak)
				u.peak *= 1024
			}
		}
	}
	return u
}

func (c *child) stop() {
	c.cmd.Process.Signal(os.Interrupt)
	done := make(chan error, 1)
	go func() { done <- c.cmd.Wait() }()
	select {
	case <-done:
	case <-time.After(10 * time.Second):
		c.cmd.Process.Kill()
		<-done
	}
	c.log.Close()
}

func freeAddr() string {
	l, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		panic(errors.New("no free loopback port"))
	}
	defer l.Close()
	return l.Addr().String()
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
