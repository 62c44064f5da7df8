package controlplane

import (
	"cmp"
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io/fs"
	"os"
	"path/filepath"
	"slices"
	"strings"
	"time"

	"github.com/rs/zerolog"

	"github.com/tetherlb/tether/registry"
)

// The control plane's memory across a restart (--state-file). A restarted control plane
// knows neither which Envoys were following it nor what they hold, and etcd's history tells
// what left the registry only until it is compacted. So a control plane writes, at most once
// per memoryEvery and when it stops, what it served: the instances (after the guard and the
// vanish grace, before the drains), the endpoints every Envoy knew (promoted), and the Envoys
// that followed it. At its next start it reads the file back:
//   - an instance of the file missing from the first listing, and not in etcd's history,
//     is a departure as one read from the history is (the guard and the vanish grace hold it
//     as if they had seen it go): a lease storm while the control plane was down, followed by
//     a compaction, is held all the same;
//   - an endpoint the file names promoted was known to every Envoy: it is served as its
//     state says at once; any other (a server that joined while the control plane was down)
//     starts in its first phase, DRAINING until every Envoy knows it;
//   - the Envoys of the file are remembered as reconnecting (as those whose stream closed),
//     knowing nothing new, so that a first-phase endpoint waits for them (at most its settle
//     time), not only for the first Envoy back;
//   - the other replicas of the file are remembered as gone, knowing nothing new, unless
//     they report again: every replica may have been down when a server joined, and the
//     Envoys of one still down serve what they held (replicaLink.recall).
//
// Why not from what Envoys declare when they reconnect: a delta Envoy's
// initial_resource_versions and a SotW Envoy's version_info are content hashes naming no
// endpoint, and they speak only for the Envoys already back. Phasing every endpoint at a start
// without knowledge would serve every server DRAINING to Envoys that hold it HEALTHY, refusing
// new sessions until they all ACK; promoting on the first ACKs would not wait for the Envoys
// still in their backoff, which is the case that loses sessions. Why a local file and not
// etcd: what one replica served is its own, and a file works with the read-only etcd role of
// older installs. It holds only what the registry holds already (no secret).
//
// The file is a help, never a condition: a missing, unreadable or foreign one (another
// prefix) is logged and the start goes on as without it.

// memoryEvery bounds how often the memory file is written.
const memoryEvery = time.Second

// memoryVersion is the file format's version; another is ignored.
const memoryVersion = 1

// memory is the file's content.
type memory struct {
	Version   int              `json:"version"`
	Prefix    string           `json:"prefix"`
	WrittenAt time.Time        `json:"writtenAt"`
	Instances []memoryInstance `json:"instances"`
	Promoted  []memoryEndpoint `json:"promoted"`
	Envoys    []memoryEnvoy    `json:"envoys"`
	Replicas  []string         `json:"replicas,omitempty"` // the other replicas' report names
}

type memoryInstance struct {
	Service  string            `json:"service"`
	Created  int64             `json:"created"` // the service's claim (Service.Created)
	Instance registry.Instance `json:"instance"`
}

type memoryEndpoint struct {
	Cluster string `json:"cluster"`
	ID      string `json:"id"`
	Address string `json:"address"`
}

type memoryEnvoy struct {
	Node  string `json:"node"`
	Group string `json:"group"`
}

// readMemory reads the memory file; nil when there is none to use (logged unless absent).
func readMemory(path, prefix string, log zerolog.Logger) *memory {
	if path == "" {
		return nil
	}
	b, err := os.ReadFile(path)
	if errors.Is(err, fs.ErrNotExist) {
		return nil
	}
	var m memory
	if err == nil {
		err = json.Unmarshal(b, &m)
	}
	switch {
	case err != nil:
		log.Warn().Err(err).Str("file", path).Msg("cannot read the state file; starting without memory of what was served before")
		return nil
	case m.Version != memoryVersion || m.Prefix != prefix:
		log.Warn().Str("file", path).Int("version", m.Version).Str("prefix", m.Prefix).
			Msg("the state file is of another version or prefix; starting without memory of what was served before")
		return nil
	}
	log.Info().Str("file", path).Time("writtenAt", m.WrittenAt).Int("instances", len(m.Instances)).
		Int("promoted", len(m.Promoted)).Int("envoys", len(m.Envoys)).Msg("state file read: what was served before this start")
	return &m
}

