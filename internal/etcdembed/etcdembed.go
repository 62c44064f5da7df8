// Package etcdembed runs a single-node etcd inside a Tether process: the control plane's
// default store, and the store of tests and the bench. It lives apart from registry so that
// the agent, which imports registry, links none of etcd's server (raft, bbolt, otel).
package etcdembed

import (
	"cmp"
	"context"
	"fmt"
	"net/url"
	"os"
	"sync"
	"time"

	"go.etcd.io/etcd/server/v3/embed"
	"go.uber.org/zap"
	"go.uber.org/zap/zapcore"
)

// Config configures the embedded single-node etcd.
type Config struct {
	// Dir holds etcd's data; it survives restarts.
	Dir string
	// ClientURL is where clients (agents, etcdctl) connect, e.g. http://127.0.0.1:2379.
	ClientURL string
	// PeerURL is the (unused by a single node, but required) peer URL, e.g. http://127.0.0.1:2380.
	PeerURL string
	// TickMs and ElectionMs are etcd's heartbeat and election times; 0 keeps etcd's defaults.
	TickMs, ElectionMs uint
	// LogLevel of etcd's own logger (debug, info, warn, error); empty discards etcd's logs,
	// whose shutdown chatter is logged at error level, except the entry with which etcd gives
	// up (see QuietLogger).
	LogLevel string
	// StartTimeout bounds the wait for the server to be ready; 0 means 60 s.
	StartTimeout time.Duration
	// Configure, when set, may adjust etcd's configuration further (TLS, auth) before start.
	Configure func(*embed.Config)
}

// Server is a running embedded etcd server.
type Server struct {
	etcd      *embed.Etcd
	lock      *os.File // the data directory's lock, released by Close
	closeOnce sync.Once
	Endpoints []string
}

// Start starts a single-node etcd and waits until it serves clients.
func Start(ctx context.Context, c Config) (*Server, error) {
	cu, err := url.Parse(c.ClientURL)
	if err != nil || cu.Host == "" {
		return nil, fmt.Errorf("embedded etcd: client URL %q is not a URL such as http://127.0.0.1:2379", c.ClientURL)
	}
	pu, err := url.Parse(c.PeerURL)
	if err != nil || pu.Host == "" {
		return nil, fmt.Errorf("embedded etcd: peer URL %q is not a URL such as http://127.0.0.1:2380", c.PeerURL)
	}
	cfg := embed.NewConfig()
	cfg.Name = "tether"
	cfg.Dir = c.Dir
	cfg.ListenClientUrls = []url.URL{*cu}
	cfg.AdvertiseClientUrls = []url.URL{*cu}
	cfg.ListenPeerUrls = []url.URL{*pu}
	cfg.AdvertisePeerUrls = []url.URL{*pu}
	cfg.InitialCluster = cfg.Name + "=" + pu.String()
	if c.LogLevel != "" {
		cfg.LogLevel = c.LogLevel
	} else {
		cfg.ZapLoggerBuilder = embed.NewZapLoggerBuilder(QuietLogger(zapcore.Lock(os.Stderr)))
	}
	cfg.TickMs, cfg.ElectionMs = cmp.Or(c.TickMs, cfg.TickMs), cmp.Or(c.ElectionMs, cfg.ElectionMs)
	// Keep one hour of history so that watchers can resume; older revisions are compacted.
	cfg.AutoCompactionMode = "periodic"
	cfg.AutoCompactionRetention = "1h"
	if c.Configure != nil {
		c.Configure(cfg)
	}
	lock, err := lockDir(c.Dir)
	if err != nil {
		return nil, err
	}
	s, err := start(ctx, c, cfg)
	if err != nil {
		lock.Close()
		return nil, err
	}
	s.lock = lock
	return s, nil
}

// start checks the database and starts etcd; the data directory is locked.
func start(ctx context.Context, c Config, cfg *embed.Config) (*Server, error) {
	if err := checkDatabase(ctx, c.Dir); err != nil {
		return nil, err
	}
	e, err := embed.StartEtcd(cfg)
	if err != nil {
		return nil, fmt.Errorf("embedded etcd: start with data dir %q: %w", c.Dir, err)
	}
	timeout := c.StartTimeout
	if timeout <= 0 {
		timeout = 60 * time.Second
	}
	t := time.NewTimer(timeout)
	defer t.Stop()
	select {
	case <-e.Server.ReadyNotify():
	case err := <-e.Err():
		e.Close()
		return nil, fmt.Errorf("embedded etcd: %w", err)
	case <-t.C:
		e.Close()
		return nil, fmt.Errorf("embedded etcd: not ready after %s", timeout)
	case <-ctx.Done():
		e.Close()
		return nil, fmt.Errorf("embedded etcd: %w", ctx.Err())
	}
	eps := make([]string, 0, len(cfg.AdvertiseClientUrls))
	for _, u := range cfg.AdvertiseClientUrls {
		eps = append(eps, u.String())
	}
	return &Server{etcd: e, Endpoints: eps}, nil
}

// Err reports a fatal server error.
func (e *Server) Err() <-chan error { return e.etcd.Err() }

// Close stops the server, waits for it and releases the data directory; later calls do nothing.
func (e *Server) Close() {
	e.closeOnce.Do(func() {
		e.etcd.Close()
		e.lock.Close()
	})
}

// QuietLogger is etcd's logger when its logs are not wanted: it writes only entries at DPanic
// level and above to w. etcd gives up with Logger.Panic or Logger.Fatal (a data file it cannot
// open, for one), and the panic alone carries only the message; the entry written first
// carries etcd's error and the path, with fields for the caller's context.
func QuietLogger(w zapcore.WriteSyncer, fields ...zap.Field) *zap.Logger {
	enc := zapcore.NewConsoleEncoder(zap.NewDevelopmentEncoderConfig())
	return zap.New(zapcore.NewCore(enc, w, zapcore.DPanicLevel)).With(fields...)
}
