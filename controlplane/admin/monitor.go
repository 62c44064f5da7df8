package admin

import (
	"bytes"
	"embed"
	"encoding/json"
	"fmt"
	"net/http"
	"reflect"
	"slices"
	"sync"
	"time"

	"github.com/tetherlb/tether/controlplane/translate"
	"github.com/tetherlb/tether/controlplane/xdscache"
	"github.com/tetherlb/tether/internal/overview"
)

// The monitor's page, script and style sheet, embedded so that it needs no network.
//
//go:embed ui
var uiFiles embed.FS

// Monitor defaults: a stream checks for a change every monitorInterval (so it sends at most
// 2 events a second), writes a comment after monitorHeartbeat of silence so that proxies
// keep the connection, and at most maxMonitorStreams streams are served at once.
const (
	monitorInterval   = 500 * time.Millisecond
	monitorHeartbeat  = 15 * time.Second
	maxMonitorStreams = 64
	monitorWriteLimit = 10 * time.Second
)

// contentSecurityPolicy lets the page load only its own embedded script and style sheet and
// talk only to the admin server.
const contentSecurityPolicy = "default-src 'none'; script-src 'self'; style-src 'self'; img-src 'self' data:; " +
	"connect-src 'self'; base-uri 'none'; form-action 'none'; frame-ancestors 'none'"

// MonitorState is the JSON document of /api/state, also sent by /api/events on each change:
// the registry overview of the published snapshot (revision, summary, services, rejected
// keys, inlined), with what Envoy was given for each instance and the connected Envoys.
type MonitorState struct {
	// GeneratedAt is the control plane's clock when the document was sent.
	GeneratedAt time.Time `json:"generatedAt,omitzero"`
	// Ready is false until the registry has been listed and published once.
	Ready bool `json:"ready"`
	// PublishedAt is when the current snapshot was published.
	PublishedAt time.Time `json:"publishedAt,omitzero"`
	// Versions are the snapshot's versions by resource type (Listener, RouteConfiguration,
	// Cluster, ClusterLoadAssignment).
	Versions map[string]string `json:"versions"`
	overview.Overview
	// Problems found by the translation (services or instances left out, route conflicts).
	Problems []MonitorProblem `json:"problems"`
	// Groups are the gateway groups with their connected Envoys.
	Groups []GroupStatus `json:"groups"`
	// MinEnvoyVersion is the oldest Envoy release that does all Tether asks of it; an Envoy
	// below it is marked belowMinVersion.
	MinEnvoyVersion string `json:"minEnvoyVersion"`
}

// MonitorProblem is a translation problem of one service.
type MonitorProblem struct {
	Service string `json:"service"`
	Message string `json:"message"`
}

// GroupStatus is one gateway group (Envoys sharing node.cluster) and its Envoys.
type GroupStatus struct {
	Name   string        `json:"name"`
	Envoys []EnvoyStatus `json:"envoys"`
}

// EnvoyStatus is one connected xDS stream (inlined ClientInfo) and whether it has ACKed the
// current version of every resource type.
type EnvoyStatus struct {
	xdscache.ClientInfo
	InSync bool `json:"inSync"`
	// LaggingSince is set while the Envoy is reported as lagging: it held the promotion of a
	// new endpoint (LaggingEndpoint) past --publish-settle and has not caught up.
	LaggingSince    *time.Time `json:"laggingSince,omitempty"`
	LaggingEndpoint string     `json:"laggingEndpoint,omitempty"`
}

// monitor serves the web page, /api/state and the /api/events stream of server-sent events.
type monitor struct {
	src        Source
	onShutdown func(func()) // registers a function called when the admin server shuts down
	minEnvoy   string       // Options.MinEnvoyVersion
	interval   time.Duration
	heartbeat  time.Duration
	slots      chan struct{}
	assets     http.Handler

	stopOnce sync.Once
	stop     chan struct{}

	mu      sync.Mutex
	pub     *Snapshot
	groups  []string
	clients []xdscache.ClientInfo
	phases  map[string]map[string]EndpointPhase
	lagging []LaggingEnvoy
	seq     uint64 // bumped each time the document changes
	body    []byte // the document without generatedAt
}

