package cpu

import (
	"fmt"
	"math/rand/v2"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/loractl/loractl/internal/backend"
)

// TestParallelForCovers: every index of [0, n) is visited exactly once, chunks start on
// multiples of align, and no more than `workers` chunks run.
func TestParallelForCovers(t *testing.T) {
	for _, n := range []int{0, 1, 2, 7, 16, 17, 100, 1000, 4099} {
		for _, align := range []int{0, 1, 4, 16} {
			for _, workers := range []int{1, 2, 3, 4, 9} {
				hits := make([]atomic.Int32, n)
				var chunks atomic.Int32
				parallelFor(n, align, workers, func(lo, hi int) {
					chunks.Add(1)
					if a := max(align, 1); lo%a != 0 {
						t.Errorf("n=%d align=%d workers=%d: chunk starts at %d", n, align, workers, lo)
					}
					for i := lo; i < hi; i++ {
						hits[i].Add(1)
					}
				})
				if c := chunks.Load(); int(c) > max(workers, 1) {
					t.Errorf("n=%d align=%d workers=%d: %d chunks", n, align, workers, c)
				}
				for i := range hits {
					if h := hits[i].Load(); h != 1 {
						t.Fatalf("n=%d align=%d workers=%d: index %d visited %d times", n, align, workers, i, h)
					}
				}
			}
		}
	}
}

// within fails the test if f does not return within d (a deadlock).
func within(t *testing.T, d time.Duration, f func()) {
	t.Helper()
	done := make(chan struct{})
	go func() {
		defer close(done)
		f()
	}()
	select {
	case <-done:
	case <-time.After(d):
		t.Fatal("parallel calls did not finish: deadlock")
	}
}

// TestParallelForNestedAndConcurrent: a body that itself calls parallelFor, and many goroutines
// calling at once, finish with the right results (calls that find the pool busy run their chunks
// on fresh goroutines).
func TestParallelForNestedAndConcurrent(t *testing.T) {
	within(t, 30*time.Second, func() {
		var total atomic.Int64
		parallelFor(64, 1, 4, func(lo, hi int) {
			for i := lo; i < hi; i++ {
				parallelFor(100, 1, 3, func(a, b int) { total.Add(int64(b - a)) })
			}
		})
		if got := total.Load(); got != 6400 {
			t.Errorf("nested: %d indices, want 6400", got)
		}
	})
	within(t, 60*time.Second, func() {
		var wg sync.WaitGroup
		for g := range 8 {
			wg.Add(1)
			go func() {
				defer wg.Done()
				s := make([]int, 1000+g)
				for rep := range 200 {
					parallelFor(len(s), 16, 2+rep%3, func(lo, hi int) {
						for i := lo; i < hi; i++ {
							s[i]++
						}
					})
				}
				for i, v := range s {
					if v != 200 {
						t.Errorf("goroutine %d: index %d written %d times, want 200", g, i, v)
						return
					}
				}
			}()
		}
		wg.Wait()
	})
}

// TestParallelForPanicLeavesPoolUsable: a panic in the caller's own chunk propagates after the
// helpers are done, and the next call works.
func TestParallelForPanicLeavesPoolUsable(t *testing.T) {
	func() {
		defer func() {
			if recover() == nil {
				t.Error("the panic was lost")
			}
		}()
		parallelFor(10, 1, 2, func(lo, hi int) {
			if lo == 0 {
				panic("boom")
			}
		})
	}()
	within(t, 10*time.Second, func() {
		var n atomic.Int32
		parallelFor(10, 1, 2, func(lo, hi int) { n.Add(int32(hi - lo)) })
		if n.Load() != 10 {
			t.Errorf("after a panic: %d indices, want 10", n.Load())
		}
	})
}

// poolOpsShapes are shapes at which each op below is split over at least 2 workers.
const (
	poN, poC       = 512, 256  // rows × columns for the norms
	poE            = 3 << 17   // elements for the elementwise ops
	poNH, poD      = 8, 64     // RoPE heads
	poTok, poTable = 2048, 100 // EmbeddingBackward tokens, table rows
)

