package etcdtest

import (
	"context"
	"fmt"
	"net/url"
	"strings"
	"sync"
	"testing"
	"time"

	clientv3 "go.etcd.io/etcd/client/v3"
	"go.etcd.io/etcd/server/v3/embed"
	"go.uber.org/zap"
)

// Cluster is a multi-member embedded etcd cluster on loopback owned by one test.
type Cluster struct {
	Members []*Member
}

// Member is one member of a Cluster.
type Member struct {
	Name, Dir, ClientURL, PeerURL string
	initial                       string // the initial cluster, name=peerURL,...
	logger                        *zap.Logger

	mu sync.Mutex
	e  *embed.Etcd
}

// Cluster timings: short, but long enough that a loaded test machine does not keep
// electing leaders.
const (
	clusterTickMs     = 20
	clusterElectionMs = 300
)

// StartCluster starts an n-member cluster, stopped when the test ends. A start whose ports
// were taken (between FreePort's probe and etcd binding them) is tried again on fresh ports
// and directories.
func StartCluster(t testing.TB, n int) *Cluster {
	t.Helper()
	for attempt := 1; ; attempt++ {
		c, err := startCluster(t, n)
		if err == nil {
			return c
		}
		if !addrInUse(err) || attempt == 3 {
			t.Fatalf("start etcd cluster: %v", err)
		}
	}
}

// startCluster starts the members together (none is ready before a quorum is up) and waits
// for every start to return, even after one failed: a member still starting when the test
// ends would open its data directory as the test removes it (etcd panics then, killing the
// test binary). Members that started are stopped when the test ends.
func startCluster(t testing.TB, n int) (*Cluster, error) {
	c := &Cluster{}
	var initial []string
	for i := range n {
		m := &Member{
			Name:      fmt.Sprintf("m%d", i),
			Dir:       t.TempDir(),
			ClientURL: fmt.Sprintf("http://127.0.0.1:%d", FreePort(t)),
			PeerURL:   fmt.Sprintf("http://127.0.0.1:%d", FreePort(t)),
		}
		m.logger = crashLogger(t, m.Dir)
		initial = append(initial, m.Name+"="+m.PeerURL)
		c.Members = append(c.Members, m)
	}
	for _, m := range c.Members {
		m.initial = strings.Join(initial, ",")
	}
	t.Cleanup(c.Stop)
	errs := make(chan error, n)
	for _, m := range c.Members {
		go func() { errs <- m.start() }()
	}
	var first error
	for range n {
		if err := <-errs; err != nil && first == nil {
			first = err
		}
	}
	if first != nil {
		c.Stop()
		return nil, first
	}
	return c, nil
}

func (m *Member) start() error {
	cu, err := url.Parse(m.ClientURL)
	if err != nil {
		return err
	}
	pu, err := url.Parse(m.PeerURL)
	if err != nil {
		return err
	}
	cfg := embed.NewConfig()
	cfg.Name = m.Name
	cfg.Dir = m.Dir
	cfg.ListenClientUrls, cfg.AdvertiseClientUrls = []url.URL{*cu}, []url.URL{*cu}
	cfg.ListenPeerUrls, cfg.AdvertisePeerUrls = []url.URL{*pu}, []url.URL{*pu}
	cfg.InitialCluster = m.initial
	cfg.InitialClusterToken = "tether-test"
	cfg.TickMs, cfg.ElectionMs = clusterTickMs, clusterElectionMs
	cfg.ZapLoggerBuilder = embed.NewZapLoggerBuilder(m.logger)
	e, err := embed.StartEtcd(cfg)
	if err != nil {
		return fmt.Errorf("member %s: %w", m.Name, err)
	}
	select {
	case <-e.Server.ReadyNotify():
	case err := <-e.Err():
		e.Close()
		return fmt.Errorf("member %s: %w", m.Name, err)
	case <-time.After(60 * time.Second):
		e.Close()
		return fmt.Errorf("member %s: not ready after 60s", m.Name)
	}
	m.mu.Lock()
	m.e = e
	m.mu.Unlock()
	return nil
}

// Stop stops the member; it is safe to call more than once.
func (m *Member) Stop() {
	m.mu.Lock()
	e := m.e
	m.e = nil
	m.mu.Unlock()
	if e != nil {
		e.Close()
	}
}

// StartAgain restarts a stopped member on its data and ports; the others must hold a quorum.
func (m *Member) StartAgain(t testing.TB) {
	t.Helper()
	if m.running() {
		return
	}
	if err := m.start(); err != nil {
		t.Fatalf("restart etcd member: %v", err)
	}
}

func (m *Member) running() bool {
	m.mu.Lock()
	defer m.mu.Unlock()
	return m.e != nil
}

// Stop stops every member.
func (c *Cluster) Stop() {
	var wg sync.WaitGroup
	for _, m := range c.Members {
		wg.Go(m.Stop)
	}
	wg.Wait()
}

// Endpoints returns every member's client URL.
func (c *Cluster) Endpoints() []string {
	out := make([]string, len(c.Members))
	for i, m := range c.Members {
		out[i] = m.ClientURL
	}
	return out
}

// Client returns a client of every member, closed when the test ends.
func (c *Cluster) Client(t testing.TB) *clientv3.Client {
	t.Helper()
	return newClient(t, c.Endpoints()...)
}

// Leader returns the member that leads the cluster, waiting (up to 30 s) for one that every
// running member agrees on.
func (c *Cluster) Leader(t testing.TB) *Member {
	t.Helper()
	deadline := time.Now().Add(30 * time.Second)
	for time.Now().Before(deadline) {
		var leader *Member
		agree := true
		for _, m := range c.Members {
			m.mu.Lock()
			e := m.e
			m.mu.Unlock()
			if e == nil {
				continue
			}
			lead := e.Server.Leader()
			var lm *Member
			for _, o := range c.Members {
				o.mu.Lock()
				if o.e != nil && o.e.Server.MemberID() == lead {
					lm = o
				}
				o.mu.Unlock()
			}
			if lm == nil || (leader != nil && lm != leader) {
				agree = false
				break
			}
			leader = lm
		}
		if agree && leader != nil {
			return leader
		}
		time.Sleep(20 * time.Millisecond)
	}
	t.Fatal("etcd cluster: no leader agreed on within 30s")
	return nil
}

// WaitHealthy waits (up to 30 s) until every running member answers a linearizable read.
func (c *Cluster) WaitHealthy(t testing.TB) {
	t.Helper()
	for _, m := range c.Members {
		if !m.running() {
			continue
		}
		cli, err := clientv3.New(clientv3.Config{Endpoints: []string{m.ClientURL}, DialTimeout: 2 * time.Second, Logger: zap.NewNop()})
		if err != nil {
			t.Fatalf("etcd client of %s: %v", m.Name, err)
		}
		ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
		for {
			if _, err = cli.Get(ctx, "health"); err == nil || ctx.Err() != nil {
				break
			}
			time.Sleep(20 * time.Millisecond)
		}
		cancel()
		cli.Close()
		if err != nil {
			t.Fatalf("etcd member %s not healthy: %v", m.Name, err)
		}
	}
}
