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
// out (N, OC), x (N, C), w (OC, C), bias (OC) or nil.
func (be *Backend) MatMulForward(out, x, w, bias backend.Buffer, N, C, OC int) {
	o, xs, ws, bs := data(out), data(x), data(w), data(bias)
	need("MatMulForward", "out", o, N*OC)
	need("MatMulForward", "x", xs, N*C)
	need("MatMulForward", "w", ws, OC*C)
	if bs != nil {
		need("MatMulForward", "bias", bs, OC)
	}
	be.sgemmNT(o, xs, ws, bs, N, C, OC)
}

// sgemmNT computes y = x · wᵀ (+ bias): y (N, M), x (N, K), w (M, K), bias (M) or nil.
func (be *Backend) sgemmNT(y, x, w, bias []float32, N, K, M int) {
	if N == 0 || M == 0 {
		return
	}
	gemm.Mul(parallelFor, be.workers(N*K*M), y, M, gemm.RowMajor(x, K), gemm.Transposed(w, K), N, M, K, false)
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

// MatMulBackward computes, for y = x·wᵀ + bias,
// dx (N, C) += dy·w, dw (OC, C) += dyᵀ·x, dbias (OC) += Σ_n dy[n, :]; nil outputs are skipped.
// dy (N, OC), x (N, C), w (OC, C).
// dx and dw follow the gemm package's summation order; dbias sums over n in order.
func (be *Backend) MatMulBackward(dx, dw, dbias, dy, x, w backend.Buffer, N, C, OC int) {
	dxs, dws, dbs, dys := data(dx), data(dw), data(dbias), data(dy)
	need("MatMulBackward", "dy", dys, N*OC)
	if dxs != nil {
		ws := data(w)
		need("MatMulBackward", "dx", dxs, N*C)
		need("MatMulBackward", "w", ws, OC*C)
		// dx (N, C) += dy (N, OC) · w (OC, C)
		gemm.Mul(parallelFor, be.workers(N*C*OC), dxs, C, gemm.RowMajor(dys, OC), gemm.RowMajor(ws, C), N, C, OC, true)
	}
	if dws != nil {
		xs := data(x)
		need("MatMulBackward", "dw", dws, OC*C)
		need("MatMulBackward", "x", xs, N*C)
		// dw (OC, C) += dyᵀ (OC, N) · x (N, C)
		gemm.Mul(parallelFor, be.workers(N*C*OC), dws, C, gemm.Transposed(dys, OC), gemm.RowMajor(xs, C), OC, C, N, true)
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

// dot1 returns the dot product of a and b (len(b) ≥ len(a)), summed in order.
func dot1(a, b []float32) float32 {
	b = b[:len(a)]
	var s float32
	for k, av := range a {
		s += av * b[k]
	}
	return s
}
