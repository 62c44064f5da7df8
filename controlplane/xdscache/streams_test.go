package xdscache

import (
	"fmt"
	"slices"
	"strings"
	"sync"
	"testing"
	"time"

	corev3 "github.com/envoyproxy/go-control-plane/envoy/config/core/v3"
	discovery "github.com/envoyproxy/go-control-plane/envoy/service/discovery/v3"
	"github.com/envoyproxy/go-control-plane/pkg/cache/types"
	resourcev3 "github.com/envoyproxy/go-control-plane/pkg/resource/v3"
	rpcstatus "google.golang.org/genproto/googleapis/rpc/status"

	"github.com/tetherlb/tether/internal/eventually"
)

// seen is an Observer writing down what it is told, one line a call.
type seen struct {
	mu    sync.Mutex
	lines []string
}

func (o *seen) add(format string, args ...any) {
	o.mu.Lock()
	defer o.mu.Unlock()
	o.lines = append(o.lines, fmt.Sprintf(format, args...))
}

func (o *seen) Opened(key StreamKey) { o.add("opened %s", key.Variant()) }
func (o *seen) Named(info *ClientInfo, node *corev3.Node) {
	o.add("named %s %s %s", info.NodeID, info.Group, node.GetId())
}
func (o *seen) Responded(key StreamKey, typeURL string) {
	o.add("responded %s %s", key.Variant(), ShortType(typeURL))
}
func (o *seen) NACKed(info *ClientInfo, typeURL, version string, code int32) {
	o.add("nacked %s %s %s %d (%d)", info.NodeID, ShortType(typeURL), version, code, info.NACKs)
}
func (o *seen) Closed(info *ClientInfo) { o.add("closed %s", info.NodeID) }

func (o *seen) has(line string) bool {
	o.mu.Lock()
	defer o.mu.Unlock()
	return slices.Contains(o.lines, line)
}