// poolOpsRun runs the ops that were parallelised on the pool (other than the matrix multiply,
// cross-entropy and attention, which trainOpsRun covers) and returns their outputs. ops, when
// not nil, gets a closure per op for the allocation test.
func poolOpsRun(be *Backend, seed uint64, ops map[string]func()) [][]float32 {
	r := rand.New(rand.NewPCG(seed, 5))
	var outs [][]float32
	keep := func(bs ...backend.Buffer) {
		for _, b := range bs {
			outs = append(outs, append([]float32(nil), b.(*Buffer).Data()...))
		}
	}
	run := func(name string, f func(), out ...backend.Buffer) {
		f()
		keep(out...)
		if ops != nil {
			ops[name] = f
		}
	}
	x, w := buf(be, randn(r, poN*poC)), buf(be, randn(r, poC)) // (N, C), (C)
	dy := buf(be, randn(r, poN*poC))                           // (N, C)
	h := be.Alloc(poN * poC)                                   // (N, C)
	run("RMSNormForward", func() { be.RMSNormForward(h, x, w, poN, poC, 1e-5) }, h)
	dx, dw := buf(be, randn(r, poN*poC)), buf(be, randn(r, poC)) // += into random values
	run("RMSNormBackward", func() { be.RMSNormBackward(dx, dw, dy, x, w, poN, poC, 1e-5) }, dx, dw)

	g, u, o := buf(be, randn(r, poE)), buf(be, randn(r, poE)), be.Alloc(poE) // (E) each
	run("SwiGLUForward", func() { be.SwiGLUForward(o, g, u, poE) }, o)
	dg, du := buf(be, randn(r, poE)), buf(be, randn(r, poE))
	run("SwiGLUBackward", func() { be.SwiGLUBackward(dg, du, o, g, u, poE) }, dg, du)
	run("AddForward", func() { be.AddForward(o, g, u, poE) }, o)
	run("Axpy", func() { be.Axpy(g, u, 0.37, poE) }, g)
	run("Zero", func() { be.Zero(u, poE-5) }, u)

	inv := make([]float32, poD/2) // (D/2)
	for i := range inv {
		inv[i] = float32(1 / (1 + float64(i)))
	}
	invb := buf(be, inv)
	pos := make([]int, poN) // (N)
	for i := range pos {
		pos[i] = i % 97
	}
	q := buf(be, randn(r, poN*poNH*poD)) // (N, NH, D)
	run("RoPEForwardPos", func() { be.RoPEForwardPos(q, invb, pos, poN, poNH, poD) }, q)
	run("RoPEBackwardPos", func() { be.RoPEBackwardPos(q, invb, pos, poN, poNH, poD) }, q)

	tokens := make([]int, poTok) // (N)
	for i := range tokens {
		tokens[i] = r.IntN(poTable)
	}
	dtab, dout := buf(be, randn(r, poTable*poC)), buf(be, randn(r, poTok*poC)) // (V, C), (N, C)
	run("EmbeddingBackward", func() { be.EmbeddingBackward(dtab, dout, tokens, poC) }, dtab)
	emb := be.Alloc(poTok * poC) // (N, C)
	run("EmbeddingForward", func() { be.EmbeddingForward(emb, dtab, tokens, poC) }, emb)
	return outs
}

// TestPoolOpsThreadIndependent: the ops split over the pool give bitwise-identical results with
// 1, 2 and 3 workers.
func TestPoolOpsThreadIndependent(t *testing.T) {
	one := New()
	one.SetThreads(1)
	want := poolOpsRun(one, 11, nil)
	for _, n := range []int{2, 3} {
		be := New()
		be.SetThreads(n)
		got := poolOpsRun(be, 11, nil)
		for i := range want {
			for j := range want[i] {
				if want[i][j] != got[i][j] {
					t.Fatalf("%d threads: output %d, index %d: %g, with 1 thread %g", n, i, j, got[i][j], want[i][j])
				}
			}
		}
	}
}

// TestPoolOpsAllocs: the training step's elementwise, norm, RoPE, cross-entropy and attention
// ops allocate nothing once warm, also when they run on the pool.
func TestPoolOpsAllocs(t *testing.T) {
	if raceEnabled {
		t.Skip("the race detector makes sync.Pool drop items")
	}
	be := New()
	be.SetThreads(2)
	ops := map[string]func(){}
	poolOpsRun(be, 1, ops)

	r := rand.New(rand.NewPCG(2, 2))
	N, V := 64, 4096
	logits := buf(be, randn(r, N*V))
	targets := make([]int, N)
	for i := range targets {
		targets[i] = r.IntN(V)
	}
	losses := be.Alloc(N)
	ops["CrossEntropyForward"] = func() { be.CrossEntropyForward(losses, logits, targets, N, V) }
	ops["CrossEntropyBackward"] = func() { be.CrossEntropyBackward(logits, logits, targets, N, V, 0.1) }
	B, T, NH, NKV, D := 2, 64, 4, 2, 32
	q, k, v := buf(be, randn(r, B*T*NH*D)), buf(be, randn(r, B*T*NKV*D)), buf(be, randn(r, B*T*NKV*D))
	out, att := be.Alloc(B*T*NH*D), be.Alloc(B*NH*T*T)
	dq, dk, dv := be.Alloc(B*T*NH*D), be.Alloc(B*T*NKV*D), be.Alloc(B*T*NKV*D)
	ops["AttentionTrainForward"] = func() { be.AttentionTrainForward(out, att, q, k, v, nil, B, T, NH, NKV, D) }
	ops["AttentionBackward"] = func() { be.AttentionBackward(dq, dk, dv, out, att, q, k, v, nil, B, T, NH, NKV, D) }
	for name, f := range ops {
		f() // warm the argument and scratch pools
		if n := testing.AllocsPerRun(20, f); n != 0 {
			t.Errorf("%s: %v allocations per call, want 0", name, n)
		}
	}
}

// BenchmarkParallelForDispatch times an empty 2-way parallel call: the pool's hand-off cost.
func BenchmarkParallelForDispatch(b *testing.B) {
	for _, workers := range []int{1, 2} {
		b.Run(fmt.Sprint(workers), func(b *testing.B) {
			var body rangeFunc = func(lo, hi int) {}
			for b.Loop() {
				forRange(2, 1, workers, body)
			}
		})
	}
}
