// Package cpu is the reference backend: plain Go loops over float32 slices, written to be read.
// Every other backend is checked against it op by op. Matrix multiplication (sgemm.go) is
// cache-blocked; it and the larger loops are split across the persistent worker pool of
// pool.go, so that each output is summed by one goroutine in a fixed order.
package cpu

import (
	"fmt"
	"runtime"

	"github.com/loractl/loractl/internal/backend"
)

// Buffer is the CPU backend's storage: a float32 slice in ordinary memory.
type Buffer struct {
	data []float32 // (n,)
}

// Len returns the number of float32 elements in b.
func (b *Buffer) Len() int { return len(b.data) }

// Data returns the elements of b. The slice aliases b's storage.
func (b *Buffer) Data() []float32 { return b.data }

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
		cb.data = nil
	}
}

// Upload copies src into dst.
func (be *Backend) Upload(dst backend.Buffer, src []float32) error {
	d := data(dst)
	if len(d) != len(src) {
		return fmt.Errorf("cpu: Upload: buffer holds %d elements, source has %d", len(d), len(src))
	}
	copy(d, src)
	return nil
}

// Download copies src into dst.
func (be *Backend) Download(dst []float32, src backend.Buffer) error {
	s := data(src)
	if len(s) != len(dst) {
		return fmt.Errorf("cpu: Download: buffer holds %d elements, destination has %d", len(s), len(dst))
	}
	copy(dst, s)
	return nil
}

// data returns the slice behind a CPU buffer; nil stays nil (an absent bias).
func data(b backend.Buffer) []float32 {
	if b == nil {
		return nil
	}
	cb, ok := b.(*Buffer)
	if !ok {
		panic(fmt.Sprintf("cpu: got a %T buffer, which another backend allocated", b))
	}
	if cb == nil {
		return nil
	}
	return cb.data
}

// need checks that a buffer argument holds at least n elements.
func need(op, name string, s []float32, n int) {
	if len(s) < n {
		panic(fmt.Sprintf("cpu: %s: %s has %d elements, the dimensions need %d", op, name, len(s), n))
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
