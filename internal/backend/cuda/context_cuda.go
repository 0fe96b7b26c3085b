//go:build cuda

package cuda

import (
	"errors"
	"fmt"
	"runtime"
	"sort"
	"sync"
	"unsafe"

	"github.com/loractl/loractl/kernels"
)

// Context is one GPU's primary context, owned by one goroutine locked to its OS thread: every
// driver call of the context runs there (do), so the driver's per-thread current context is
// always this one. It also owns the caching allocator.
type Context struct {
	Ordinal int
	calls   chan func()
	alloc   allocator    // used only on the owner thread
	mods    []*module    // the kernels (kernels.Modules), loaded at Open
	slots   argSlots     // launch argument memory, owner thread only
	blas    *blasHandle  // cuBLAS, created on the owner thread
	mu      sync.RWMutex // held for reading by each call in flight, for writing by Close
	closed  bool
}

// Open retains the primary context of device ordinal on a new owner thread.
func Open(ordinal int) (*Context, error) {
	if err := loadDriver(); err != nil {
		return nil, err
	}
	if err := loadBLAS(); err != nil {
		return nil, err
	}
	c := &Context{Ordinal: ordinal, calls: make(chan func())}
	ready := make(chan error)
	go c.own(ready)
	if err := <-ready; err != nil {
		return nil, fmt.Errorf("cuda:%d: %w", ordinal, err)
	}
	return c, nil
}

// own is the owner goroutine: it locks its OS thread, makes the context current and then runs
// the calls sent to it until the channel closes, when it frees the cache and releases the context.
func (c *Context) own(ready chan<- error) {
	runtime.LockOSThread()
	defer runtime.UnlockOSThread()
	_, dev, err := drvRetain(c.Ordinal)
	if err == nil {
		for _, km := range kernels.Modules {
			md, lerr := drvLoadModule(km.PTX, km.Entries)
			if lerr != nil {
				err = fmt.Errorf("load the %s kernels: %w", km.Name, lerr)
				break
			}
			c.mods = append(c.mods, md)
		}
		if err == nil {
			c.blas, err = blasCreate()
		}
		if err != nil {
			for _, md := range c.mods {
				md.unload()
			}
		}
		if err != nil {
			drvRelease(dev)
		}
	}
	ready <- err
	if err != nil {
		return
	}
	for f := range c.calls {
		f()
	}
	c.blas.destroy()
	for _, md := range c.mods {
		md.unload()
	}
	c.slots.free()
	c.alloc.releaseAll()
	drvRelease(dev)
}

// Launch runs kernel fn of the kernels package on a 1-D grid of grid blocks of block threads
// with shmem bytes of dynamic shared memory. Arguments are Ptr, int32, int64, uint32 or float32,
// in the kernel's order. Launches are asynchronous: Sync (and every download) waits for them
// and reports a failure that happened while they ran.
func (c *Context) Launch(fn string, grid, block, shmem int, args ...any) error {
	return c.do(func() error { return drvLaunch(&c.slots, c.mods, fn, grid, block, shmem, args) })
}

// The matrix products of the training step on row-major float32 matrices, through cuBLAS
// (column-major: a row-major M×N matrix is its N×M transpose, so each product is computed as
// its transpose).

// MatMulNT computes y (N, OC) = x (N, C)·wᵀ, plus the old y when acc; w (OC, C).
func (c *Context) MatMulNT(y, x, w Ptr, N, C, OC int, acc bool) error {
	beta := float32(0)
	if acc {
		beta = 1
	}
	// yᵀ (OC, N) = w·xᵀ
	return c.do(func() error { return c.blas.sgemm(true, false, OC, N, C, 1, w, C, x, C, beta, y, OC) })
}

// MatMulNN computes dx (N, C) += dy (N, OC)·w; w (OC, C).
func (c *Context) MatMulNN(dx, dy, w Ptr, N, C, OC int) error {
	// dxᵀ (C, N) += wᵀ·dyᵀ
	return c.do(func() error { return c.blas.sgemm(false, false, C, N, OC, 1, w, C, dy, OC, 1, dx, C) })
}

// MatMulTN computes dw (OC, C) += dyᵀ·x; dy (N, OC), x (N, C).
func (c *Context) MatMulTN(dw, dy, x Ptr, N, C, OC int) error {
	// dwᵀ (C, OC) += xᵀ·dy
	return c.do(func() error { return c.blas.sgemm(false, true, C, OC, N, 1, x, C, dy, OC, 1, dw, C) })
}

// Sync waits for every launched kernel and returns the first error of the device, if any.
func (c *Context) Sync() error { return c.do(drvSync) }

// Memset32 sets n 32-bit words at dst to v.
func (c *Context) Memset32(dst Ptr, v uint32, n int) error {
	if n == 0 {
		return nil
	}
	return c.do(func() error { return drvMemset32(dst, v, n) })
}

// do runs f on the owner thread and returns its error.
func (c *Context) do(f func() error) error {
	c.mu.RLock()
	defer c.mu.RUnlock()
	if c.closed {
		return errors.New("cuda: the context is closed")
	}
	done := make(chan error, 1)
	c.calls <- func() { done <- f() }
	return <-done
}

// Close waits for the device, frees every cached block and releases the context.
func (c *Context) Close() error {
	err := c.do(drvSync)
	c.mu.Lock()
	defer c.mu.Unlock()
	if c.closed {
		return nil
	}
	c.closed = true
	close(c.calls)
	return err
}

