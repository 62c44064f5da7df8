package registry

import (
	"maps"
	"reflect"

	"github.com/rs/zerolog"
	"go.etcd.io/etcd/api/v3/mvccpb"
	clientv3 "go.etcd.io/etcd/client/v3"
)

// BuildState builds the State of the key-values of one listing of prefix at revision rev.
// Each rejected key (outside the schema, bad JSON, failed validation) is left out, recorded
// in State.Rejected and passed to reject, which may be nil. Service.Revision is the highest
// ModRevision among the service's keys.
func BuildState(prefix string, rev int64, kvs []*mvccpb.KeyValue, reject func(key string, err error)) *State {
	b := newStateBuilder(prefix, nil, reject, zerolog.Nop())
	for _, kv := range kvs {
		b.put(string(kv.Key), kv.Value, kv.ModRevision)
	}
	b.st.Revision = rev
	return b.st
}

// rebuildState is BuildState for a re-list that replaces prev (which may be nil): a key
// rejected in the listing keeps its value from prev, as it would have under the watch; a
// service with the same content as in prev is prev's *Service; a service whose content
// changed gets Revision rev, since the listing cannot tell when a deletion happened.
func rebuildState(prefix string, rev int64, kvs []*mvccpb.KeyValue, prev *State, reject func(key string, err error), log zerolog.Logger) *State {
	b := newStateBuilder(prefix, nil, reject, log)
	b.fallback = prev
	for _, kv := range kvs {
		b.put(string(kv.Key), kv.Value, kv.ModRevision)
	}
	b.st.Revision = rev
	if prev == nil {
		return b.st
	}
	for key := range prev.Rejected {
		if _, still := b.st.Rejected[key]; !still {
			log.Info().Str("key", key).Msg("registry key no longer rejected")
		}
	}
	for name, s := range b.st.Services {
		old := prev.Services[name]
		if old != nil && sameContent(old, s) {
			b.st.Services[name] = old
		} else {
			s.Revision = rev
		}
	}
	return b.st
}

// applyEvents returns the successor of base after the events of one watch response, and
// whether anything changed; unchanged, it returns base itself. The successor shares every
// unchanged *Service with base; base is not modified.
func applyEvents(prefix string, base *State, evs []*clientv3.Event, reject func(key string, err error), log zerolog.Logger) (*State, bool) {
	b := newStateBuilder(prefix, base, reject, log)
	for _, ev := range evs {
		key, rev := string(ev.Kv.Key), ev.Kv.ModRevision
		switch ev.Type {
		case clientv3.EventTypePut:
			b.put(key, ev.Kv.Value, rev)
		case clientv3.EventTypeDelete:
			b.del(key, rev)
		}
		b.st.Revision = rev
	}
	if !b.changed {
		return base, false
	}
	return b.st, true
}

// stateBuilder edits a copy-on-write successor of a State: the Services and Rejected maps
// are copied, a *Service is cloned the first time it changes.
type stateBuilder struct {
	prefix   string
	st       *State
	owned    map[string]bool // services cloned by this builder, safe to modify
	fallback *State          // re-list only: where a rejected key's last good value comes from
	changed  bool
	reject   func(key string, err error)
	log      zerolog.Logger
}

func newStateBuilder(prefix string, base *State, reject func(string, error), log zerolog.Logger) *stateBuilder {
	st := &State{Services: map[string]*Service{}, Rejected: map[string]string{}}
	if base != nil {
		st.Revision = base.Revision
		st.Services = maps.Clone(base.Services)
		st.Rejected = maps.Clone(base.Rejected)
	}
	return &stateBuilder{prefix: prefix, st: st, owned: map[string]bool{}, reject: reject, log: log}
}

// put applies the value of key at revision rev.
func (b *stateBuilder) put(key string, value []byte, rev int64) {
	kind, svc, id, err := ParseKey(b.prefix, key)
	switch kind {
	case KeyService:
		var cfg ServiceConfig
		if cfg, err = DecodeServiceConfig(svc, value); err == nil {
			b.clearRejected(key)
			if cur := b.st.Services[svc]; cur != nil && cur.Configured && reflect.DeepEqual(cur.Config, cfg) {
				return
			}
			s := b.mutable(svc, rev)
			s.Config, s.Configured = cfg, true
			return
		}
	case KeyInstance:
		var inst Instance
		if inst, err = DecodeInstance(svc, id, value); err == nil {
			b.clearRejected(key)
			if cur := b.st.Services[svc]; cur != nil {
				if old, ok := cur.Instances[id]; ok && reflect.DeepEqual(old, inst) {
					return
				}
			}
			b.mutable(svc, rev).Instances[id] = inst
			return
		}
	}
	b.rejectKey(key, kind, svc, id, err, rev)
}

