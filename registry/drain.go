package registry

import (
	"context"
	"crypto/sha256"
	"encoding/hex"
	"encoding/json"
	"errors"
	"fmt"
	"maps"
	"reflect"
	"regexp"
	"slices"
	"strings"
	"time"

	clientv3 "go.etcd.io/etcd/client/v3"
)

// Drain is an operator's drain at <prefix>/drains/<service>/<name>: the instances it selects
// keep the sessions they hold and take no new ones (Envoy DRAINING) until the key is deleted,
// whatever their agents report. It selects one instance by ID, or every instance whose labels
// hold all of Labels, including instances that register later.
type Drain struct {
	// Instance selects one instance by ID; exclusive with Labels.
	Instance string `json:"instance,omitempty"`
	// Labels selects every instance carrying all of these labels; exclusive with Instance.
	Labels map[string]string `json:"labels,omitempty"`
	// Reason is the operator's note, shown with the drained instances.
	Reason string `json:"reason,omitempty"`
	// CreatedAt is when the drain was written (zero when written by hand without it).
	CreatedAt time.Time `json:"createdAt,omitzero"`
}

// DrainMark says which drain drains an instance, for display.
type DrainMark struct {
	Name  string    `json:"name"`
	Since time.Time `json:"since,omitzero"`
}

// OperatorDrainReason is the reason an instance drained by an operator's drain reports, with
// the drain's name: "drained by operator (drain version=1.4.1)". Agents that see the drain
// write it; the control plane writes it into the served state of agents that do not.
func OperatorDrainReason(name string) string { return "drained by operator (drain " + name + ")" }

// DrainsPrefix returns the key prefix of all drains.
func DrainsPrefix(prefix string) string { return prefix + "/drains/" }

// ServiceDrainsPrefix returns the key prefix of one service's drains.
func ServiceDrainsPrefix(prefix, service string) string { return DrainsPrefix(prefix) + service + "/" }

// DrainKey returns the key of one drain.
func DrainKey(prefix, service, name string) string {
	return ServiceDrainsPrefix(prefix, service) + name
}

// drainNameRE: instance IDs and "k=v,k2=v2" selectors both fit, '/' never does (it would be
// read as a deeper key).
var drainNameRE = regexp.MustCompile(`^[A-Za-z0-9]([A-Za-z0-9._=,:+@-]{0,126}[A-Za-z0-9])?$`)

// ValidateDrainName checks a drain name: 1-128 letters, digits or '.', '_', '=', ',', ':',
// '+', '@', '-', starting and ending with a letter or digit.
func ValidateDrainName(name string) error {
	if !drainNameRE.MatchString(name) {
		return fmt.Errorf("drain name %q: must be 1-128 letters, digits, '.', '_', '=', ',', ':', '+', '@' or '-', starting and ending with a letter or digit", name)
	}
	return nil
}

// ValidateLabel checks one label key and value as instances' labels are checked.
func ValidateLabel(k, v string) error {
	if len(k) > maxLabelKey || !labelKeyRE.MatchString(k) {
		return fmt.Errorf("label key %q must be 1-63 letters, digits, '.', '_', '/' or '-', starting and ending with a letter or digit", k)
	}
	if len(v) > maxLabelValue {
		return fmt.Errorf("label value of %q is over %d characters", k, maxLabelValue)
	}
	return nil
}

// Validate checks the drain: exactly one of instance and labels, and their formats.
func (d *Drain) Validate() error {
	var errs []error
	switch {
	case d.Instance == "" && len(d.Labels) == 0:
		errs = append(errs, errors.New(`selects nothing: set "instance" (an instance ID) or "labels" (e.g. {"version": "1.4.1"})`))
	case d.Instance != "" && len(d.Labels) > 0:
		errs = append(errs, errors.New(`set either "instance" or "labels", not both`))
	case d.Instance != "":
		if err := ValidateInstanceID(d.Instance); err != nil {
			errs = append(errs, fmt.Errorf("instance: %w", err))
		}
	}
	if len(d.Labels) > MaxLabels {
		errs = append(errs, fmt.Errorf("labels: %d entries, at most %d", len(d.Labels), MaxLabels))
	}
	for _, k := range slices.Sorted(maps.Keys(d.Labels)) {
		if err := ValidateLabel(k, d.Labels[k]); err != nil {
			errs = append(errs, fmt.Errorf("labels: %w", err))
		}
	}
	if len(d.Reason) > MaxReason {
		errs = append(errs, fmt.Errorf("reason: over %d characters", MaxReason))
	}
	if y := d.CreatedAt.UTC().Year(); y < 1 || y > 9999 {
		errs = append(errs, fmt.Errorf("createdAt: %s is outside years 1-9999 in UTC", d.CreatedAt.Format(time.RFC3339)))
	}
	return errors.Join(errs...)
}

