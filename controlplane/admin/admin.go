// Package admin is the control plane's admin HTTP server: metrics, health, /debug/config, Go's
// profiler and the monitor (the web page and its /api/state and /api/events). It shows what a
// Source gives it and changes nothing.
package admin

import (
	"encoding/json"
	"fmt"
	"net"
	"net/http"
	"net/http/pprof"
	"net/netip"
	"strings"
	"time"

	"github.com/prometheus/client_golang/prometheus"
	"github.com/prometheus/client_golang/prometheus/promhttp"
	"google.golang.org/protobuf/encoding/protojson"
	"google.golang.org/protobuf/proto"

	"github.com/tetherlb/tether/controlplane/translate"
	"github.com/tetherlb/tether/controlplane/xdscache"
	"github.com/tetherlb/tether/registry"
)

// Snapshot is one configuration handed to the xDS cache, with what produced it.
type Snapshot struct {
	Resources *translate.Resources
	State     *registry.State
	Versions  map[string]string // short type -> version
	At        time.Time         // when it was published
	Translate time.Duration     // how long its translation took
}

// Source is what the admin server shows, read at each request.
type Source interface {
	// Snapshot is the configuration served; nil before the first publication. The same
	// publication is the same pointer.
	Snapshot() *Snapshot
	// Groups are the gateway groups with a connected Envoy, and the default group.
	Groups() []string
	// Streams are the connected Envoys' xDS streams.
	Streams() []xdscache.ClientInfo
	// Phases are what Envoys know of each reachable endpoint, by cluster and instance ID.
	Phases() map[string]map[string]EndpointPhase
	// Lagging are the Envoys reported as lagging, by stream.
	Lagging() []LaggingEnvoy
	// Ready is closed once the first full registry list is published.
	Ready() <-chan struct{}
	// Unconfirmed is how long etcd's revision has not been confirmed, and whether that is
	// past the bound (Options.StaleAfter).
	Unconfirmed(now time.Time) (time.Duration, bool)
}

// Options configure the admin server.
type Options struct {
	Metrics *prometheus.Registry
	// Hosts are the Host names (or IPs) answered besides loopback and Addr's IP (see hostGuard).
	Hosts []string
	Addr  net.Addr // the admin listener's address
	// StaleAfter is the control plane's --stale-after, named when /readyz fails for it.
	StaleAfter time.Duration
	// MinEnvoyVersion is the oldest Envoy that does all the configuration asks of it.
	MinEnvoyVersion string
}

// EndpointPhase is what /api/state shows of an endpoint's publication.
type EndpointPhase struct {
	FirstPhase bool
	KnownBy    int
	Envoys     int
}

// LaggingEnvoy is an Envoy reported by /debug/config as lagging.
type LaggingEnvoy struct {
	StreamID int64     `json:"streamId"`
	Variant  string    `json:"variant"`
	NodeID   string    `json:"nodeId,omitempty"`
	Group    string    `json:"group"`
	Since    time.Time `json:"since"`
	Endpoint string    `json:"endpoint"` // the endpoint (cluster/instance) whose promotion it held
}

// Handler serves /metrics, /healthz, /readyz, /debug/config, /debug/pprof/ and the monitor
// (/, /ui/, /api/state, /api/events). onShutdown registers a function the server calls when
// it shuts down (http.Server.RegisterOnShutdown): it ends the monitor's event streams.
func Handler(src Source, opts Options, onShutdown func(func())) http.Handler {
	mux := http.NewServeMux()
	mux.Handle("GET /metrics", promhttp.HandlerFor(opts.Metrics, promhttp.HandlerOpts{Registry: opts.Metrics}))
	mux.HandleFunc("GET /healthz", func(w http.ResponseWriter, _ *http.Request) {
		w.Header().Set("Content-Type", "text/plain; charset=utf-8")
		_, _ = w.Write([]byte("ok\n"))
	})
	mux.HandleFunc("GET /readyz", func(w http.ResponseWriter, _ *http.Request) {
		w.Header().Set("Content-Type", "text/plain; charset=utf-8")
		select {
		case <-src.Ready():
			if age, stale := src.Unconfirmed(time.Now()); stale {
				w.WriteHeader(http.StatusServiceUnavailable)
				_, _ = fmt.Fprintf(w, "not ready: etcd's revision not confirmed for %s (bound %s): the configuration may be stale; xDS streams were closed so that Envoys move to another replica\n",
					age.Round(time.Second), opts.StaleAfter)
				return
			}
			_, _ = w.Write([]byte("ready\n"))
		default:
			w.WriteHeader(http.StatusServiceUnavailable)
			_, _ = w.Write([]byte("not ready: the registry has not been listed from etcd and published yet\n"))
		}
	})
	mux.HandleFunc("GET /debug/config", debugConfig(src))
	// Go's profiler, for "why is it slow" on a live control plane (loopback by default, like
	// the rest of the admin; it shows code and command line, no secrets: there is no password flag).
	mux.HandleFunc("GET /debug/pprof/", pprof.Index)
	mux.HandleFunc("GET /debug/pprof/profile", pprof.Profile)
	mux.HandleFunc("GET /debug/pprof/trace", pprof.Trace)
	mon := newMonitor(src, opts.MinEnvoyVersion, onShutdown)
	mux.HandleFunc("GET /{$}", mon.index)
	mux.HandleFunc("GET /ui/", mon.asset)
	mux.HandleFunc("GET /api/state", mon.state)
	mux.HandleFunc("GET /api/events", mon.events)
	return hostGuard(opts.Hosts, opts.Addr, mux)
}

