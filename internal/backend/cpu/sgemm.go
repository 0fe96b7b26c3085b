package cpu

import (
	"github.com/loractl/loractl/internal/backend"
	"github.com/loractl/loractl/internal/backend/cpu/gemm"
)

// This file holds the matrix products of the CPU backend. They all go through the gemm
// package: a packed, cache-blocked driver with assembly micro-kernels (AVX-512 / AVX2+FMA on
// amd64, pure Go elsewhere), split once per call over the worker pool.
//
// Summation order (see package gemm): every output element is accumulated over k in fixed
// blocks, in order, by the same kernel whatever the number of rows or threads; the bias is
// added at the end. So a token's result is bit-identical whether it is computed alone
// (generation) or inside a long sequence (prefill, evaluation), and for any thread count.

// MatMulForward computes out = x · wᵀ + bias.
// out (N, OC), x (N, C), w (OC, C) F32, BF16 or packed, bias (OC) or nil.
func (be *Backend) MatMulForward(out, x, w, bias backend.Buffer, N, C, OC int) {
	o, xs, bs := data(out), data(x), data(bias)
	wf, wh, sp := be.expand(w)
	if sp != nil {
		defer putF32(sp)
	}
	need("MatMulForward", "out", o, N*OC)
	need("MatMulForward", "x", xs, N*C)
	needN("MatMulForward", "w", weightLen(wf, wh), OC*C)
	if bs != nil {
		need("MatMulForward", "bias", bs, OC)
	}
	be.sgemmNT(o, xs, matView(wf, wh, C, true), bs, N, C, OC)
}

// sgemmNT computes y = x · wᵀ (+ bias): y (N, M), x (N, K), w (M, K) as the view of its
// transpose, bias (M) or nil.
func (be *Backend) sgemmNT(y, x []float32, wT gemm.Mat, bias []float32, N, K, M int) {
	if N == 0 || M == 0 {
		return
	}
	gemm.Mul(gemmRun, be.workers(N*K*M), y, M, gemm.RowMajor(x, K), wT, N, M, K, false)
	if bias != nil {
		bias = bias[:M]
		for n := 0; n < N; n++ {
			yr := y[n*M : (n+1)*M] // (M,)
			for m, b := range bias {
				yr[m] += b
			}
		}
	}
}

// MatMulForwardAcc computes out += x · wᵀ. out (N, OC), x (N, C), w (OC, C) (F32, BF16 or packed).
func (be *Backend) MatMulForwardAcc(out, x, w backend.Buffer, N, C, OC int) {
	o, xs := data(out), data(x)
	wf, wh, sp := be.expand(w)
	if sp != nil {
		defer putF32(sp)
	}
	need("MatMulForwardAcc", "out", o, N*OC)
	need("MatMulForwardAcc", "x", xs, N*C)
	needN("MatMulForwardAcc", "w", weightLen(wf, wh), OC*C)
	if N == 0 || OC == 0 {
		return
	}
	gemm.Mul(gemmRun, be.workers(N*C*OC), o, OC, gemm.RowMajor(xs, C), matView(wf, wh, C, true), N, OC, C, true)
}

// MatMulBackward computes, for y = x·wᵀ + bias,
// dx (N, C) += dy·w, dw (OC, C) += dyᵀ·x, dbias (OC) += Σ_n dy[n, :]; nil outputs are skipped.
// dy (N, OC), x (N, C), w (OC, C) F32, BF16 or packed; a BF16 or packed w is frozen, so dw
// must be nil.
// dx and dw follow the gemm package's summation order (a narrow dw, C ≤ 64 and OC ≥ 4C, is
// summed over all n first and then added); dbias sums over n in order.
func (be *Backend) MatMulBackward(dx, dw, dbias, dy, x, w backend.Buffer, N, C, OC int) {
	dxs, dws, dbs, dys := data(dx), data(dw), data(dbias), data(dy)
	need("MatMulBackward", "dy", dys, N*OC)
	if dws != nil && isBF16(w) {
		panic("cpu: MatMulBackward: dw requested for a BF16 weight; BF16 weights are frozen and get no gradient (load F32 weights to train them)")
	}
	if dws != nil && isPacked(w) {
		panic("cpu: MatMulBackward: dw requested for a packed (quantized) weight; quantized weights are frozen and get no gradient (load F32 weights to train them)")
	}
	if dxs != nil {
		wf, wh, sp := be.expand(w)
		if sp != nil {
			defer putF32(sp)
		}
		need("MatMulBackward", "dx", dxs, N*C)
		needN("MatMulBackward", "w", weightLen(wf, wh), OC*C)
		// dx (N, C) += dy (N, OC) · w (OC, C)
		gemm.Mul(gemmRun, be.workers(N*C*OC), dxs, C, gemm.RowMajor(dys, OC), matView(wf, wh, C, false), N, C, OC, true)
	}
	if dws != nil {
		xs := data(x)
		need("MatMulBackward", "dw", dws, OC*C)
		need("MatMulBackward", "x", xs, N*C)
		if C <= 64 && OC >= 4*C {
			// A narrow weight (LoRA's B, r columns): compute dwᵀ (C, OC) = xᵀ · dy, which reads
			// dy in place instead of packing all of it, then add its transpose.
			sp := getF32(C * OC)
			s := *sp // (C, OC)
			gemm.Mul(gemmRun, be.workers(N*C*OC), s, OC, gemm.Transposed(xs, C), gemm.RowMajor(dys, OC), C, OC, N, false)
			for o := 0; o < OC; o++ {
				dwo := dws[o*C : (o+1)*C] // (C,)
				for c := range dwo {
					dwo[c] += s[c*OC+o]
				}
			}
			putF32(sp)
		} else {
			// dw (OC, C) += dyᵀ (OC, N) · x (N, C)
			gemm.Mul(gemmRun, be.workers(N*C*OC), dws, C, gemm.Transposed(dys, OC), gemm.RowMajor(xs, C), OC, C, N, true)
		}
	}
	if dbs != nil {
		need("MatMulBackward", "dbias", dbs, OC)
		for n := 0; n < N; n++ {
			dyr := dys[n*OC : (n+1)*OC] // (OC,)
			for o, g := range dyr {
				dbs[o] += g
			}
		}
	}
}

// gemmRun is the gemm.Runner over the worker pool: the product's job rides in a recycled
// argument struct, so a parallel GEMM allocates nothing.
func gemmRun(n, align, workers int, body gemm.Body) {
	t := gemmArgs.get()
	t.b = body
	forRange(n, align, workers, t)
	gemmArgs.put(t)
}

// gemmBody adapts a gemm.Body to the pool's ranger.
type gemmBody struct{ b gemm.Body }

var gemmArgs argPool[gemmBody]

func (g *gemmBody) run(lo, hi int) { g.b.Run(lo, hi) }
