package registry

import (
	"fmt"
	"strings"
	"unicode"
	"unicode/utf8"
)

// DefaultPrefix is the default etcd key prefix.
const DefaultPrefix = "/tether"

// NormalizePrefix checks an etcd key prefix and returns it without a trailing slash.
func NormalizePrefix(prefix string) (string, error) {
	p := strings.TrimRight(prefix, "/")
	if !strings.HasPrefix(p, "/") || len(p) > 128 || !utf8.ValidString(p) ||
		strings.IndexFunc(p, func(r rune) bool { return unicode.IsSpace(r) || unicode.IsControl(r) }) >= 0 {
		return "", fmt.Errorf("prefix %q must start with '/', e.g. /tether, and hold no spaces", prefix)
	}
	return p, nil
}

// ServicesPrefix returns the key prefix of all service configurations.
func ServicesPrefix(prefix string) string { return prefix + "/services/" }

// InstancesPrefix returns the key prefix of all instances.
func InstancesPrefix(prefix string) string { return prefix + "/instances/" }

// ServiceKey returns the key of a service's configuration.
func ServiceKey(prefix, service string) string { return ServicesPrefix(prefix) + service }

// InstanceKey returns the key of one instance.
func InstanceKey(prefix, service, id string) string {
	return InstancesPrefix(prefix) + service + "/" + id
}

// KeyKind tells what a registry key names.
type KeyKind int

// Key kinds.
const (
	KeyUnknown KeyKind = iota
	KeyService
	KeyInstance
	KeyDrain
	KeyReplica // a control-plane replica's report (replica.go); not part of the State
)

// ParseKey splits a key under prefix into its kind, service and instance ID (the drain's
// name for a drain, the replica's name for a replica). Keys outside the schema return KeyUnknown and an error.
func ParseKey(prefix, key string) (KeyKind, string, string, error) {
	switch {
	case strings.HasPrefix(key, ServicesPrefix(prefix)):
		svc := strings.TrimPrefix(key, ServicesPrefix(prefix))
		if err := ValidateServiceName(svc); err != nil {
			return KeyUnknown, "", "", fmt.Errorf("key %q: %w", key, err)
		}
		return KeyService, svc, "", nil
	case strings.HasPrefix(key, InstancesPrefix(prefix)):
		return parseServiceKey(key, InstancesPrefix(prefix), "id", KeyInstance, ValidateInstanceID)
	case strings.HasPrefix(key, DrainsPrefix(prefix)):
		return parseServiceKey(key, DrainsPrefix(prefix), "name", KeyDrain, ValidateDrainName)
	case strings.HasPrefix(key, ReplicasPrefix(prefix)):
		return parseReplicaKey(prefix, key)
	}
	return KeyUnknown, "", "", fmt.Errorf("key %q is neither under %s nor %s nor %s", key, ServicesPrefix(prefix), InstancesPrefix(prefix), DrainsPrefix(prefix))
}

// parseServiceKey is ParseKey for a key <base><service>/<name> of kind, name checked by valid.
func parseServiceKey(key, base, name string, kind KeyKind, valid func(string) error) (KeyKind, string, string, error) {
	svc, id, ok := strings.Cut(strings.TrimPrefix(key, base), "/")
	if !ok {
		return KeyUnknown, "", "", fmt.Errorf("key %q: want %s<service>/<%s>", key, base, name)
	}
	err := ValidateServiceName(svc)
	if err == nil {
		err = valid(id)
	}
	if err != nil {
		return KeyUnknown, "", "", fmt.Errorf("key %q: %w", key, err)
	}
	return kind, svc, id, nil
}