// DecodeDrain decodes and validates the value of <prefix>/drains/<service>/<name>.
func DecodeDrain(service, name string, raw []byte) (Drain, error) {
	var d Drain
	if err := ValidateServiceName(service); err != nil {
		return d, err
	}
	if err := ValidateDrainName(name); err != nil {
		return d, err
	}
	if err := decodeJSON(raw, &d); err != nil {
		return d, err
	}
	// Normalize so that equal content compares equal and re-encodes the same.
	d.CreatedAt = d.CreatedAt.UTC()
	if len(d.Labels) == 0 {
		d.Labels = nil
	}
	return d, d.Validate()
}

// Matches reports whether the drain selects inst.
func (d *Drain) Matches(inst *Instance) bool {
	if d.Instance != "" {
		return inst.ID == d.Instance
	}
	if len(d.Labels) == 0 {
		return false
	}
	for k, v := range d.Labels {
		if got, ok := inst.Labels[k]; !ok || got != v {
			return false
		}
	}
	return true
}

// Selector describes what the drain selects: "instance app-1" or "labels version=1.4.1".
func (d *Drain) Selector() string {
	if d.Instance != "" {
		return "instance " + d.Instance
	}
	return "labels " + LabelString(d.Labels)
}

// LabelString formats labels as sorted "k=v,k2=v2".
func LabelString(labels map[string]string) string {
	parts := make([]string, 0, len(labels))
	for _, k := range slices.Sorted(maps.Keys(labels)) {
		parts = append(parts, k+"="+labels[k])
	}
	return strings.Join(parts, ",")
}

// DrainName is the name the command gives a drain: the instance ID, or the selector
// "k=v,k2=v2" when it is a valid name, else "labels-" and a hash of it. The same selector
// always gets the same name, so a second drain of it is the same key, and --undo finds it.
func DrainName(d Drain) string {
	if d.Instance != "" {
		return d.Instance
	}
	s := LabelString(d.Labels)
	if ValidateDrainName(s) == nil {
		return s
	}
	h := sha256.Sum256([]byte(s))
	return "labels-" + hex.EncodeToString(h[:6])
}

// DrainFor returns the drain among drains that selects inst, or false. When several do, the
// oldest wins (then the first by name), so the answer is deterministic.
func DrainFor(drains map[string]Drain, inst *Instance) (DrainMark, bool) {
	return drainFor(slices.Sorted(maps.Keys(drains)), drains, inst)
}

// drainFor is DrainFor with the drains' names already sorted.
func drainFor(names []string, drains map[string]Drain, inst *Instance) (DrainMark, bool) {
	var best DrainMark
	found := false
	for _, name := range names {
		d := drains[name]
		if !d.Matches(inst) {
			continue
		}
		if !found || d.CreatedAt.Before(best.Since) {
			best, found = DrainMark{Name: name, Since: d.CreatedAt}, true
		}
	}
	return best, found
}

// ApplyDrains returns st with its operators' drains applied: every instance a drain selects
// that is available or full is served as draining, with OperatorDrainReason (the agent's own
// reason, if any, after it); an unhealthy instance stays unhealthy. Each drained instance is
// recorded in its service's Drained. Services without drained instances are st's own; st is
// not modified. A nil st or one without drains is returned as is.
func ApplyDrains(st *State) *State {
	if st == nil || len(st.Drains) == 0 {
		return st
	}
	var out *State
	for name, svc := range st.Services {
		drained := DrainService(svc, st.Drains[name])
		if drained == svc {
			continue
		}
		if out == nil {
			c := *st
			c.Services = maps.Clone(st.Services)
			out = &c
		}
		out.Services[name] = drained
	}
	if out == nil {
		return st
	}
	return out
}

// DrainService returns svc with drains applied (see ApplyDrains), or svc itself when no
// instance is selected.
func DrainService(svc *Service, drains map[string]Drain) *Service {
	if svc == nil || len(drains) == 0 {
		return svc
	}
	var out *Service
	names := slices.Sorted(maps.Keys(drains))
	for id, in := range svc.Instances {
		mark, ok := drainFor(names, drains, &in)
		if !ok {
			continue
		}
		if out == nil {
			c := *svc
			c.Instances = maps.Clone(svc.Instances)
			c.Drained = map[string]DrainMark{}
			out = &c
		}
		out.Drained[id] = mark
		switch in.State {
		case StateAvailable, StateFull:
			reason := OperatorDrainReason(mark.Name)
			if in.Reason != "" && in.Reason != reason {
				reason += "; " + in.Reason
			}
			in.State, in.Reason = StateDraining, reason
			out.Instances[id] = in
		case StateDraining, StateUnhealthy:
			// Already takes no new sessions; an unhealthy instance stays unhealthy.
		}
	}
	if out == nil {
		return svc
	}
	return out
}

