package cpu

import (
	"fmt"
	"runtime"
	"strings"

	"github.com/loractl/loractl/internal/backend"
	"github.com/loractl/loractl/internal/backend/cpu/gemm"
)

// BF16 weights (backend.WeightStore). A frozen weight may be stored as bfloat16 bits, half the
// memory of float32. The ops that read such a weight widen it exactly inside the GEMM's packing
// (package gemm) or while copying rows, and accumulate in float32, so their results are bitwise
// those of the same op on an F32 buffer holding the widened values. They are:
//
//	MatMulForward   w
//	MatMulBackward  w, for dx (a BF16 weight is frozen: asking for its dw panics)
//	EmbeddingForward table (also lm_head when the embeddings are tied)
//	Download        (widens)
//
// Every other op panics when given a BF16 buffer, naming itself; Upload returns an error.

var _ backend.WeightStore = (*Backend)(nil)

// AllocWeight returns a zero-filled buffer of n elements stored as dt (F32 or BF16).
func (be *Backend) AllocWeight(n int, dt backend.DType) backend.Buffer {
	if n < 0 {
		panic(fmt.Sprintf("cpu: AllocWeight(%d, %s): negative length", n, dt))
	}
	switch dt {
	case backend.F32:
		return be.Alloc(n)
	case backend.BF16:
		return &Buffer{h: make([]uint16, n)}
	}
	panic(fmt.Sprintf("cpu: AllocWeight: dtype %s is not supported (want F32 or BF16)", dt))
}

// UploadBF16 copies bfloat16 bits into a BF16 buffer.
func (be *Backend) UploadBF16(dst backend.Buffer, src []uint16) error {
	cb := cpuBuffer(dst)
	if cb == nil || cb.h == nil {
		return fmt.Errorf("cpu: UploadBF16: the buffer is not a BF16 buffer (allocate it with AllocWeight(n, BF16))")
	}
	if len(cb.h) != len(src) {
		return fmt.Errorf("cpu: UploadBF16: buffer holds %d elements, source has %d", len(cb.h), len(src))
	}
	copy(cb.h, src)
	return nil
}

// DTypeOf reports how b is stored: BF16 or F32.
func (be *Backend) DTypeOf(b backend.Buffer) backend.DType {
	if isPacked(b) {
		return backend.Quantized
	}
	if isBF16(b) {
		return backend.BF16
	}
	return backend.F32
}

// isBF16 reports whether b is a BF16 CPU buffer.
func isBF16(b backend.Buffer) bool {
	cb := cpuBuffer(b)
	return cb != nil && cb.h != nil
}

// weight returns the storage of a buffer that may be F32 (f) or BF16 (h); the other is nil.
func weight(b backend.Buffer) (f []float32, h []uint16) {
	cb := cpuBuffer(b)
	if cb == nil {
		return nil, nil
	}
	if cb.p != nil {
		panic(packedMisuse())
	}
	return cb.data, cb.h
}

// weightLen returns the number of elements of a weight buffer of either dtype.
func weightLen(f []float32, h []uint16) int {
	if h != nil {
		return len(h)
	}
	return len(f)
}

// matView returns the gemm view of a row-major (rows, cols) weight of either dtype, as is
// (transposed false) or transposed.
func matView(f []float32, h []uint16, cols int, transposed bool) gemm.Mat {
	switch {
	case h != nil && transposed:
		return gemm.TransposedBF16(h, cols)
	case h != nil:
		return gemm.RowMajorBF16(h, cols)
	case transposed:
		return gemm.Transposed(f, cols)
	}
	return gemm.RowMajor(f, cols)
}

// bf16Misuse is the panic message for a BF16 buffer passed to an op that does not take one. It
// names the op: the first exported method of Backend on the call stack (found only on this
// failure path, so the ops need not pass their names to data).
func bf16Misuse() string {
	return fmt.Sprintf("cpu: %s: got a BF16 buffer; BF16 holds frozen weights, which only MatMulForward (w), MatMulBackward (w, for dx), EmbeddingForward (table) and Download accept", misusedOp())
}

// packedMisuse is the panic message for a packed (quantized) buffer passed to an op that does
// not take one.
func packedMisuse() string {
	return fmt.Sprintf("cpu: %s: got a packed (quantized) buffer; packed frozen weights are taken only by MatMulForward (w), MatMulForwardAcc (w), MatMulBackward (w, for dx) and Download", misusedOp())
}

// misusedOp names the first exported method of Backend on the call stack.
func misusedOp() string {
	op := "an op that takes no such buffer"
	pc := make([]uintptr, 32)
	frames := runtime.CallersFrames(pc[:runtime.Callers(3, pc)])
	for {
		f, more := frames.Next()
		const recv = "internal/backend/cpu.(*Backend)."
		if i := strings.Index(f.Function, recv); i >= 0 {
			name, _, _ := strings.Cut(f.Function[i+len(recv):], ".") // a closure's method
			if name != "" && name[0] >= 'A' && name[0] <= 'Z' {
				op = name
				break
			}
		}
		if !more {
			break
		}
	}
	return op
}