// hostGuard answers only requests whose Host header is a loopback name or IP, the admin
// listener's own IP (addr's), or one of hosts (--admin-hosts). A web page that rebinds its DNS
// name to 127.0.0.1 makes a browser on this host send that name as Host: refused with 403, it
// cannot read /debug/config, /api/state or /debug/pprof/.
func hostGuard(hosts []string, addr net.Addr, next http.Handler) http.Handler {
	allowed := map[string]bool{"localhost": true}
	for _, h := range hosts {
		allowed[normalHost(h)] = true
	}
	var own netip.Addr
	if ta, ok := addr.(*net.TCPAddr); ok {
		own, _ = netip.AddrFromSlice(ta.IP)
		own = own.Unmap()
	}
	return http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		host := r.Host
		if h, _, err := net.SplitHostPort(host); err == nil {
			host = h
		}
		host = normalHost(host)
		ok := allowed[host]
		if ip, err := netip.ParseAddr(host); err == nil {
			ip = ip.Unmap()
			ok = ok || ip.IsLoopback() || (own.IsValid() && !own.IsUnspecified() && ip == own) || allowed[ip.String()]
		}
		if !ok {
			http.Error(w, "Host not allowed: the admin server answers loopback and the names given to --admin-hosts", http.StatusForbidden)
			return
		}
		next.ServeHTTP(w, r)
	})
}

// normalHost lower-cases a host name and drops IPv6 brackets and a trailing dot.
func normalHost(h string) string {
	return strings.ToLower(strings.TrimSuffix(strings.TrimSuffix(strings.TrimPrefix(strings.TrimSpace(h), "["), "]"), "."))
}

// DebugConfig is the JSON document of /debug/config.
type DebugConfig struct {
	Revision    int64                 `json:"revision"`
	PublishedAt time.Time             `json:"publishedAt"`
	Translate   string                `json:"translateDuration"`
	Groups      []string              `json:"groups"`
	Versions    map[string]string     `json:"versions"`
	Problems    []translate.Problem   `json:"problems"`
	Rejected    map[string]string     `json:"rejected"`
	Clients     []xdscache.ClientInfo `json:"clients"`
	// Lagging are the Envoys that held a new endpoint's promotion past --publish-settle and
	// have not caught up (two-phase publication).
	Lagging   []LaggingEnvoy             `json:"lagging"`
	Resources map[string]json.RawMessage `json:"resources"`
}

// debugConfig shows the resources served to every group (all groups get the default
// gateway: the same resources). The generated configuration holds no secrets.
func debugConfig(src Source) http.HandlerFunc {
	return func(w http.ResponseWriter, _ *http.Request) {
		pub := src.Snapshot()
		if pub == nil {
			http.Error(w, "no configuration published yet", http.StatusServiceUnavailable)
			return
		}
		out := DebugConfig{
			Revision: pub.State.Revision, PublishedAt: pub.At, Translate: pub.Translate.String(),
			Groups: src.Groups(), Versions: pub.Versions, Problems: pub.Resources.Problems,
			Rejected: pub.State.Rejected, Clients: src.Streams(), Lagging: src.Lagging(),
			Resources: map[string]json.RawMessage{
				"listeners": jsonList(pub.Resources.Listeners), "routes": jsonList(pub.Resources.Routes),
				"clusters": jsonList(pub.Resources.Clusters), "endpoints": jsonList(pub.Resources.Endpoints),
			},
		}
		for i, l := range out.Lagging {
			for _, c := range out.Clients {
				if c.StreamID == l.StreamID && c.Variant == l.Variant {
					out.Lagging[i].NodeID = c.NodeID
				}
			}
		}
		if out.Problems == nil {
			out.Problems = []translate.Problem{}
		}
		w.Header().Set("Content-Type", "application/json")
		enc := json.NewEncoder(w)
		enc.SetIndent("", "  ")
		_ = enc.Encode(out)
	}
}

// jsonList is msgs as a JSON list, a message that cannot be marshalled shown as its error.
func jsonList[T proto.Message](msgs []T) json.RawMessage {
	list := make([]json.RawMessage, 0, len(msgs))
	for _, m := range msgs {
		b, err := protojson.Marshal(m)
		if err != nil {
			b, _ = json.Marshal(map[string]string{"error": err.Error()})
		}
		list = append(list, b)
	}
	b, _ := json.Marshal(list)
	return b
}
