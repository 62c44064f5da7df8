package registry

import (
	"fmt"
	"maps"
	"net/netip"
	"reflect"
	"slices"

	"github.com/rs/zerolog"
	"go.etcd.io/etcd/api/v3/mvccpb"
	clientv3 "go.etcd.io/etcd/client/v3"
)

// BuildState builds the State of the key-values of one listing of prefix at revision rev.
// Each rejected key (outside the schema, bad JSON, failed validation) is left out, recorded
// in State.Rejected and passed to reject, which may be nil; a service whose configuration
// is rejected gets ConfigError (BuildState has no etcd history to look in). Loopback
// addresses are accepted. Service.Revision is the highest ModRevision among the service's
// keys.
func BuildState(prefix string, rev int64, kvs []*mvccpb.KeyValue, reject func(key string, err error)) *State {
	// Without lastValidConfig no history is read, and nothing can fail.
	st, _ := rebuildState(buildOptions{prefix: prefix, reject: reject, log: zerolog.Nop(), allowLoopback: true}, rev, kvs, nil)
	return st
}

// buildOptions are what a stateBuilder applies besides the keys themselves.
type buildOptions struct {
	prefix string
	reject func(key string, err error) // may be nil
	log    zerolog.Logger
	// allowLoopback accepts instances on loopback addresses (demo and tests only).
	allowLoopback bool
	// denyCIDRs are ranges no instance may be served in (--deny-backend-cidr).
	denyCIDRs []netip.Prefix
	// lastValidConfig returns the newest valid version of a rejected service configuration
	// key older than its current version mod, from the same incarnation (create revision
	// created), if etcd still holds one; nil finds none. An error means etcd could not tell.
	lastValidConfig func(key, service string, created, mod int64) (ServiceConfig, bool, error)
}

