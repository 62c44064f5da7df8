package agent

import (
	"context"
	"errors"
	"net"
	"runtime"
	"strconv"
	"strings"
	"syscall"
	"testing"
	"time"

	"github.com/prometheus/client_golang/prometheus/testutil"
	"github.com/rs/zerolog"
	"github.com/tetherlb/tether/internal/eventually"
	"github.com/tetherlb/tether/internal/syncbuf"
	"github.com/tetherlb/tether/registry"
	clientv3 "go.etcd.io/etcd/client/v3"
	"go.uber.org/zap"
)

// TestRunnerHelpers: the published metrics address, the load's rounding, the joined
// reasons, and the probes' failure counting and transitions.
func TestRunnerHelpers(t *testing.T) {
	for _, tc := range []struct {
		ip   string
		port int
		inst string
		want string
	}{
		{"10.0.0.5", 9100, "10.0.0.1", "10.0.0.5:9100"},
		{"0.0.0.0", 9100, "10.0.0.1", "10.0.0.1:9100"},
		{"::", 9100, "fd00::1", "[fd00::1]:9100"},
		{"::ffff:10.0.0.5", 1, "10.0.0.1", "10.0.0.5:1"},
		{"0.0.0.0", 9100, "::ffff:10.0.0.7", "10.0.0.7:9100"},
		{"0.0.0.0", 9100, "not an address", ""},
		{"0.0.0.0", 9100, "0.0.0.0", ""},
		{"", 9100, "10.0.0.1", "10.0.0.1:9100"},
		{"", 9100, "", ""},
	} {
		if got := advertised(&net.TCPAddr{IP: net.ParseIP(tc.ip), Port: tc.port}, tc.inst); got != tc.want {
			t.Errorf("advertised(%s:%d, %q) = %q, want %q", tc.ip, tc.port, tc.inst, got, tc.want)
		}
	}
	for v, want := range map[float64]float64{0: 0, 0.04: 0, 0.05: 0.1, 1.24: 1.2, 1.25: 1.3, 99.99: 100, 12.3: 12.3} {
		if got := round1(v); got != want {
			t.Errorf("round1(%v) = %v, want %v", v, got, want)
		}
	}
	for _, tc := range [][3]string{{"", "", ""}, {"", "b", "b"}, {"a", "b", "a; b"}} {
		if got := joinReasons(tc[0], tc[1]); got != tc[2] {
			t.Errorf("joinReasons(%q, %q) = %q, want %q", tc[0], tc[1], got, tc[2])
		}
	}
	if h := hostname(); h == "" || len(h) > 255 {
		t.Errorf("hostname %q", h)
	}
	for h, want := range map[string]string{"web1": "web1", strings.Repeat("a", 255): strings.Repeat("a", 255), strings.Repeat("a", 256): ""} {
		if got := usableHostname(h, nil); got != want {
			t.Errorf("usableHostname of %d characters: %d", len(h), len(got))
		}
	}
	if got := usableHostname("web1", errors.New("no name")); got != "" {
		t.Errorf("usableHostname after an error: %q", got)
	}

	var logs strings.Builder
	r := &runner{cfg: Config{Address: "10.0.0.1", Port: 8080}, log: zerolog.New(&logs), m: newMetrics("app", "a"), failing: map[string]bool{}}
	fails := func(probe string) float64 { return testutil.ToFloat64(r.m.probeFails.WithLabelValues(probe)) }
	lines := func(s string) int { n := strings.Count(logs.String(), s); return n }
	boom := errors.New("boom")
	if !r.probeResult("health", nil) || fails("health") != 0 || logs.Len() != 0 {
		t.Fatalf("a probe that passes: %v failures, log %q", fails("health"), logs.String())
	}
	for i := range 2 {
		if r.probeResult("health", boom) || fails("health") != float64(i+1) || lines("probe failing") != 1 {
			t.Fatalf("failure %d: %v failures, log %q", i+1, fails("health"), logs.String())
		}
	}
	for range 2 {
		if !r.probeResult("health", nil) || fails("health") != 2 || lines("probe recovered") != 1 {
			t.Fatalf("recovery: %v failures, log %q", fails("health"), logs.String())
		}
	}

	refused := &net.OpError{Op: "dial", Err: syscall.ECONNREFUSED}
	for i := range 2 {
		if reason := r.addressResult(refused); reason == "" || r.addrAnswered || fails("address") != float64(i+1) || lines("does not answer") != 1 {
			t.Fatalf("refused %d: reason %q, answered %v, %v failures, log %q", i+1, reason, r.addrAnswered, fails("address"), logs.String())
		}
	}
	if reason := r.addressResult(errors.New("i/o timeout")); reason != "" || fails("address") != 3 || lines("does not answer") != 1 {
		t.Fatalf("a timeout: reason %q, %v failures", reason, fails("address"))
	}
	for range 2 {
		if reason := r.addressResult(nil); reason != "" || !r.addrAnswered || fails("address") != 3 || lines("answers now") != 1 {
			t.Fatalf("answered: reason %q, answered %v, log %q", reason, r.addrAnswered, logs.String())
		}
	}
}

