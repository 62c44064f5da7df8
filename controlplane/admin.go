package controlplane

import (
	"encoding/json"
	"net/http"
	"net/http/pprof"
	"time"

	"github.com/prometheus/client_golang/prometheus/promhttp"
	"google.golang.org/protobuf/encoding/protojson"
	"google.golang.org/protobuf/proto"

	"github.com/tetherlb/tether/controlplane/translate"
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
	return mux
}

// DebugConfig is the JSON document of /debug/config.
type DebugConfig struct {
	Revision    int64                      `json:"revision"`
	PublishedAt time.Time                  `json:"publishedAt"`
	Translate   string                     `json:"translateDuration"`
	Groups      []string                   `json:"groups"`
	Versions    map[string]string          `json:"versions"`
	Problems    []translate.Problem        `json:"problems"`
	Rejected    map[string]string          `json:"rejected"`
	Clients     []ClientInfo               `json:"clients"`
	Resources   map[string]json.RawMessage `json:"resources"`
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
