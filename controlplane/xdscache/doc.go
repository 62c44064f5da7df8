// Package xdscache is the control plane's xDS cache: an implementation of go-control-plane's
// cache.Cache used by go-control-plane's own server, streams and state-of-the-world (SotW) and
// delta protocol code, built so that a push costs O(subscribers of what changed) and memory
// does not grow with Envoys x configuration size. It owns the resources served, their
// versions and the gateway groups.
//
// # What go-control-plane v0.14.0's caches cost, and why
//
// LinearCache (one type, shared by every node; Tether served endpoints from it):
//   - Every notification and every CreateWatch re-diffs the whole subscription
//     (computeResourceChange walks every subscribed name and compares its version with the
//     subscription's ReturnedResources). The cache keeps no state per stream: the server hands
//     it the Subscription on each CreateWatch and may have changed it, so the only safe answer
//     is to recompute. An ACK therefore costs O(subscribed names), under the cache's single
//     lock: with 1,000 Envoys x 1,000 services one endpoint change costs 10^6 map lookups.
//   - Every response clones ReturnedResources (maps.Clone): the interface says the cache must
//     not alter the subscription's map, so each response pays O(subscribed) to build the next.
//   - Every watch is registered under each of its names (trackWatch) and unregistered when it
//     fires (removeWatch): the name -> watches index is how notifyAll finds the watches of a
//     changed name, and a fired watch must leave it (go-control-plane#854 is the deadlock
//     when it did not). Each ACK re-registers: O(subscribed) again.
//   - The SotW version is a counter of updates to this cache instance: monotonic so that a
//     client's version_info tells the cache whether it is current, but two replicas or a
//     restarted process count differently, so a SotW Envoy that moves is sent everything again.
//     (go-control-plane#546 and #547 record the same costs met from the update side.)
//
// SnapshotCache (whole configuration per node key; Tether served the other types from it):
//   - SetSnapshot replaces a group's snapshot and answers every open watch of the group whose
//     version differs with the whole type: each response makes new cachedResources, so the
//     resources are marshalled again per response, per Envoy (lazily, but once per response).
//     With 1,000 Envoys connecting, each initial configuration was marshalled and queued per
//     stream: 6.4 GB (go-control-plane#597 reports the same, 10 GB for 190 Envoys).
//   - Delta watches build a version map per snapshot (ConstructVersionMap hashes every
//     resource) and compare every subscribed name on every push and ACK, for the same reason
//     as LinearCache: no per-stream state survives a watch.
//   - Snapshots are per node key and nothing forgets a key: every group ever seen keeps its
//     snapshot and status (Tether's publisher set every snapshot into every group).
//
// # What this cache does instead
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
