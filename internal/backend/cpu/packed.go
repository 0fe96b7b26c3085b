package cpu

import (
	"fmt"

	"github.com/loractl/loractl/internal/backend"
)

// Packed (quantized) frozen weights (backend.PackedStore). A buffer may hold a backend.Packed
// tensor instead of float32 values. The products that take a weight (MatMulForward,
// MatMulForwardAcc, MatMulBackward for dx) expand it into a pooled float32 scratch, split over
// the worker pool, right before the GEMM and recycle the scratch afterwards, so the resident
// weight stays packed (about 4.5 bits per parameter for NF4) and only one weight at a time
// exists as float32. Download expands too; every other op panics, naming itself.

var _ backend.PackedStore = (*Backend)(nil)

// UploadPacked returns a buffer holding p.
func (be *Backend) UploadPacked(p backend.Packed) (backend.Buffer, error) {
	if p == nil {
		return nil, fmt.Errorf("cpu: UploadPacked: nil tensor")
	}
	return &Buffer{p: p}, nil
}

// PackedBytes returns the storage of a packed buffer, or 0.
func (be *Backend) PackedBytes(b backend.Buffer) int64 {
	if cb := cpuBuffer(b); cb != nil && cb.p != nil {
		return cb.p.Bytes()
	}
	return 0
}

// packedAlign is the unit (elements) in which the expansion of a packed weight is split over
// the workers.
const packedAlign = 1 << 14

// expand returns the storage of a weight buffer for a product: F32 or BF16 as it is, or, for a
// packed buffer, a pooled float32 scratch holding its values (sp non-nil: recycle it with putF32
// after the product).
func (be *Backend) expand(w backend.Buffer) (f []float32, h []uint16, sp *[]float32) {
	cb := cpuBuffer(w)
	if cb == nil || cb.p == nil {
		f, h = weight(w)
		return f, h, nil
	}
	n := cb.p.Len()
	sp = getF32(n)
	a := expandArgs.get()
	a.p, a.dst = cb.p, *sp
	forRange(n, packedAlign, be.workers(4*n), a)
	expandArgs.put(a)
	return *sp, nil, sp
}

// expandBody is one expansion's job for the pool (recycled, so a product allocates nothing).
type expandBody struct {
	p   backend.Packed
	dst []float32 // (n,)
}

var expandArgs argPool[expandBody]

func (e *expandBody) run(lo, hi int) { e.p.DequantizeRange(e.dst[lo:hi], lo, hi) }

// isPacked reports whether b is a packed CPU buffer.
func isPacked(b backend.Buffer) bool {
	cb := cpuBuffer(b)
	return cb != nil && cb.p != nil
}