// del applies the deletion of key at revision rev.
func (b *stateBuilder) del(key string, rev int64) {
	b.clearRejected(key)
	kind, svc, id, err := ParseKey(b.prefix, key)
	if err != nil {
		return
	}
	cur := b.st.Services[svc]
	if cur == nil {
		return
	}
	var s *Service
	switch kind {
	case KeyService:
		if !cur.Configured {
			return
		}
		s = b.mutable(svc, rev)
		s.Config, s.Configured = DefaultServiceConfig(svc), false
	case KeyInstance:
		if _, ok := cur.Instances[id]; !ok {
			return
		}
		s = b.mutable(svc, rev)
		delete(s.Instances, id)
	}
	if !s.Configured && len(s.Instances) == 0 {
		delete(b.st.Services, svc)
	}
}

// rejectKey records a rejected value. The key's last good value, if any, stays.
func (b *stateBuilder) rejectKey(key string, kind KeyKind, svc, id string, err error, rev int64) {
	kept := b.keepLastGood(kind, svc, id, rev)
	if b.st.Rejected[key] != err.Error() {
		b.st.Rejected[key] = err.Error()
		b.changed = true
		// Logged when the key's rejection appears or changes, not on each rewrite of the same
		// bad value (an agent rewrites its instance every few seconds), nor again on a re-list.
		if b.fallback == nil || b.fallback.Rejected[key] != err.Error() {
			ev := b.log.Warn().Str("key", key).Int64("revision", rev).Err(err)
			if kept {
				ev.Msg("registry value rejected; keeping the last valid value of this key")
			} else {
				ev.Msg("registry value rejected; leaving the key out")
			}
		}
	}
	if b.reject != nil {
		b.reject(key, err)
	}
}

// keepLastGood reports whether the key has a last good value, taking it from the fallback
// state during a re-list.
func (b *stateBuilder) keepLastGood(kind KeyKind, svc, id string, rev int64) bool {
	has := func(st *State) bool {
		if st == nil || st.Services[svc] == nil {
			return false
		}
		s := st.Services[svc]
		switch kind {
		case KeyService:
			return s.Configured
		case KeyInstance:
			_, ok := s.Instances[id]
			return ok
		}
		return false
	}
	if has(b.st) {
		return true
	}
	if !has(b.fallback) {
		return false
	}
	old, s := b.fallback.Services[svc], b.mutable(svc, rev)
	if kind == KeyService {
		s.Config, s.Configured = old.Config, true
	} else {
		s.Instances[id] = old.Instances[id]
	}
	return true
}

func (b *stateBuilder) clearRejected(key string) {
	if _, ok := b.st.Rejected[key]; ok {
		delete(b.st.Rejected, key)
		b.changed = true
		b.log.Info().Str("key", key).Msg("registry key no longer rejected")
	}
}

// mutable returns the builder's own copy of service svc, creating it with default
// configuration if absent, and raises its Revision to rev.
func (b *stateBuilder) mutable(svc string, rev int64) *Service {
	b.changed = true
	s := b.st.Services[svc]
	if !b.owned[svc] {
		if s == nil {
			s = &Service{Name: svc, Config: DefaultServiceConfig(svc), Instances: map[string]Instance{}}
		} else {
			c := *s
			c.Instances = maps.Clone(s.Instances)
			s = &c
		}
		b.st.Services[svc] = s
		b.owned[svc] = true
	}
	s.Revision = max(s.Revision, rev)
	return s
}

// sameContent reports whether two services hold the same configuration and instances.
func sameContent(a, b *Service) bool {
	return a.Configured == b.Configured && reflect.DeepEqual(a.Config, b.Config) && reflect.DeepEqual(a.Instances, b.Instances)
}
