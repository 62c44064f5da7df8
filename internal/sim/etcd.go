package sim

import (
	"context"
	"errors"
	"fmt"
	"path/filepath"
	"strings"
	"sync"
	"time"

	clientv3 "go.etcd.io/etcd/client/v3"
	"go.etcd.io/etcd/server/v3/embed"

	"github.com/tetherlb/tether/internal/etcdembed"
)

// etcdCluster is the run's etcd: one member, or three so that a member and the leader can be
// lost. Members keep their data directory and ports across a stop.
type etcdCluster struct {
	members []*etcdMember
}

type etcdMember struct {
	name, dir, clientURL, peerURL, initial string

	mu  sync.Mutex
	srv *etcdembed.Server
}

// Cluster timings: short, yet long enough that a loaded 2-core machine does not keep
// electing leaders (internal/etcdtest uses the same).
const (
	etcdTickMs     = 20
	etcdElectionMs = 300
)

func startEtcd(ctx context.Context, dir string, n int) (*etcdCluster, error) {
	c := &etcdCluster{}
	var initial []string
	for i := range n {
		cp, err1 := freePort()
		pp, err2 := freePort()
		if err := errors.Join(err1, err2); err != nil {
			return nil, err
		}
		m := &etcdMember{name: fmt.Sprintf("m%d", i), dir: filepath.Join(dir, fmt.Sprintf("etcd-%d", i)),
			clientURL: fmt.Sprintf("http://127.0.0.1:%d", cp), peerURL: fmt.Sprintf("http://127.0.0.1:%d", pp)}
		initial = append(initial, m.name+"="+m.peerURL)
		c.members = append(c.members, m)
	}
	errs := make(chan error, n)
	for _, m := range c.members {
		m.initial = strings.Join(initial, ",")
		go func() { errs <- m.start(ctx) }()
	}
	var first error
	for range n {
		if err := <-errs; err != nil && first == nil {
			first = err
		}
	}
	if first != nil {
		c.stop()
		return nil, first
	}
	return c, nil
}

// start starts the member (a quorum must start for any to be ready).
func (m *etcdMember) start(ctx context.Context) error {
	s, err := etcdembed.Start(ctx, etcdembed.Config{Dir: m.dir, ClientURL: m.clientURL, PeerURL: m.peerURL,
		TickMs: etcdTickMs, ElectionMs: etcdElectionMs, Configure: func(c *embed.Config) {
			c.Name, c.InitialCluster, c.InitialClusterToken = m.name, m.initial, "tether-sim"
		}})
	if err != nil {
		return fmt.Errorf("etcd member %s: %w", m.name, err)
	}
	m.mu.Lock()
	m.srv = s
	m.mu.Unlock()
	return nil
}

func (m *etcdMember) close() {
	m.mu.Lock()
	s := m.srv
	m.srv = nil
	m.mu.Unlock()
	if s != nil {
		s.Close()
	}
}

func (c *etcdCluster) stop() {
	for _, m := range c.members {
		m.close()
	}
}

func (c *etcdCluster) endpoints() []string {
	out := make([]string, 0, len(c.members))
	for _, m := range c.members {
		out = append(out, m.clientURL)
	}
	return out
}

// leader returns the index of the member that leads, or -1.
func (c *etcdCluster) leader(ctx context.Context, cli *clientv3.Client) int {
	for i, m := range c.members {
		sctx, cancel := context.WithTimeout(ctx, time.Second)
		st, err := cli.Status(sctx, m.clientURL)
		cancel()
		if err == nil && st.Leader == st.Header.MemberId {
			return i
		}
	}
	return -1
}
