package controlplane

import "google.golang.org/grpc/mem"

// maxPooledBuffer is the largest gRPC buffer kept for reuse: gRPC's default pool's largest
// size class (1 MB).
const maxPooledBuffer = 1 << 20

// xdsBufferPool is gRPC's default buffer pool for buffers up to 1 MB; a larger one (a
// thousand services' endpoints or routes are several MB in one response) is allocated for its
// message and left to the collector. gRPC's default pool keeps larger buffers in one sync.Pool
// of any size: a Get that finds one too small puts it back and allocates, so buffers of the
// wrong size pile up between collections. With 1,000 Envoys connecting to 1,000 services
// that was 480 MB of the heap (docs/performance.md).
type xdsBufferPool struct{ small mem.BufferPool }

func newXDSBufferPool() xdsBufferPool { return xdsBufferPool{small: mem.DefaultBufferPool()} }

func (p xdsBufferPool) Get(n int) *[]byte {
	if n > maxPooledBuffer {
		b := make([]byte, n)
		return &b
	}
	return p.small.Get(n)
}

func (p xdsBufferPool) Put(b *[]byte) {
	if cap(*b) > maxPooledBuffer {
		return
	}
	p.small.Put(b)
}
