package controlplane

import (
	"encoding/json"
	"fmt"
	"net"
	"net/http"
	"net/http/pprof"
	"net/netip"
	"strings"
	"time"

	"github.com/prometheus/client_golang/prometheus/promhttp"
	"google.golang.org/protobuf/encoding/protojson"
	"google.golang.org/protobuf/proto"

	"github.com/tetherlb/tether/controlplane/translate"
	"github.com/tetherlb/tether/controlplane/xdscache"
)

// adminHandler serves /metrics, /healthz, /readyz, /debug/config, /debug/pprof/ and the
// monitor (/, /ui/, /api/state, /api/events).
func (cp *ControlPlane) adminHandler() http.Handler {
	mux := http.NewServeMux()
	mux.Handle("GET /metrics", promhttp.HandlerFor(cp.m.reg, promhttp.HandlerOpts{Registry: cp.m.reg}))
	mux.HandleFunc("GET /healthz", func(w http.ResponseWriter, _ *http.Request) {
		w.Header().Set("Content-Type", "text/plain; charset=utf-8")
		_, _ = w.Write([]byte("ok\n"))
	})
	mux.HandleFunc("GET /readyz", func(w http.ResponseWriter, _ *http.Request) {
		w.Header().Set("Content-Type", "text/plain; charset=utf-8")
		select {
		case <-cp.Ready():
			if age, stale := cp.unconfirmedFor(time.Now()); stale {
				w.WriteHeader(http.StatusServiceUnavailable)
				_, _ = fmt.Fprintf(w, "not ready: etcd's revision not confirmed for %s (bound %s): the configuration may be stale; xDS streams were closed so that Envoys move to another replica\n",
					age.Round(time.Second), cp.cfg.StaleAfter)
				return
			}
			_, _ = w.Write([]byte("ready\n"))
		default:
			w.WriteHeader(http.StatusServiceUnavailable)
			_, _ = w.Write([]byte("not ready: the registry has not been listed from etcd and published yet\n"))
		}
	})
	mux.HandleFunc("GET /debug/config", cp.debugConfig)
	// Go's profiler, for "why is it slow" on a live control plane (loopback by default, like
	// the rest of the admin; it shows code and command line, no secrets: there is no password flag).
	mux.HandleFunc("GET /debug/pprof/", pprof.Index)
	mux.HandleFunc("GET /debug/pprof/profile", pprof.Profile)
	mux.HandleFunc("GET /debug/pprof/trace", pprof.Trace)
	mon := cp.newMonitor()
	mux.HandleFunc("GET /{$}", mon.index)
	mux.HandleFunc("GET /ui/", mon.asset)
	mux.HandleFunc("GET /api/state", mon.state)
	mux.HandleFunc("GET /api/events", mon.events)
	return cp.hostGuard(mux)
}

// hostGuard answers only requests whose Host header is a loopback name or IP, the admin
// listener's own IP, or one of cfg.AdminHosts. A web page that rebinds its DNS name to
// 127.0.0.1 makes a browser on this host send that name as Host: refused with 403, it cannot
// read /debug/config, /api/state or /debug/pprof/.
func (cp *ControlPlane) hostGuard(next http.Handler) http.Handler {
	allowed := map[string]bool{"localhost": true}
	for _, h := range cp.cfg.AdminHosts {
		allowed[normalHost(h)] = true
	}
	var own netip.Addr
	if cp.adminLn != nil {
		if ta, ok := cp.adminLn.Addr().(*net.TCPAddr); ok {
			own, _ = netip.AddrFromSlice(ta.IP)
			own = own.Unmap()
		}
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
func (cp *ControlPlane) debugConfig(w http.ResponseWriter, _ *http.Request) {
	pub := cp.pub.snapshotNow()
	if pub == nil {
		http.Error(w, "no configuration published yet", http.StatusServiceUnavailable)
		return
	}
	out := DebugConfig{
		Revision: pub.state.Revision, PublishedAt: pub.at, Translate: pub.translate.String(),
		Groups: cp.pub.groupList(), Versions: pub.versions, Problems: pub.res.Problems,
		Rejected: pub.state.Rejected, Clients: cp.Clients(), Resources: map[string]json.RawMessage{},
		Lagging: cp.phase.laggingEnvoys(),
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
	add := func(name string, msgs []proto.Message) {
		list := make([]json.RawMessage, 0, len(msgs))
		for _, m := range msgs {
			b, err := protojson.Marshal(m)
			if err != nil {
				b, _ = json.Marshal(map[string]string{"error": err.Error()})
			}
			list = append(list, b)
		}
		b, _ := json.Marshal(list)
		out.Resources[name] = b
	}
	add("listeners", toMessages(pub.res.Listeners))
	add("routes", toMessages(pub.res.Routes))
	add("clusters", toMessages(pub.res.Clusters))
	add("endpoints", toMessages(pub.res.Endpoints))
	w.Header().Set("Content-Type", "application/json")
	enc := json.NewEncoder(w)
	enc.SetIndent("", "  ")
	_ = enc.Encode(out)
}

func toMessages[T proto.Message](in []T) []proto.Message {
	out := make([]proto.Message, len(in))
	for i, m := range in {
		out[i] = m
	}
	return out
}
