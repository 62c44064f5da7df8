package controlplane

import "google.golang.org/grpc/mem"

// maxPooledBuffer is the largest gRPC buffer kept for reuse: gRPC's default pool's largest
// size class (1 MB).
const maxPooledBuffer = 1 << 20

// BufferPool returns the buffer pool the control plane's binary gives gRPC
// (experimental.SetDefaultBufferPool, which also reaches the proto codec's marshalling): gRPC's
// default pool for buffers up to 1 MB, while a larger one (a thousand services' endpoints are
// several MB in one response) is allocated for its message and left to the collector. gRPC's
// default pool keeps larger buffers in one sync.Pool of any size, where a Get that finds one
// too small puts it back and allocates: while 1,000 Envoys fetched their first configuration,
// such buffers were 260-480 MB of the heap (docs/performance.md).
func BufferPool() mem.BufferPool { return bufferPool{small: mem.DefaultBufferPool()} }

type bufferPool struct{ small mem.BufferPool }

func (p bufferPool) Get(n int) *[]byte {
	if n > maxPooledBuffer {
		b := make([]byte, n)
		return &b
	}
	return p.small.Get(n)
}

func (p bufferPool) Put(b *[]byte) {
	if cap(*b) > maxPooledBuffer {
		return
	}
	p.small.Put(b)
}
