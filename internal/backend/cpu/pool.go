package cpu

import (
	"runtime"
	"sync"
	"sync/atomic"
	"time"

	"github.com/loractl/loractl/internal/freelist"
)

// This file holds the persistent worker pool behind parallelFor and forRange.
//
// Waking a sleeping goroutine costs 50–100 µs on the development VMs, as long as a small op
// takes. So the pool's helper goroutines are started once and kept: a parallel call splits its
// range once into one chunk per worker, hands a chunk to each helper, runs the first chunk
// itself and waits for the rest. An idle helper spins (yielding the processor) for spinFor
// before it parks on a channel, so back-to-back ops of a training step find it awake.
//
// One call at a time owns the helpers. A call that finds them busy (a concurrent call from
// another goroutine, or a nested call from inside a loop body) does not wait: it runs its
// chunks on fresh goroutines, as parallelFor did before the pool. Results are the same either
// way, since the split depends only on (n, align, workers).

// spinFor is how long an idle helper, or a caller waiting for its helpers, polls before it
// parks.
const spinFor = 200 * time.Microsecond

// maxHelpers bounds the helper goroutines of the pool (workers beyond it run on fresh
// goroutines, like concurrent calls).
const maxHelpers = 255

// ranger is the body of a parallel loop: run handles the indices [lo, hi). Ops implement it on
// a pointer to an argument struct taken from an argPool, so that handing the body to the
// helpers does not allocate.
type ranger interface{ run(lo, hi int) }

// rangeFunc adapts a function to ranger (a func value converts to an interface without
// allocating; the closure itself is allocated by its creator).
type rangeFunc func(lo, hi int)

func (f rangeFunc) run(lo, hi int) { f(lo, hi) }

// parallelFor splits [0, n) into at most `workers` contiguous chunks, each a multiple of align
// long (except the last), and calls fn(lo, hi) for each chunk: the first on the calling
// goroutine, the others on the pool's helpers. It returns when all chunks are done. The chunk
// bounds depend only on n, align and workers.
func parallelFor(n, align, workers int, fn func(lo, hi int)) {
	forRange(n, align, workers, rangeFunc(fn))
}

// forRange is parallelFor with the body as a ranger.
func forRange(n, align, workers int, body ranger) {
	if n <= 0 {
		return
	}
	if align < 1 {
		align = 1
	}
	units := (n + align - 1) / align // number of align-sized pieces
	workers = min(workers, units)
	if workers <= 1 {
		body.run(0, n)
		return
	}
	if workers-1 > maxHelpers || !thePool.mu.TryLock() {
		spawnRange(n, align, units, workers, body)
		return
	}
	thePool.run(n, align, units, workers, body)
}

// chunk returns the bounds of chunk w of `workers` over [0, n) in units of align.
func chunk(n, align, units, workers, w int) (lo, hi int) {
	lo = units * w / workers * align
	hi = min(units*(w+1)/workers*align, n)
	return lo, hi
}

// spawnRange runs the chunks on new goroutines (the pool is busy).
func spawnRange(n, align, units, workers int, body ranger) {
	var wg sync.WaitGroup
	for w := 1; w < workers; w++ {
		lo, hi := chunk(n, align, units, workers, w)
		wg.Add(1)
		go func() {
			defer wg.Done()
			body.run(lo, hi)
		}()
	}
	lo, hi := chunk(n, align, units, workers, 0)
	body.run(lo, hi)
	wg.Wait()
}

// pool is the set of helper goroutines; thePool is the only one.
type pool struct {
	mu      sync.Mutex    // held by the call that owns the helpers, for the whole call
	helpers []*helper     // started lazily, never stopped
	pending atomic.Int32  // chunks handed out and not yet finished
	exited  atomic.Int32  // helpers of the current call that are completely done with it
	parked  atomic.Bool   // the caller is parked on done
	done    chan struct{} // (cap 1) wakes a parked caller
}

var thePool = pool{done: make(chan struct{}, 1)}

// helper is one pool goroutine and its mailbox. body, lo and hi are written by the owning call
// before seq is incremented and read by the helper after it sees the increment.
type helper struct {
	seq    atomic.Uint64 // number of chunks handed to this helper
	parked atomic.Bool   // the helper is parked on wake
	wake   chan struct{} // (cap 1)
	body   ranger
	lo, hi int
}

