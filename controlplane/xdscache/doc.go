// Package xdscache is the control plane's xDS cache: an implementation of go-control-plane's
// cache.Cache used by go-control-plane's own server, streams and state-of-the-world (SotW) and
// delta protocol code, built so that a push costs O(subscribers of what changed) and memory
// does not grow with Envoys x configuration size. It owns the resources served, their
// versions and the gateway groups.
//
// go-control-plane's own caches keep no state per stream, so each ACK re-diffs the whole
// subscription under one lock, and SnapshotCache marshals every response per stream: why
// Tether has its own is in docs/design.md (Decisions, "Tether's own xDS cache").
//
// # How it works
//   - Per stream and type it keeps a watcher: what that Envoy subscribes to, what it holds
//     and the names changed since its last response (pending). The watcher lives from the
//     stream's open to its close (the cache's Callbacks bind each request to its stream), so
//     an ACK that changes no subscription re-arms in O(1): nothing pending, nothing to do. A
//     first sync marks "everything pending" without listing it.
//   - What a delta Envoy holds (name -> version, as sent; after a NACK the refused resources'
//     versions are forgotten) is kept in a sorted slice, 32 bytes a name, not in the map that
//     go-control-plane keeps as ReturnedResources (about 78 bytes a name): a thousand Envoys
//     holding two thousand resources each are two million names. Each response hands the
//     server a small map of the watcher's own as NextVersionMap; the server edits it when the
//     Envoy unsubscribes (it marks "" a name unsubscribed from a wildcard watch, so that the
//     next response says whether it still exists, and drops the others), and the next
//     CreateDeltaWatch applies those edits to the slice and clears the map. The names
//     subscribed are the server's own map: nothing is copied per stream. The server touches
//     both only between cancelling a watch and creating the next, and every cancel takes this
//     cache's lock, which orders its edits after this cache's writes. A SotW watcher keeps no
//     held set: SotW cannot remove endpoints or routes anyway, so it sends the changed names
//     (an A -> B -> A change while unarmed sends A again, which Envoy takes as no change), and
//     listeners and clusters go by type version.
//   - Per group and type, an index name -> watchers (and the wildcard watchers) is kept while
//     a watcher subscribes, not per watch: a change visits only the watchers of changed
//     names, adds the names to their pending sets, and answers those armed now.
//   - Per resource one entry: the deterministic marshalling, its content hash (the delta
//     resource version, the same hash go-control-plane computes) and the prebuilt Any and
//     delta Resource, shared by every response to every Envoy of every group. An unchanged
//     resource (the translation cache returns the same pointer) is not even re-marshalled.
//     Responses are built per send (the server writes the nonce into them) but only hold
//     pointers; SotW listeners and clusters share one body per type version.
//   - Every type's version (SotW version_info and delta system_version_info) is a hash of its
//     names and resource versions: replicas and restarts agree for every type.
//   - Initial syncs are bounded: a watcher's first response takes one of MaxInitialSyncs slots,
//     freed by its ACK (or NACK), its stream's end, or after SlotTimeout; the rest wait in
//     FIFO order, armed. Each watcher has at most one response outstanding (a watch fires
//     once), and what accumulates while it is unarmed is names, not data: a stream's unsent
//     data is bounded by one response per type.
//   - Per watcher the cache records what the Envoy acknowledged (Acks): the type version of
//     the last response it ACKed, whether that response covered every name it subscribes to,
//     and whether its last answer was a NACK. The control plane's two-phase publication
//     promotes a new endpoint once every Envoy holds it. An ACK is matched exactly: SotW
//     repeats the version it accepts (the server drops stale nonces), delta carries the
//     nonce the server wrote into the last response. After a NACK the stream is not whole
//     until it ACKs a response carrying every name it subscribes to, sent with the next
//     change (not at once: it would be refused again).
//   - Groups are created by the first stream of a node cluster and forgotten with its last
//     stream. Type URLs other than the four served are refused (the Callbacks end the stream).
//
// SotW listeners and clusters are sent whole (Envoy deletes those missing from a response);
// endpoints and routes only as they change, as LinearCache does: a SotW response of a
// non-wildcard type need not repeat unchanged resources.
package xdscache