// TestStreamsShowWhatEachEnvoyAcked: the admin API's view of the streams (Streams, and the
// Observer's calls for logs and metrics) shows each stream's node, group and the version it
// last ACKed of each type, and counts only answers to nonces the stream was sent: a NACK with
// its message cut at 1 KiB, an ACK or NACK of a nonce never sent not at all.
func TestStreamsShowWhatEachEnvoyAcked(t *testing.T) {
	o := &seen{}
	c := New(Options{Observer: o})
	update(t, c, map[string][]types.Resource{resourcev3.ClusterType: {cluster("x", time.Second)},
		resourcev3.EndpointType: {cla("a", 1)}})
	conn := serve(t, c)
	s := openSotW(t, conn)
	s.send(t, &discovery.DiscoveryRequest{TypeUrl: resourcev3.ClusterType, Node: &corev3.Node{Id: "s", Cluster: "g"}})
	r1 := s.recv(t, "clusters")
	s.send(t, &discovery.DiscoveryRequest{TypeUrl: resourcev3.ClusterType, VersionInfo: r1.GetVersionInfo(), ResponseNonce: r1.GetNonce()})
	d := openDelta(t, conn)
	d.send(t, &discovery.DeltaDiscoveryRequest{TypeUrl: resourcev3.EndpointType, Node: &corev3.Node{Id: "d", Cluster: "g"}, ResourceNamesSubscribe: []string{"a"}})
	d1 := d.recv(t, "endpoints")
	d.send(t, &discovery.DeltaDiscoveryRequest{TypeUrl: resourcev3.EndpointType, ResponseNonce: d1.GetNonce()})
	acked := func(node, short string) string {
		for _, ci := range c.Streams() {
			if ci.NodeID == node {
				return ci.Acked[short]
			}
		}
		return ""
	}
	eventually.True(t, "both ACKs shown", 10*time.Second, func() bool {
		return acked("s", "Cluster") == r1.GetVersionInfo() && acked("d", "ClusterLoadAssignment") == d1.GetSystemVersionInfo()
	})
	got := c.Streams()
	if len(got) != 2 || got[0].Variant != "delta" || got[1].Variant != "sotw" || got[0].StreamID != got[1].StreamID ||
		got[0].NodeID != "d" || got[1].NodeID != "s" || got[0].Group != "g" || len(got[0].Acked) != 1 || len(got[1].Acked) != 1 {
		t.Fatalf("streams %+v; want the delta stream, then the SotW one of the same ID, each with its one ACK", got)
	}
	for _, line := range []string{"opened sotw", "opened delta", "named s g s", "named d g d", "responded sotw Cluster", "responded delta ClusterLoadAssignment"} {
		if !o.has(line) {
			t.Errorf("the observer was not told %q: %q", line, o.lines)
		}
	}

	// Answers to nonces this stream was never sent count for nothing.
	nack := func(nonce, message string) {
		d.send(t, &discovery.DeltaDiscoveryRequest{TypeUrl: resourcev3.EndpointType, ResponseNonce: nonce, ErrorDetail: &rpcstatus.Status{Code: 3, Message: message}})
	}
	nack("never-sent", "x")
	d.send(t, &discovery.DeltaDiscoveryRequest{TypeUrl: resourcev3.EndpointType, ResponseNonce: "never-sent-either"})
	// Then the NACKs of two changes: a message of 1 KiB is kept whole, a longer one cut.
	for i, message := range []string{strings.Repeat("m", 1024), strings.Repeat("n", 1025)} {
		update(t, c, map[string][]types.Resource{resourcev3.ClusterType: {cluster("x", time.Second)},
			resourcev3.EndpointType: {cla("a", uint32(2+i))}})
		r := d.recv(t, fmt.Sprint("change ", i))
		nack(r.GetNonce(), message)
		want := fmt.Sprintf("nacked d ClusterLoadAssignment %s 3 (%d)", r.GetSystemVersionInfo(), i+1)
		eventually.True(t, want, 10*time.Second, func() bool { return o.has(want) })
		shown := message[:1024] + map[bool]string{true: "..."}[len(message) > 1024]
		for _, ci := range c.Streams() {
			if ci.NodeID == "d" && (ci.NACKs != i+1 || ci.LastNACK != shown || ci.Acked["ClusterLoadAssignment"] != d1.GetSystemVersionInfo()) {
				t.Errorf("after a NACK of %d bytes: %d NACKs, the last shown in %d bytes, ACKed %q; want %d, %d bytes, the ACK before kept",
					len(message), ci.NACKs, len(ci.LastNACK), ci.Acked["ClusterLoadAssignment"], i+1, len(shown))
			}
		}
	}
	if o.has("nacked d ClusterLoadAssignment  3 (1)") {
		t.Error("a NACK of a nonce never sent was counted")
	}
	s.cancel()
	eventually.True(t, "the observer told of the close", 10*time.Second, func() bool { return o.has("closed s") })
}

// TestSentNoncesBounded: a stream that answers none of its responses makes the cache keep at
// most 257 of their nonces: the 258th starts the record again.
func TestSentNoncesBounded(t *testing.T) {
	c := New(Options{})
	key := StreamKey{true, 1}
	c.open(key, "")
	ack := func(nonce string) string {
		t.Helper()
		if err := c.bindDelta(1, &discovery.DeltaDiscoveryRequest{TypeUrl: resourcev3.EndpointType, Node: &corev3.Node{Id: "n"}, ResponseNonce: nonce}); err != nil {
			t.Fatal(err)
		}
		return c.Streams()[0].Acked["ClusterLoadAssignment"]
	}
	for i := range 257 {
		c.responded(key, resourcev3.EndpointType, fmt.Sprint("n", i), fmt.Sprint("v", i))
	}
	if got := ack("n0"); got != "v0" {
		t.Fatalf("the first of 257 responses ACKed: shown %q; want v0", got)
	}
	c.responded(key, resourcev3.EndpointType, "n257", "v257") // 257 kept again
	c.responded(key, resourcev3.EndpointType, "n258", "v258") // the record starts again
	if got := ack("n1"); got != "v0" {
		t.Errorf("a nonce from before the record started again was ACKed: shown %q; want v0 still", got)
	}
	if got := ack("n258"); got != "v258" {
		t.Errorf("the last response ACKed: shown %q; want v258", got)
	}
}