// run hands chunks 1..workers−1 to helpers, runs chunk 0 and waits. p.mu is held on entry and
// released on return, also when the body panics on the calling goroutine (after the helpers are
// done, so that the next call finds them free).
func (p *pool) run(n, align, units, workers int, body ranger) {
	defer p.mu.Unlock()
	for len(p.helpers) < workers-1 {
		h := &helper{wake: make(chan struct{}, 1)}
		p.helpers = append(p.helpers, h)
		go h.loop(p)
	}
	p.pending.Store(int32(workers - 1))
	p.exited.Store(0)
	defer p.wait(int32(workers - 1))
	for w := 1; w < workers; w++ {
		h := p.helpers[w-1]
		h.body = body
		h.lo, h.hi = chunk(n, align, units, workers, w)
		h.seq.Add(1)
		if h.parked.CompareAndSwap(true, false) {
			h.wake <- struct{}{}
		}
	}
	lo, hi := chunk(n, align, units, workers, 0)
	body.run(lo, hi)
}

// wait returns when every handed-out chunk is finished: it spins for spinFor, then parks.
// Before it returns it also waits until each of the call's n helpers has left finish, so that
// no helper of this call can touch parked or done once the next call has started (a late
// CompareAndSwap on the next call's parked flag would send it a stale wake-up, and it would
// return before its helpers had run).
func (p *pool) wait(n int32) {
	defer func() {
		for p.exited.Load() != n {
			runtime.Gosched() // the last helper is a few instructions from the end of finish
		}
	}()
	if spinUntil(func() bool { return p.pending.Load() == 0 }) {
		return
	}
	p.parked.Store(true)
	if p.pending.Load() == 0 && p.parked.CompareAndSwap(true, false) {
		return
	}
	<-p.done
}

// finish marks one chunk done and wakes the caller if it parked and this was the last chunk.
func (p *pool) finish() {
	if p.pending.Add(-1) == 0 && p.parked.CompareAndSwap(true, false) {
		p.done <- struct{}{}
	}
	p.exited.Add(1) // last touch of the pool's state for this call
}

// loop runs the chunks handed to h, forever.
func (h *helper) loop(p *pool) {
	var seen uint64
	for {
		seen = h.next(seen)
		h.body.run(h.lo, h.hi)
		h.body = nil // drop the reference to the op's arguments
		p.finish()
	}
}

// next waits until h.seq differs from seen and returns it: it spins for spinFor, then parks.
// The protocol with run's CompareAndSwap: whoever flips parked from true to false owns the
// wake-up, so a wake is neither lost nor sent twice.
//
// A wake-up never counts by itself: next returns only once seq has moved, and otherwise waits
// again, so that even a wake-up left over from an earlier round cannot make the helper run a
// chunk twice (its body would be the nil it left behind).
func (h *helper) next(seen uint64) uint64 {
	for {
		if spinUntil(func() bool { return h.seq.Load() != seen }) {
			return h.seq.Load()
		}
		h.parked.Store(true)
		if h.seq.Load() != seen && h.parked.CompareAndSwap(true, false) {
			return h.seq.Load()
		}
		<-h.wake
		if s := h.seq.Load(); s != seen {
			return s
		}
	}
}

// spinUntil polls cond for about spinFor, yielding the processor between polls, and reports
// whether it became true.
func spinUntil(cond func() bool) bool {
	var start time.Time
	for i := 0; ; i++ {
		if cond() {
			return true
		}
		if i%32 == 31 {
			if i == 31 {
				start = time.Now()
			} else if time.Since(start) > spinFor {
				return false
			}
			runtime.Gosched()
		}
	}
}

// argPool recycles the argument structs of parallel ops: an op takes one, fills it, passes it
// to forRange as the loop body and puts it back, so that the call does not allocate. (A
// freelist, not a sync.Pool: it survives garbage collections and does not allocate when
// structs move between threads.)
type argPool[T any] struct{ l freelist.List[T] }

// get returns a recycled or new *T; its fields hold whatever the last user left (put clears).
func (a *argPool[T]) get() *T {
	if v := a.l.Get(); v != nil {
		return v
	}
	return new(T)
}

// put clears v (dropping its references to buffers) and recycles it.
func (a *argPool[T]) put(v *T) {
	var zero T
	*v = zero
	a.l.Put(v)
}

// f32Pool recycles float32 scratch slices (per-row sums, score rows).
var f32Pool freelist.List[[]float32]

// getF32 returns a pooled scratch slice of length n (contents undefined): a recycled one with
// room for n if there is one, else a new one.
func getF32(n int) *[]float32 {
	if sp := f32Pool.GetIf(func(s *[]float32) bool { return cap(*s) >= n }); sp != nil {
		*sp = (*sp)[:n]
		return sp
	}
	s := make([]float32, n, max(n, 256))
	return &s
}

// putF32 recycles a slice from getF32.
func putF32(sp *[]float32) { f32Pool.Put(sp) }
