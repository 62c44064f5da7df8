package registry

import (
	"errors"
	"fmt"
	"strings"
)

// A control-plane replica's report, <prefix>/replicas/<name>, written by the replica itself
// under its own lease. Each replica promotes a new endpoint (two-phase publication) once
// its own Envoys know it; Envoys of one gateway group may sit on different replicas, so a
// replica also waits until every other live replica says its Envoys know it. The report is
// two etcd revisions, not a list of endpoints: a replica knows what its Envoys hold as the
// registry revision of the newest state each one acknowledged whole.
//
// The registry watcher ignores these keys: they are not part of the registry State, and a
// replica's write must never start a publication (two replicas would then answer each
// other's writes for ever).

// ReplicasPrefix returns the key prefix of the replicas' reports.
func ReplicasPrefix(prefix string) string { return prefix + "/replicas/" }

// ReplicaKey returns the key of one replica's report.
func ReplicaKey(prefix, name string) string { return ReplicasPrefix(prefix) + name }

// Replica is one control-plane replica's report.
type Replica struct {
	// Held: every Envoy of this replica holds the endpoints of the registry as of this
	// revision (or later); an endpoint that became reachable at or before it is known to them.
	Held int64 `json:"held"`
	// Wants is the revision this replica waits for the others to hold (0: none): a replica
	// writes Held only while some replica wants more than it last wrote, so an idle group of
	// replicas writes nothing.
	Wants int64 `json:"wants,omitempty"`
	// Host names the replica's host and process for operators (status, the monitor).
	Host string `json:"host,omitempty"`
}

// ValidateReplicaName checks the <name> of a replica key: the same rules as an instance ID.
func ValidateReplicaName(name string) error {
	if err := ValidateInstanceID(name); err != nil {
		return fmt.Errorf("replica name: %w", err)
	}
	return nil
}

// DecodeReplica decodes and validates a replica's report.
func DecodeReplica(name string, raw []byte) (Replica, error) {
	var r Replica
	if err := ValidateReplicaName(name); err != nil {
		return r, err
	}
	if err := decodeJSON(raw, &r); err != nil {
		return r, err
	}
	var errs []error
	if r.Held < 0 {
		errs = append(errs, fmt.Errorf("held: %d is negative", r.Held))
	}
	if r.Wants < 0 {
		errs = append(errs, fmt.Errorf("wants: %d is negative", r.Wants))
	}
	if len(r.Host) > 256 {
		errs = append(errs, fmt.Errorf("host: %d bytes, over 256", len(r.Host)))
	}
	return r, errors.Join(errs...)
}

// parseReplicaKey is ParseKey for a key under ReplicasPrefix.
func parseReplicaKey(prefix, key string) (KeyKind, string, string, error) {
	name := strings.TrimPrefix(key, ReplicasPrefix(prefix))
	if err := ValidateReplicaName(name); err != nil {
		return KeyUnknown, "", "", fmt.Errorf("key %q: %w", key, err)
	}
	return KeyReplica, "", name, nil
}