// Alloc returns a device block of at least n bytes from the cache, or from the driver when the
// cache has none of that size (after a failed driver allocation it empties the cache and tries
// once more).
func (c *Context) Alloc(n int) (Ptr, error) {
	var p Ptr
	err := c.do(func() (err error) { p, err = c.alloc.get(n); return err })
	return p, err
}

// Free returns a block from Alloc to the cache (the device memory stays allocated for reuse).
func (c *Context) Free(p Ptr) error { return c.do(func() error { return c.alloc.put(p) }) }

// AllocStats reports the driver allocations made so far, the blocks in use and the bytes cached.
func (c *Context) AllocStats() (driverAllocs, inUse int, cachedBytes int64) {
	c.do(func() error {
		driverAllocs, inUse, cachedBytes = c.alloc.driverAllocs, len(c.alloc.used), c.alloc.cachedBytes()
		return nil
	})
	return
}

// MemInfo returns the device's free and total memory.
func (c *Context) MemInfo() (free, total uint64, err error) {
	err = c.do(func() (err error) { free, total, err = drvMemInfo(); return err })
	return
}

// UploadF32 copies src to the device at dst.
func (c *Context) UploadF32(dst Ptr, src []float32) error {
	if len(src) == 0 {
		return nil
	}
	return c.do(func() error { return drvHtoD(dst, unsafe.Pointer(&src[0]), 4*len(src)) })
}

// DownloadF32 copies len(dst) floats from the device at src.
func (c *Context) DownloadF32(dst []float32, src Ptr) error {
	if len(dst) == 0 {
		return nil
	}
	return c.do(func() error { return drvDtoH(unsafe.Pointer(&dst[0]), src, 4*len(dst)) })
}

// UploadU16 copies 16-bit elements (bfloat16 or half bits) to the device.
func (c *Context) UploadU16(dst Ptr, src []uint16) error {
	if len(src) == 0 {
		return nil
	}
	return c.do(func() error { return drvHtoD(dst, unsafe.Pointer(&src[0]), 2*len(src)) })
}

// DownloadU16 copies len(dst) 16-bit elements from the device.
func (c *Context) DownloadU16(dst []uint16, src Ptr) error {
	if len(dst) == 0 {
		return nil
	}
	return c.do(func() error { return drvDtoH(unsafe.Pointer(&dst[0]), src, 2*len(dst)) })
}

// CopyD copies n bytes between device blocks.
func (c *Context) CopyD(dst, src Ptr, n int) error {
	if n == 0 {
		return nil
	}
	return c.do(func() error { return drvDtoD(dst, src, n) })
}

// allocator is a caching allocator: blocks are rounded up to a size class and, when freed, kept
// in a free list of that class, so a training step that allocates the same sizes every time
// calls cuMemAlloc only in its first step.
type allocator struct {
	free         map[int][]Ptr // size class → cached blocks
	used         map[Ptr]int   // block in use → its size class
	driverAllocs int
}

// sizeClass rounds n up: to 512 bytes below 1 MiB, to 2 MiB above.
func sizeClass(n int) int {
	if n <= 0 {
		n = 1
	}
	if n < 1<<20 {
		return (n + 511) &^ 511
	}
	return (n + (2<<20 - 1)) &^ (2<<20 - 1)
}

func (a *allocator) get(n int) (Ptr, error) {
	if a.used == nil {
		a.free, a.used = map[int][]Ptr{}, map[Ptr]int{}
	}
	sc := sizeClass(n)
	if l := a.free[sc]; len(l) > 0 {
		p := l[len(l)-1]
		a.free[sc] = l[:len(l)-1]
		a.used[p] = sc
		return p, nil
	}
	p, err := drvAlloc(sc)
	var ce *Error
	if errors.As(err, &ce) && ce.Code == ErrOutOfMemory && a.cachedBytes() > 0 {
		a.releaseCached()
		p, err = drvAlloc(sc)
	}
	if err != nil {
		return 0, fmt.Errorf("allocate %d bytes: %w", sc, err)
	}
	a.driverAllocs++
	a.used[p] = sc
	return p, nil
}

func (a *allocator) put(p Ptr) error {
	sc, ok := a.used[p]
	if !ok {
		return fmt.Errorf("cuda: Free(%#x): not a block in use", uint64(p))
	}
	delete(a.used, p)
	a.free[sc] = append(a.free[sc], p)
	return nil
}

func (a *allocator) cachedBytes() int64 {
	var n int64
	for sc, l := range a.free {
		n += int64(sc) * int64(len(l))
	}
	return n
}

// releaseCached returns every cached block to the driver.
func (a *allocator) releaseCached() {
	for sc, l := range a.free {
		for _, p := range l {
			drvFree(p)
		}
		delete(a.free, sc)
	}
}

// releaseAll frees cached and in-use blocks (the context is going away), in address order.
func (a *allocator) releaseAll() {
	a.releaseCached()
	ps := make([]Ptr, 0, len(a.used))
	for p := range a.used {
		ps = append(ps, p)
	}
	sort.Slice(ps, func(i, j int) bool { return ps[i] < ps[j] })
	for _, p := range ps {
		drvFree(p)
		delete(a.used, p)
	}
}