// PutDrain validates d and writes it, unless a drain with the same name already exists; it
// returns the drain stored under the key (the existing one, with its createdAt, when there
// was one) and whether it was created now.
func PutDrain(ctx context.Context, cli *clientv3.Client, prefix, service, name string, d Drain) (Drain, bool, error) {
	if err := ValidateServiceName(service); err != nil {
		return d, false, err
	}
	if err := ValidateDrainName(name); err != nil {
		return d, false, err
	}
	if err := d.Validate(); err != nil {
		return d, false, fmt.Errorf("drain %s/%s: %w", service, name, err)
	}
	b, err := json.Marshal(d)
	if err != nil {
		return d, false, fmt.Errorf("encode drain %s/%s: %w", service, name, err)
	}
	key := DrainKey(prefix, service, name)
	resp, err := cli.Txn(ctx).
		If(clientv3.Compare(clientv3.CreateRevision(key), "=", 0)).
		Then(clientv3.OpPut(key, string(b))).
		Else(clientv3.OpGet(key)).
		Commit()
	if err != nil {
		return d, false, fmt.Errorf("put %s: %w", key, err)
	}
	if resp.Succeeded {
		return d, true, nil
	}
	kvs := resp.Responses[0].GetResponseRange().GetKvs()
	if len(kvs) != 1 {
		return d, false, fmt.Errorf("put %s: the key changed meanwhile; try again", key)
	}
	old, err := DecodeDrain(service, name, kvs[0].Value)
	if err == nil {
		if old.Instance == d.Instance && maps.Equal(old.Labels, d.Labels) {
			return old, false, nil
		}
		// Replacing it would silently undrain what it selects.
		return old, false, fmt.Errorf("%w: %s selects %s, not %s", ErrDrainNameTaken, key, old.Selector(), d.Selector())
	}
	// An invalid value drains nothing: the command's drain replaces it, if it is still there.
	resp, err = cli.Txn(ctx).
		If(clientv3.Compare(clientv3.ModRevision(key), "=", kvs[0].ModRevision)).
		Then(clientv3.OpPut(key, string(b))).
		Commit()
	if err != nil {
		return d, false, fmt.Errorf("put %s: %w", key, err)
	}
	if !resp.Succeeded {
		return d, false, fmt.Errorf("put %s: the key changed meanwhile; try again", key)
	}
	return d, true, nil
}

// ErrDrainNameTaken is returned by PutDrain when the key holds a valid drain of another
// selection (written by hand under the name the command would use).
var ErrDrainNameTaken = errors.New("drain name taken by another selection")

// DeleteDrain removes a drain; it reports whether the key existed.
func DeleteDrain(ctx context.Context, cli *clientv3.Client, prefix, service, name string) (bool, error) {
	key := DrainKey(prefix, service, name)
	resp, err := cli.Delete(ctx, key)
	if err != nil {
		return false, fmt.Errorf("delete %s: %w", key, err)
	}
	return resp.Deleted > 0, nil
}

// putDrain applies a drain's value to the builder's state; it returns the decoding error.
func (b *stateBuilder) putDrain(svc, name string, value []byte) error {
	d, err := DecodeDrain(svc, name, value)
	if err != nil {
		return err
	}
	if old, ok := b.st.Drains[svc][name]; ok && reflect.DeepEqual(old, d) {
		return nil
	}
	b.drainsOf(svc)[name] = d
	return nil
}

// delDrain applies the deletion of a drain.
func (b *stateBuilder) delDrain(svc, name string) {
	if _, ok := b.st.Drains[svc][name]; !ok {
		return
	}
	m := b.drainsOf(svc)
	delete(m, name)
	if len(m) == 0 {
		delete(b.st.Drains, svc)
	}
}

// keepLastDrain reports whether the drain has a last good value, taking it from the
// fallback state during a re-list.
func (b *stateBuilder) keepLastDrain(svc, name string) bool {
	if _, ok := b.st.Drains[svc][name]; ok {
		return true
	}
	if b.fallback == nil {
		return false
	}
	d, ok := b.fallback.Drains[svc][name]
	if ok {
		b.drainsOf(svc)[name] = d
	}
	return ok
}

// drainsOf returns the builder's own copy of a service's drains, copying the maps the first
// time (the base State's maps are shared and never modified).
func (b *stateBuilder) drainsOf(svc string) map[string]Drain {
	b.changed = true
	if !b.drainsOwned {
		b.st.Drains = maps.Clone(b.st.Drains)
		if b.st.Drains == nil {
			b.st.Drains = map[string]map[string]Drain{}
		}
		b.drainsOwned = true
	}
	if b.drainOwned == nil {
		b.drainOwned = map[string]bool{}
	}
	if !b.drainOwned[svc] {
		b.st.Drains[svc] = maps.Clone(b.st.Drains[svc])
		if b.st.Drains[svc] == nil {
			b.st.Drains[svc] = map[string]Drain{}
		}
		b.drainOwned[svc] = true
	}
	return b.st.Drains[svc]
}