func newMonitor(src Source, minEnvoy string, onShutdown func(func())) *monitor {
	return &monitor{
		src: src, minEnvoy: minEnvoy, onShutdown: onShutdown, interval: monitorInterval, heartbeat: monitorHeartbeat,
		slots: make(chan struct{}, maxMonitorStreams), stop: make(chan struct{}),
		// Request paths /ui/... are the embedded files' paths.
		assets: http.FileServerFS(uiFiles),
	}
}

// current returns the document and its sequence number, rebuilding it only when the
// snapshot, the groups or the Envoys changed.
func (m *monitor) current() (uint64, []byte) {
	m.mu.Lock()
	defer m.mu.Unlock()
	pub, groups, clients := m.src.Snapshot(), m.src.Groups(), m.src.Streams()
	phases, lagging := m.src.Phases(), m.src.Lagging()
	if m.seq > 0 && pub == m.pub && slices.Equal(groups, m.groups) && reflect.DeepEqual(clients, m.clients) &&
		reflect.DeepEqual(phases, m.phases) && reflect.DeepEqual(lagging, m.lagging) {
		return m.seq, m.body
	}
	ms := buildMonitorState(pub, groups, clients)
	ms.MinEnvoyVersion = m.minEnvoy
	addPhases(&ms, phases, lagging)
	b, err := json.Marshal(ms)
	if err != nil {
		// Every field is a plain value: marshalling cannot fail; keep the last document.
		return m.seq, m.body
	}
	m.pub, m.groups, m.clients, m.phases, m.lagging, m.body = pub, groups, clients, phases, lagging, b
	m.seq++
	return m.seq, m.body
}

// stamped returns the document with generatedAt set to now, as its first field.
func stamped(body []byte, now time.Time) []byte {
	ts, _ := now.UTC().MarshalJSON()
	if len(body) < 2 {
		body = []byte("{}")
	}
	var b bytes.Buffer
	b.Grow(len(body) + len(ts) + 16)
	b.WriteString(`{"generatedAt":`)
	b.Write(ts)
	if len(body) > 2 {
		b.WriteByte(',')
	}
	b.Write(body[1:])
	return b.Bytes()
}

// buildMonitorState assembles the document of a snapshot (nil before the first publish).
func buildMonitorState(pub *Snapshot, groups []string, clients []xdscache.ClientInfo) MonitorState {
	ms := MonitorState{Versions: map[string]string{}, Problems: []MonitorProblem{}, Groups: []GroupStatus{}}
	if pub == nil {
		ms.Overview = overview.FromState(nil)
	} else {
		ms.Ready, ms.PublishedAt, ms.Versions = true, pub.At, pub.Versions
		ms.Overview = overview.FromState(pub.State)
		eps := servedEndpoints(pub.Resources)
		for i := range ms.Services {
			svc := &ms.Services[i]
			for j := range svc.Instances {
				if e, ok := eps[translate.ClusterName(svc.Name)][svc.Instances[j].ID]; ok {
					svc.Instances[j].Envoy = &e
				}
			}
		}
		for _, p := range pub.Resources.Problems {
			ms.Problems = append(ms.Problems, MonitorProblem{Service: p.Service, Message: p.Message})
		}
	}
	byGroup := map[string][]EnvoyStatus{}
	for _, c := range clients {
		inSync := ms.Ready && len(ms.Versions) > 0
		for typ, v := range ms.Versions {
			inSync = inSync && c.Acked[typ] == v
		}
		byGroup[c.Group] = append(byGroup[c.Group], EnvoyStatus{ClientInfo: c, InSync: inSync})
	}
	names := slices.Clone(groups)
	for g := range byGroup {
		if !slices.Contains(names, g) {
			names = append(names, g)
		}
	}
	slices.Sort(names)
	for _, g := range names {
		envoys := byGroup[g]
		if envoys == nil {
			envoys = []EnvoyStatus{}
		}
		ms.Groups = append(ms.Groups, GroupStatus{Name: g, Envoys: envoys})
	}
	return ms
}

