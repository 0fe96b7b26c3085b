// Package cpu is the reference backend: plain Go loops over float32 slices, written to be read.
// Every other backend is checked against it op by op. Matrix multiplication (sgemm.go) is
// cache-blocked; it and the larger loops are split across the persistent worker pool of
// pool.go, so that each output is summed by one goroutine in a fixed order. Frozen weights may
// be kept as bfloat16 bits (backend.WeightStore, bf16.go); the ops that read them widen exactly
// and compute in float32.
package cpu

import (
	"fmt"
	"runtime"

	"github.com/loractl/loractl/internal/backend"
	"github.com/loractl/loractl/internal/backend/cpu/gemm"
)

// Buffer is the CPU backend's storage: a float32 slice in ordinary memory, or, for a frozen
// weight allocated with AllocWeight(n, backend.BF16), a slice of bfloat16 bits (bf16.go).
type Buffer struct {
	data []float32      // (n,) F32 storage
	h    []uint16       // (n,) BF16 storage; non-nil only for a BF16 buffer, whose data is nil
	p    backend.Packed // a packed (quantized) weight (packed.go); data and h are nil
}

// Len returns the number of elements in b.
func (b *Buffer) Len() int {
	if b.p != nil {
		return b.p.Len()
	}
	if b.h != nil {
		return len(b.h)
	}
	return len(b.data)
}

// Data returns the elements of an F32 buffer. The slice aliases b's storage. It panics for a
// BF16 buffer (see BF16).
func (b *Buffer) Data() []float32 {
	if b.h != nil {
		panic("cpu: Data of a BF16 buffer; use BF16 for its bits or Backend.Download for float32 values")
	}
	return b.data
}

// BF16 returns the bfloat16 bits of a BF16 buffer (aliasing its storage), or nil for an F32
// buffer.
func (b *Buffer) BF16() []uint16 { return b.h }

// Backend is the pure-Go CPU backend. Its zero value is not usable; call New.
// A Backend is safe for concurrent use by multiple goroutines, as long as they do not write
// to the same buffers.
type Backend struct {
	threads int // worker goroutines per op; 0 means runtime.GOMAXPROCS(0)
}

// New returns a CPU backend that uses GOMAXPROCS worker goroutines for large ops.
func New() *Backend { return &Backend{} }

var _ backend.Backend = (*Backend)(nil)

// Name returns "cpu".
func (be *Backend) Name() string { return "cpu" }

// SetThreads sets the number of worker goroutines used by large ops; n ≤ 0 restores the
// default, runtime.GOMAXPROCS(0). Results do not depend on the thread count.
func (be *Backend) SetThreads(n int) {
	if n < 0 {
		n = 0
	}
	be.threads = n
}

// Threads returns the number of worker goroutines large ops may use.
func (be *Backend) Threads() int {
	if be.threads > 0 {
		return be.threads
	}
	return runtime.GOMAXPROCS(0)
}

// Alloc returns a zero-filled buffer of n elements.
func (be *Backend) Alloc(n int) backend.Buffer {
	if n < 0 {
		panic(fmt.Sprintf("cpu: Alloc(%d): negative length", n))
	}
	return &Buffer{data: make([]float32, n)}
}

// Copy copies n elements: dst[dstOff:dstOff+n] = src[srcOff:srcOff+n].
func (be *Backend) Copy(dst backend.Buffer, dstOff int, src backend.Buffer, srcOff, n int) {
	d, s := data(dst), data(src)
	if n < 0 || dstOff < 0 || srcOff < 0 || dstOff+n > len(d) || srcOff+n > len(s) {
		panic(fmt.Sprintf("cpu: Copy(dstOff=%d, srcOff=%d, n=%d) out of range for buffers of %d and %d elements", dstOff, srcOff, n, len(d), len(s)))
	}
	copy(d[dstOff:dstOff+n], s[srcOff:srcOff+n])
}

// Free drops the reference to b's storage; the garbage collector reclaims it.
func (be *Backend) Free(b backend.Buffer) {
	if cb, ok := b.(*Buffer); ok {
		cb.data, cb.h, cb.p = nil, nil, nil
	}
}

// Upload copies src into dst. A BF16 buffer is an error: use UploadBF16 (rounding float32 to
// bfloat16 here would change the weights silently).
func (be *Backend) Upload(dst backend.Buffer, src []float32) error {
	if isBF16(dst) {
		return fmt.Errorf("cpu: Upload: the buffer holds BF16 weights; upload their bits with UploadBF16")
	}
	if isPacked(dst) {
		return fmt.Errorf("cpu: Upload: the buffer holds a packed (quantized) frozen weight; upload a new one with UploadPacked")
	}
	d := data(dst)
	if len(d) != len(src) {
		return fmt.Errorf("cpu: Upload: buffer holds %d elements, source has %d", len(d), len(src))
	}
	copy(d, src)
	return nil
}

// Download copies src into dst; a BF16 buffer is widened to float32, exactly.
func (be *Backend) Download(dst []float32, src backend.Buffer) error {
	if cb := cpuBuffer(src); cb != nil && cb.p != nil {
		if cb.p.Len() != len(dst) {
			return fmt.Errorf("cpu: Download: buffer holds %d elements, destination has %d", cb.p.Len(), len(dst))
		}
		cb.p.DequantizeRange(dst, 0, len(dst))
		return nil
	}
	s, h := weight(src)
	if h != nil {
		if len(h) != len(dst) {
			return fmt.Errorf("cpu: Download: buffer holds %d elements, destination has %d", len(h), len(dst))
		}
		gemm.Widen(dst, h)
		return nil
	}
	if len(s) != len(dst) {
		return fmt.Errorf("cpu: Download: buffer holds %d elements, destination has %d", len(s), len(dst))
	}
	copy(dst, s)
	return nil
}

// data returns the slice behind an F32 CPU buffer; nil stays nil (an absent bias). A BF16
// buffer panics, naming the op that was given it: only the ops that say so accept one (see
// weight).
func data(b backend.Buffer) []float32 {
	cb := cpuBuffer(b)
	if cb == nil {
		return nil
	}
	if cb.h != nil {
		panic(bf16Misuse())
	}
	if cb.p != nil {
		panic(packedMisuse())
	}
	return cb.data
}

// cpuBuffer returns b as a CPU buffer (nil for nil), panicking for another backend's buffer.
func cpuBuffer(b backend.Buffer) *Buffer {
	if b == nil {
		return nil
	}
	cb, ok := b.(*Buffer)
	if !ok {
		panic(fmt.Sprintf("cpu: got a %T buffer, which another backend allocated", b))
	}
	return cb
}

// need checks that a buffer argument holds at least n elements.
func need(op, name string, s []float32, n int) { needN(op, name, len(s), n) }

// needN checks that a buffer argument of `have` elements holds at least n.
func needN(op, name string, have, n int) {
	if have < n {
		panic(fmt.Sprintf("cpu: %s: %s has %d elements, the dimensions need %d", op, name, have, n))
	}
}

// minWorkPerThread is the amount of work (multiply-adds, roughly) below which an extra
// goroutine costs more than it saves: waking a sleeping thread costs 50-100 µs on the
// development VMs, about as long as 2^17 scalar multiply-adds.
const minWorkPerThread = 1 << 17

// workers returns how many goroutines to use for an op of the given total work.
func (be *Backend) workers(work int) int {
	n := be.Threads()
	if m := work / minWorkPerThread; m < n {
		n = m
	}
	if n < 1 {
		n = 1
	}
	return n
}
