package controlplane

import "testing"

// TestBufferPoolDoesNotKeepLargeBuffers: a buffer over 1 MB given back is dropped, never
// handed out again (gRPC's own pool keeps them, of any size); smaller ones go to gRPC's pool.
func TestBufferPoolDoesNotKeepLargeBuffers(t *testing.T) {
	p := BufferPool()
	big := p.Get(3 << 20)
	if len(*big) != 3<<20 {
		t.Fatalf("Get(3 MB) gave %d bytes", len(*big))
	}
	first := &(*big)[0]
	p.Put(big)
	for range 10 {
		again := p.Get(3 << 20)
		if &(*again)[0] == first {
			t.Fatal("a 3 MB buffer given back was handed out again")
		}
	}
	if small := p.Get(100); len(*small) != 100 {
		t.Fatalf("Get(100) gave %d bytes", len(*small))
	}
}