// addPhases adds to the document what Envoys know of each served endpoint and which Envoys lag.
func addPhases(ms *MonitorState, phases map[string]map[string]EndpointPhase, lagging []LaggingEnvoy) {
	for i := range ms.Services {
		svc := &ms.Services[i]
		for j := range svc.Instances {
			e := svc.Instances[j].Envoy
			if e == nil {
				continue
			}
			if p, ok := phases[translate.ClusterName(svc.Name)][svc.Instances[j].ID]; ok {
				e.FirstPhase, e.KnownBy, e.Envoys = p.FirstPhase, p.KnownBy, p.Envoys
			}
		}
	}
	for _, l := range lagging {
		for gi := range ms.Groups {
			for ei := range ms.Groups[gi].Envoys {
				e := &ms.Groups[gi].Envoys[ei]
				if e.StreamID == l.StreamID && e.Variant == l.Variant {
					since := l.Since
					e.LaggingSince, e.LaggingEndpoint = &since, l.Endpoint
				}
			}
		}
	}
}

// servedEndpoints maps cluster name and endpoint hostname (the instance ID) to what Envoy
// was given.
func servedEndpoints(res *translate.Resources) map[string]map[string]overview.Endpoint {
	out := map[string]map[string]overview.Endpoint{}
	if res == nil {
		return out
	}
	for _, cla := range res.Endpoints {
		m := map[string]overview.Endpoint{}
		for _, loc := range cla.GetEndpoints() {
			for _, e := range loc.GetLbEndpoints() {
				m[e.GetEndpoint().GetHostname()] = overview.Endpoint{
					Weight: e.GetLoadBalancingWeight().GetValue(), Health: e.GetHealthStatus().String(),
				}
			}
		}
		out[cla.GetClusterName()] = m
	}
	return out
}

// index serves the monitor page.
func (m *monitor) index(w http.ResponseWriter, r *http.Request) {
	h := w.Header()
	h.Set("Content-Security-Policy", contentSecurityPolicy)
	h.Set("X-Content-Type-Options", "nosniff")
	h.Set("Cache-Control", "no-cache")
	http.ServeFileFS(w, r, uiFiles, "ui/index.html")
}

// asset serves the page's embedded script, style sheet and icon under /ui/.
func (m *monitor) asset(w http.ResponseWriter, r *http.Request) {
	w.Header().Set("X-Content-Type-Options", "nosniff")
	w.Header().Set("Cache-Control", "no-cache")
	m.assets.ServeHTTP(w, r)
}

// state serves /api/state.
func (m *monitor) state(w http.ResponseWriter, _ *http.Request) {
	_, body := m.current()
	w.Header().Set("Content-Type", "application/json")
	w.Header().Set("Cache-Control", "no-store")
	_, _ = w.Write(stamped(body, time.Now()))
}

// events serves /api/events: server-sent events named "state" carrying the /api/state
// document, one right away and one after each change, at most one per interval. A slow
// client never queues documents: each event is the latest one.
func (m *monitor) events(w http.ResponseWriter, r *http.Request) {
	select {
	case m.slots <- struct{}{}:
		defer func() { <-m.slots }()
	default:
		w.Header().Set("Retry-After", "10")
		http.Error(w, fmt.Sprintf("too many monitor streams (limit %d); try again later", cap(m.slots)), http.StatusServiceUnavailable)
		return
	}
	m.stopOnce.Do(func() { m.onShutdown(func() { close(m.stop) }) })

	rc := http.NewResponseController(w)
	h := w.Header()
	h.Set("Content-Type", "text/event-stream")
	h.Set("Cache-Control", "no-store")
	h.Set("X-Accel-Buffering", "no")
	var sent uint64
	last := time.Now()
	write := func(chunks ...[]byte) error {
		_ = rc.SetWriteDeadline(time.Now().Add(monitorWriteLimit))
		for _, c := range chunks {
			if _, err := w.Write(c); err != nil {
				return err
			}
		}
		last = time.Now()
		return rc.Flush()
	}
	send := func() error {
		seq, body := m.current()
		if seq == sent {
			if time.Since(last) >= m.heartbeat {
				return write([]byte(": keepalive\n\n"))
			}
			return nil
		}
		sent = seq
		return write([]byte("event: state\ndata: "), stamped(body, time.Now()), []byte("\n\n"))
	}
	// retry: how long the browser waits before it reconnects a broken stream.
	if err := write([]byte("retry: 3000\n\n")); err != nil {
		return
	}
	tick := time.NewTicker(m.interval)
	defer tick.Stop()
	for {
		if err := send(); err != nil {
			return
		}
		select {
		case <-r.Context().Done():
			return
		case <-m.stop:
			return
		case <-tick.C:
		}
	}
}