func TestOpTimeoutIsHalfTheTTLWithinBounds(t *testing.T) {
	for ttl, want := range map[time.Duration]time.Duration{
		time.Second: time.Second, 2 * time.Second: time.Second, 3 * time.Second: 1500 * time.Millisecond,
		4 * time.Second: 2 * time.Second, 10 * time.Second: 5 * time.Second, time.Minute: 5 * time.Second,
	} {
		if got := opTimeoutFor(ttl); got != want {
			t.Errorf("opTimeoutFor(%v) = %v, want %v", ttl, got, want)
		}
	}
}

// TestServeMetricsListensOnTheFirstFreeAddress: a fixed address that is busy is an error
// naming the flag; a free one is served and published.
func TestServeMetricsListensOnTheFirstFreeAddress(t *testing.T) {
	busy, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	defer busy.Close()
	r := &runner{cfg: Config{Address: "10.0.0.1", MetricsAddr: busy.Addr().String()}, log: zerolog.Nop(), m: newMetrics("app", "a")}
	if _, err := r.serveMetrics(); err == nil || !strings.HasPrefix(err.Error(), "--metrics-addr: ") || r.metricsAddr != "" {
		t.Fatalf("a busy address: %v, published %q", err, r.metricsAddr)
	}
	// A whole range busy: the error names it. On an address of its own (127.0.0.0/8 is all
	// loopback on Linux), so that no other test's agent shares these ports.
	if runtime.GOOS == "linux" {
		var held []net.Listener
		for i := range MetricsPortCount {
			l, err := net.Listen("tcp", net.JoinHostPort("127.0.0.77", strconv.Itoa(MetricsPortFirst+i)))
			if err == nil { // else busy already
				held = append(held, l)
			}
		}
		r.cfg.MetricsAddr = "127.0.0.77:auto"
		_, err := r.serveMetrics()
		for _, l := range held {
			l.Close()
		}
		if want := "--metrics-addr 127.0.0.77:auto: no free port in 127.0.0.77:18100-127.0.0.77:18199: "; err == nil || !strings.HasPrefix(err.Error(), want) {
			t.Fatalf("a busy range: %v, want %q", err, want)
		}
	}
	r.cfg.MetricsAddr = "no port"
	if _, err := r.serveMetrics(); err == nil || !strings.HasPrefix(err.Error(), "--metrics-addr: ") {
		t.Fatalf("no port: %v", err)
	}
	r.cfg.MetricsAddr = "0.0.0.0:0"
	stop, err := r.serveMetrics()
	if err != nil {
		t.Fatal(err)
	}
	defer stop()
	if !strings.HasPrefix(r.metricsAddr, "10.0.0.1:") || strings.HasSuffix(r.metricsAddr, ":0") {
		t.Fatalf("published %q, want the instance's address and the port listened on", r.metricsAddr)
	}
}

// TestRegisterFirstNamesAnUnreachableEtcd: at start, an etcd that refuses connections is
// said at once, by name, and retried until the agent is stopped.
func TestRegisterFirstNamesAnUnreachableEtcd(t *testing.T) {
	l, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	ep := l.Addr().String()
	l.Close() // nothing listens there now
	cli, err := clientv3.New(clientv3.Config{Endpoints: []string{ep}, DialTimeout: time.Second, Logger: zap.NewNop()})
	if err != nil {
		t.Fatal(err)
	}
	defer cli.Close()
	var logs syncbuf.Buffer
	r := &runner{
		cfg: Config{Etcd: clientv3.Config{Endpoints: []string{ep}}, Service: "app", ID: "app-1", Address: "127.0.0.1", Port: 1},
		key: registry.InstanceKey("/tether/", "app", "app-1"), prefix: "/tether/", log: zerolog.New(&logs), cli: cli,
		m: newMetrics("app", "app-1"), load: hostSampler{}, failing: map[string]bool{}, addrAnswered: true,
		opTimeout: 200 * time.Millisecond, lease: lease{cli: cli, ttl: 2 * time.Second, opTimeout: 200 * time.Millisecond},
	}
	ctx, cancel := context.WithCancel(context.Background())
	defer cancel()
	done := make(chan error, 1)
	go func() { done <- r.registerFirst(ctx, context.Background()) }()
	eventually.Saying(t, "the unreachable etcd named", 5*time.Second, func() (bool, string) {
		return strings.Contains(logs.String(), "cannot register: etcd is not reachable") && strings.Contains(logs.String(), ep), logs.String()
	})
	// No --etcd-dial-timeout: the request timeout bounds the check, which sees the refusal.
	if !strings.Contains(logs.String(), "refused") {
		t.Errorf("the log does not say the connection was refused:\n%s", logs.String())
	}
	cancel()
	select {
	case err := <-done:
		if !errors.Is(err, context.Canceled) {
			t.Fatalf("registerFirst: %v, want the context's end", err)
		}
	case <-time.After(5 * time.Second):
		t.Fatal("registerFirst still running 5 s after the stop")
	}
	if strings.Contains(logs.String(), "cannot register yet") {
		t.Errorf("a registration was tried against an unreachable etcd:\n%s", logs.String())
	}
	// A --etcd-dial-timeout shorter than the request timeout bounds the check.
	r.cfg.Etcd.DialTimeout = time.Nanosecond
	if err := r.reachable(context.Background()); err == nil || !strings.Contains(err.Error(), "no answer within 1ns") {
		t.Errorf("reachable with a dial timeout of 1ns: %v", err)
	}
}