// rebuildState is BuildState for a re-list that replaces prev (which may be nil): an
// instance key rejected in the listing keeps its value from prev, as it would have under
// the watch; a service with the same content as in prev is prev's *Service; a service whose
// content changed gets Revision rev, since the listing cannot tell when a deletion happened.
func rebuildState(o buildOptions, rev int64, kvs []*mvccpb.KeyValue, prev *State) (*State, error) {
	b := newStateBuilder(o, nil)
	b.fallback = prev
	for _, kv := range kvs {
		b.put(kv)
	}
	if b.err != nil {
		return nil, b.err
	}
	b.st.Revision = rev
	if prev == nil {
		return b.st, nil
	}
	for key := range prev.Rejected {
		if _, still := b.st.Rejected[key]; !still {
			b.log.Info().Str("key", key).Msg("registry key no longer rejected")
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
	return b.st, nil
}

// applyEvents returns the successor of base after the events of one watch response, and
// whether anything changed; unchanged, it returns base itself. The successor shares every
// unchanged *Service with base; base is not modified. An error (etcd's history could not
// be read) leaves base current: the caller applies the events again later.
func applyEvents(o buildOptions, base *State, evs []*clientv3.Event) (*State, bool, error) {
	b := newStateBuilder(o, base)
	for _, ev := range evs {
		switch ev.Type {
		case clientv3.EventTypePut:
			b.put(ev.Kv)
		case clientv3.EventTypeDelete:
			b.del(string(ev.Kv.Key), ev.Kv.ModRevision)
		}
		b.st.Revision = ev.Kv.ModRevision
	}
	if b.err != nil {
		return base, false, b.err
	}
	if !b.changed {
		return base, false, nil
	}
	return b.st, true, nil
}

// stateBuilder edits a copy-on-write successor of a State: the Services and Rejected maps
// are copied, a *Service is cloned the first time it changes.
type stateBuilder struct {
	buildOptions
	st       *State
	owned    map[string]bool // services cloned by this builder, safe to modify
	fallback *State          // re-list only: where a rejected instance's last good value comes from
	changed  bool
	err      error // the first error reading etcd's history
	// drainsOwned: State.Drains is this builder's copy; drainOwned: so is that service's map.
	drainsOwned bool
	drainOwned  map[string]bool
}

func newStateBuilder(o buildOptions, base *State) *stateBuilder {
	st := &State{Services: map[string]*Service{}, Rejected: map[string]string{}}
	if base != nil {
		st.Revision = base.Revision
		st.Services = maps.Clone(base.Services)
		st.Rejected = maps.Clone(base.Rejected)
		st.Drains = base.Drains // copied on the first change (drainsOf)
	}
	return &stateBuilder{buildOptions: o, st: st, owned: map[string]bool{}}
}

// put applies the value of one key.
func (b *stateBuilder) put(kv *mvccpb.KeyValue) {
	key, value, rev := string(kv.Key), kv.Value, kv.ModRevision
	kind, svc, id, err := ParseKey(b.prefix, key)
	switch kind {
	case KeyService:
		var cfg ServiceConfig
		if cfg, err = DecodeServiceConfig(svc, value); err == nil {
			b.clearRejected(key)
			b.setConfig(svc, cfg, "", nil, kv.CreateRevision, rev)
			return
		}
		b.rejectConfig(key, svc, err, kv)
		return
	case KeyInstance:
		var inst Instance
		if inst, err = DecodeInstance(svc, id, value); err == nil && !b.allowLoopback && IsLoopback(inst.Address) {
			err = fmt.Errorf("address: %s is a loopback address, which the control plane accepts only with --allow-loopback-backends (demo and tests)", inst.Address)
		}
		if err == nil {
			if p, denied := DeniedBy(inst.Address, b.denyCIDRs); denied {
				err = fmt.Errorf("address: %s is in %s, which the control plane refuses (--deny-backend-cidr)", inst.Address, p)
			}
		}
		if err == nil {
			b.clearRejected(key)
			if cur := b.st.Services[svc]; cur != nil {
				if old, ok := cur.Instances[id]; ok && reflect.DeepEqual(old, inst) && cur.instCreated[id] == inst.Claim(kv.CreateRevision) {
					return
				}
			}
			s := b.mutable(svc, rev)
			s.Instances[id] = inst
			s.instCreated[id] = inst.Claim(kv.CreateRevision)
			s.claimed()
			return
		}
	case KeyDrain:
		if err = b.putDrain(svc, id, value); err == nil {
			b.clearRejected(key)
			return
		}
	case KeyReplica:
		return // a replica's report is not registry content: see replica.go
	case KeyUnknown:
		// err, from ParseKey, says why the key is outside the schema.
	}
	b.rejectKey(key, kind, svc, id, err, rev)
}

// setConfig gives service svc configuration cfg (with the fields defaulted listed in
// problems), or leaves it out with configErr, cfg then holding only the domains and path it
// keeps reserved.
func (b *stateBuilder) setConfig(svc string, cfg ServiceConfig, configErr string, problems []string, created, rev int64) {
	if cur := b.st.Services[svc]; cur != nil && cur.Configured && cur.ConfigError == configErr &&
		cur.configCreated == created && reflect.DeepEqual(cur.Config, cfg) && slices.Equal(cur.ConfigProblems, problems) {
		return
	}
	s := b.mutable(svc, rev)
	s.Config, s.Configured, s.ConfigError, s.ConfigProblems, s.configCreated = cfg, true, configErr, problems, created
	s.claimed()
}

// rejectConfig handles a service configuration that failed validation. Leaving the service
// out would hand its domains to whoever else claims them (an unconfigured service on "*"),
// and defaults for what identifies its sessions would end them all (another cookie name). So:
//   - when the value's identity (affinity mode, cookie or header name, domains, path) is
//     valid, the service is served with it, each bad optional field at its default and
//     reported (ConfigProblems). This depends on the value alone, so every replica, every
//     restart and every compaction agree;
//   - else the newest valid earlier version of the key that etcd still holds is served;
//   - else the service is left out (ConfigError), its domains and path, when the value
//     names valid ones, kept reserved (Config.Domains, Config.PathPrefix) so that the
//     translation answers them with 503 instead of another service's servers.
func (b *stateBuilder) rejectConfig(key, svc string, err error, kv *mvccpb.KeyValue) {
	b.recordRejected(key, err)
	part := DecodeServiceConfigPartial(svc, kv.Value)
	ev := b.log.Warn().Str("key", key).Int64("revision", kv.ModRevision).Err(err)
	if part.Identity == nil {
		ev.Strs("defaulted", part.Defaulted).Msg("service configuration rejected; serving it with its bad fields at their defaults")
		b.setConfig(svc, part.Config, "", part.Defaulted, kv.CreateRevision, kv.ModRevision)
		return
	}
	var last ServiceConfig
	found := false
	if b.lastValidConfig != nil {
		var herr error
		last, found, herr = b.lastValidConfig(key, svc, kv.CreateRevision, kv.ModRevision)
		if herr != nil {
			if b.err == nil {
				b.err = fmt.Errorf("history of rejected %s: %w", key, herr)
			}
			return
		}
	}
	if found {
		ev.Msg("service configuration rejected; serving its newest valid earlier version from etcd's history")
		b.setConfig(svc, last, "", nil, kv.CreateRevision, kv.ModRevision)
		return
	}
	reserved := ServiceConfig{Domains: part.Domains, PathPrefix: part.PathPrefix}
	why := "configuration rejected: " + err.Error()
	if len(reserved.Domains) == 0 {
		ev.Msg("service configuration rejected, no valid earlier version is in etcd's history, and its domains and path cannot be read: leaving the service out with NOTHING reserved; its users may reach another service")
		why += "; its domains and path cannot be read, so nothing is reserved for it"
	} else {
		ev.Strs("reserved", reserved.Domains).Str("pathPrefix", reserved.PathPrefix).
			Msg("service configuration rejected and no valid earlier version is in etcd's history; leaving the service out, its routes answered 503")
	}
	b.setConfig(svc, reserved, why, nil, kv.CreateRevision, kv.ModRevision)
}

// del applies the deletion of key at revision rev.
func (b *stateBuilder) del(key string, rev int64) {
	b.clearRejected(key)
	kind, svc, id, err := ParseKey(b.prefix, key)
	if err != nil || kind == KeyReplica {
		return
	}
	if kind == KeyDrain {
		b.delDrain(svc, id)
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
		s.Config, s.Configured, s.ConfigError, s.ConfigProblems, s.configCreated = DefaultServiceConfig(svc), false, "", nil, 0
	case KeyInstance:
		if _, ok := cur.Instances[id]; !ok {
			return
		}
		s = b.mutable(svc, rev)
		delete(s.Instances, id)
		delete(s.instCreated, id)
	default:
		return // drains are handled above; unknown keys never get here
	}
	s.claimed()
	if !s.Configured && len(s.Instances) == 0 {
		delete(b.st.Services, svc)
	}
}

// rejectKey records a rejected value. The key's last good value, if any, stays.
func (b *stateBuilder) rejectKey(key string, kind KeyKind, svc, id string, err error, rev int64) {
	kept := b.keepLastGood(kind, svc, id, rev)
	// Logged when the key's rejection appears or changes, not on each rewrite of the same bad
	// value (an agent rewrites its instance every few seconds), nor again on a re-list.
	if b.recordRejected(key, err) && (b.fallback == nil || b.fallback.Rejected[key] != err.Error()) {
		ev := b.log.Warn().Str("key", key).Int64("revision", rev).Err(err)
		if kept {
			ev.Msg("registry value rejected; keeping the last valid value of this key")
		} else {
			ev.Msg("registry value rejected; leaving the key out")
		}
	}
}

// recordRejected records key's rejection in the state and tells the reject hook; it reports
// whether the rejection is new or changed.
func (b *stateBuilder) recordRejected(key string, err error) bool {
	if b.reject != nil {
		b.reject(key, err)
	}
	if b.st.Rejected[key] == err.Error() {
		return false
	}
	b.st.Rejected[key] = err.Error()
	b.changed = true
	return true
}

// keepLastGood reports whether the instance key has a last good value, taking it from the
// fallback state during a re-list.
func (b *stateBuilder) keepLastGood(kind KeyKind, svc, id string, rev int64) bool {
	if kind == KeyDrain {
		return b.keepLastDrain(svc, id)
	}
	if kind != KeyInstance {
		return false
	}
	has := func(st *State) bool {
		if st == nil || st.Services[svc] == nil {
			return false
		}
		_, ok := st.Services[svc].Instances[id]
		return ok
	}
	if has(b.st) {
		return true
	}
	if !has(b.fallback) {
		return false
	}
	old, s := b.fallback.Services[svc], b.mutable(svc, rev)
	s.Instances[id] = old.Instances[id]
	if c, ok := old.instCreated[id]; ok {
		s.instCreated[id] = c
	}
	s.claimed()
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
	// A service the builder owned may have left the state in this batch (its last instance
	// deleted) and be back now: a new one then, as if in another batch.
	if !b.owned[svc] || s == nil {
		if s == nil {
			s = &Service{Name: svc, Config: DefaultServiceConfig(svc), Instances: map[string]Instance{}, instCreated: map[string]int64{}}
		} else {
			c := *s
			c.Instances = maps.Clone(s.Instances)
			c.instCreated = maps.Clone(s.instCreated)
			if c.instCreated == nil {
				c.instCreated = map[string]int64{}
			}
			s = &c
		}
		b.st.Services[svc] = s
		b.owned[svc] = true
	}
	s.Revision = max(s.Revision, rev)
	return s
}

// claimed recomputes Created: the configuration key's create revision when configured,
// else the oldest instance claim (Instance.Claim).
func (s *Service) claimed() {
	if s.Configured {
		s.Created = s.configCreated
		return
	}
	s.Created = 0
	for _, c := range s.instCreated {
		if s.Created == 0 || c < s.Created {
			s.Created = c
		}
	}
}

// sameContent reports whether two services hold the same configuration and instances.
func sameContent(a, b *Service) bool {
	return a.Configured == b.Configured && a.ConfigError == b.ConfigError && a.Created == b.Created &&
		slices.Equal(a.ConfigProblems, b.ConfigProblems) &&
		reflect.DeepEqual(a.Config, b.Config) && reflect.DeepEqual(a.Instances, b.Instances) &&
		maps.Equal(a.instCreated, b.instCreated)
}