// writeMemory writes m to path through a temporary file, so that a crash leaves the old file
// or the new one.
func writeMemory(path string, m *memory) error {
	b, err := json.Marshal(m)
	if err != nil {
		return fmt.Errorf("state file: %w", err)
	}
	dir := filepath.Dir(path)
	if err := os.MkdirAll(dir, 0o700); err != nil {
		return fmt.Errorf("state file: %w", err)
	}
	f, err := os.CreateTemp(dir, filepath.Base(path)+".*.tmp")
	if err != nil {
		return fmt.Errorf("state file: %w", err)
	}
	_, err = f.Write(b)
	if err = errors.Join(err, f.Close()); err == nil {
		err = os.Rename(f.Name(), path)
	}
	if err != nil {
		os.Remove(f.Name())
		return fmt.Errorf("state file: %w", err)
	}
	return nil
}

// recalledDepartures returns st with the instances of m that st lacks, and that st's
// departures (etcd's history) do not name, added as departures with their last value
// served. st itself is returned when there are none.
func recalledDepartures(st *registry.State, m *memory) *registry.State {
	if m == nil {
		return st
	}
	type id struct{ svc, id string }
	known := map[id]bool{}
	for _, d := range st.Departures {
		known[id{d.Service, d.Instance.ID}] = true
	}
	var add []registry.Departure
	for _, mi := range m.Instances {
		if svc := st.Services[mi.Service]; svc != nil {
			if _, ok := svc.Instances[mi.Instance.ID]; ok {
				continue
			}
		}
		if known[id{mi.Service, mi.Instance.ID}] {
			continue
		}
		add = append(add, registry.Departure{Service: mi.Service, Instance: mi.Instance, Created: mi.Created})
	}
	if len(add) == 0 {
		return st
	}
	c := *st
	c.Departures = append(slices.Clip(st.Departures), add...)
	return &c
}

// memoryOf builds the memory of what p last served and what ph knows.
func memoryOf(prefix string, kept *registry.State, ph *phaser, now time.Time) *memory {
	m := &memory{Version: memoryVersion, Prefix: prefix, WrittenAt: now.UTC()}
	if kept != nil {
		for name, svc := range kept.Services {
			for _, in := range svc.Instances {
				m.Instances = append(m.Instances, memoryInstance{Service: name, Created: svc.Created, Instance: in})
			}
		}
		slices.SortFunc(m.Instances, func(a, b memoryInstance) int {
			return cmp.Or(strings.Compare(a.Service, b.Service), strings.Compare(a.Instance.ID, b.Instance.ID))
		})
	}
	if ph != nil {
		m.Promoted, m.Envoys = ph.remembered(now)
		m.Replicas = ph.link.known(now)
	}
	return m
}

// memoryWriter writes the memory file when what it would hold changed, and logs a failure
// once until a write succeeds again (a full disk would otherwise log every second).
type memoryWriter struct {
	path    string
	log     zerolog.Logger
	last    []byte // what was last written, its time left out
	failing bool
}

// write writes m unless the file holds it already, its time aside.
func (w *memoryWriter) write(m *memory) {
	stamp := m.WrittenAt
	m.WrittenAt = time.Time{}
	b, err := json.Marshal(m)
	m.WrittenAt = stamp
	if err != nil || slices.Equal(b, w.last) {
		return
	}
	err = writeMemory(w.path, m)
	switch {
	case err != nil && !w.failing:
		w.log.Warn().Err(err).Str("file", w.path).Msg("cannot write the state file; a restart will not remember what was served")
	case err == nil && w.failing:
		w.log.Info().Str("file", w.path).Msg("state file written again")
	}
	w.failing = err != nil
	if err == nil {
		w.last = b
	}
}

// keepMemory writes the memory file when what it would hold changed, at most every
// memoryEvery, until ctx ends, and once more then.
func (cp *ControlPlane) keepMemory(ctx context.Context) {
	w := &memoryWriter{path: cp.cfg.StateFile, log: cp.log}
	write := func() {
		cur := cp.pub.snapshotNow()
		if cur == nil {
			return // nothing served yet: the file of the last run stays as it is
		}
		w.write(memoryOf(cp.cfg.Prefix, cur.kept, cp.phase, time.Now()))
	}
	t := time.NewTicker(memoryEvery)
	defer t.Stop()
	for {
		select {
		case <-ctx.Done():
			write()
			return
		case <-t.C:
			write()
		}
	}
}
