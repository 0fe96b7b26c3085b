package cpu

import (
	"math/rand/v2"
	"testing"

	"github.com/loractl/loractl/internal/backend"
)

// trainOpsRun runs every training op once at shapes large enough to be split across
// goroutines and returns all outputs, in a fixed order.
func trainOpsRun(be *Backend, seed uint64) [][]float32 {
	r := rand.New(rand.NewPCG(seed, 3))
	var outs [][]float32
	keep := func(b backend.Buffer) { outs = append(outs, append([]float32(nil), b.(*Buffer).Data()...)) }

	// MatMulBackward: N·C·OC = 2^20 multiply-adds.
	N, C, OC := 64, 128, 128
	dy, x, w := buf(be, randn(r, N*OC)), buf(be, randn(r, N*C)), buf(be, randn(r, OC*C)) // (N, OC), (N, C), (OC, C)
	dx, dw, db := buf(be, randn(r, N*C)), buf(be, randn(r, OC*C)), buf(be, randn(r, OC)) // += into random values
	be.MatMulBackward(dx, dw, db, dy, x, w, N, C, OC)
	keep(dx)
	keep(dw)
	keep(db)

	// Cross-entropy over a 4096-token vocabulary.
	V := 4096
	logits := buf(be, randn(r, N*V)) // (N, V)
	targets := make([]int, N)        // (N,)
	for i := range targets {
		targets[i] = r.IntN(V)
	}
	targets[3] = backend.IgnoreIndex
	losses := be.Alloc(N) // (N,)
	be.CrossEntropyForward(losses, logits, targets, N, V)
	keep(losses)
	be.CrossEntropyBackward(logits, logits, targets, N, V, 1.0/float32(N-1))
	keep(logits)

	// Attention: B·NH·T²·D = 2^21.
	B, T, NH, NKV, D := 2, 64, 4, 2, 32
	seg := make([]int, B*T) // (B·T,) three packed samples per row
	for i := range seg {
		seg[i] = (i % T) / 25
	}
	q, k, v := buf(be, randn(r, B*T*NH*D)), buf(be, randn(r, B*T*NKV*D)), buf(be, randn(r, B*T*NKV*D))
	out, att := be.Alloc(B*T*NH*D), be.Alloc(B*NH*T*T) // (B, T, NH·D), (B, NH, T, T)
	be.AttentionTrainForward(out, att, q, k, v, seg, B, T, NH, NKV, D)
	keep(out)
	keep(att)
	dout := buf(be, randn(r, B*T*NH*D)) // (B, T, NH·D)
	dq, dk, dv := be.Alloc(B*T*NH*D), be.Alloc(B*T*NKV*D), be.Alloc(B*T*NKV*D)
	be.AttentionBackward(dq, dk, dv, dout, att, q, k, v, seg, B, T, NH, NKV, D)
	keep(dq)
	keep(dk)
	keep(dv)
	return outs
}

// TestTrainOpsThreadIndependent checks that the training ops give bitwise-identical results
// with one and with four worker goroutines (the basis of reproducible training on the CPU).
// Their correctness is checked by the conformance suite.
func TestTrainOpsThreadIndependent(t *testing.T) {
	one, four := New(), New()
	one.SetThreads(1)
	four.SetThreads(4)
	if four.workers(64*128*128) < 2 {
		t.Fatal("the shapes are too small to be split; enlarge them")
	}
	a, b := trainOpsRun(one, 7), trainOpsRun(four, 7)
	for i := range a {
		for j := range a[i] {
			if a[i][j] != b[i][j] {
				t.Fatalf("output %d, index %d: %g with 1 thread, %g with 4", i, j, a[i][j], b[i][j])
			}
		}
	}
}

// BenchmarkMatMulBackward times dx and dw of a 768→768 Linear layer over 256 tokens.
func BenchmarkMatMulBackward(b *testing.B) {
	be := New()
	r := rand.New(rand.NewPCG(1, 1))
	N, C, OC := 256, 768, 768
	dy, x, w := buf(be, randn(r, N*OC)), buf(be, randn(r, N*C)), buf(be, randn(r, OC*C))
	dx, dw := be.Alloc(N*C), be.Alloc(OC*C)
	for b.Loop() {
		be.MatMulBackward(dx, dw, nil, dy, x, w, N, C, OC)
	}
	b.ReportMetric(float64(2*2*N*C*OC)*float64(b.N)/b.Elapsed().Seconds()/1e9, "GFLOP/s")
}

// BenchmarkMatMulForwardTrainShape is the same layer's forward, for comparison.
func BenchmarkMatMulForwardTrainShape(b *testing.B) {
	be := New()
	r := rand.New(rand.NewPCG(1, 1))
	N, C, OC := 256, 768, 768
	y, x, w := be.Alloc(N*OC), buf(be, randn(r, N*C)), buf(be, randn(r, OC*C))
	for b.Loop() {
		be.MatMulForward(y, x, w, nil, N, C, OC)
	}
	b.ReportMetric(float64(2*N*C*OC)*float64(b.N)/b.Elapsed().Seconds()/1e9, "GFLOP/s")
}
