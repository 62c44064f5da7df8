package controlplane

import (
	"strings"

	core "github.com/envoyproxy/go-control-plane/envoy/config/core/v3"
	"github.com/envoyproxy/go-control-plane/pkg/cache/types"
	"github.com/rs/zerolog"

	"github.com/tetherlb/tether/controlplane/xdscache"
)

// DefaultGroup is the gateway group of an Envoy whose node.cluster is empty.
const DefaultGroup = "default"

func groupOf(node *core.Node) string { return groupName(node.GetCluster()) }

// groupName is the gateway group of a node cluster.
func groupName(cluster string) string {
	if cluster == "" {
		return DefaultGroup
	}
	return cluster
}

// shortType turns a type URL into its last element, e.g. "Cluster".
func shortType(typeURL string) string {
	if i := strings.LastIndexByte(typeURL, '.'); i >= 0 {
		return typeURL[i+1:]
	}
	return typeURL
}

// newXDSCache returns the cache serving every gateway group: each resource is checked by
// Envoy's own proto validation and marshalled once, when it changes.
// onAnswer (if not nil) is told, without blocking, when an Envoy ACKs or NACKs or a stream closes.
// onRefuse (if not nil) counts a stream ended for a request over a bound, by reason.
// maxServices (0: the cache's default) sizes the names an Envoy may ask for before the first
// publication: one assignment per service, twice over for a registry replaced meanwhile.
// maxInflight bounds the response bytes in flight (0: the default, negative: none).
func newXDSCache(l zerolog.Logger, onAnswer func(), initialSyncs int, onRefuse func(reason string), maxServices int, maxInflight int64) *xdscache.Cache {
	var before int
	if maxServices > 0 {
		before = 2*maxServices + xdscache.DefaultNameMargin
	}
	return xdscache.New(xdscache.Options{Check: validate, GroupOf: groupName, Logger: l, OnAnswer: onAnswer,
		MaxInitialSyncs: initialSyncs, OnRefuse: onRefuse, NamesBeforeUpdate: before, MaxInflightBytes: maxInflight})
}

// validate runs Envoy's own proto validation on a resource.
func validate(m types.Resource) error {
	if v, ok := m.(interface{ ValidateAll() error }); ok {
		return v.ValidateAll()
	}
	return nil
}
