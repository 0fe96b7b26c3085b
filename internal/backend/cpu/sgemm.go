package cpu

import "github.com/loractl/loractl/internal/backend"

// This file holds the one matrix-multiply routine of the CPU backend. A later issue replaces
// sgemmNT's inner kernels with Go assembly; the contract below stays.
//
// Summation order: every output element is ONE float32 accumulator that runs over k = 0..K-1
// in order, and the bias is added at the end. The order depends neither on the blocking nor on
// the number of threads, so a token's result is bit-identical whether it is computed alone
// (generation) or inside a long sequence (prefill, evaluation).

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
// "NT": both operands are read along rows, so each output is a dot product of two contiguous
// rows. The work is split once per call, over output columns (weight rows) when there are
// enough of them, which is always the case for a single token, else over tokens.
func (be *Backend) sgemmNT(y, x, w, bias []float32, N, K, M int) {
	if N == 0 || M == 0 {
		return
	}
	nw := be.workers(N * K * M)
	if nw == 1 {
		sgemmBlock(y, x, w, bias, K, M, 0, N, 0, M)
		return
	}
	if M >= 4*nw || M >= N {
		parallelFor(M, 4, nw, func(m0, m1 int) { sgemmBlock(y, x, w, bias, K, M, 0, N, m0, m1) })
	} else {
		parallelFor(N, 2, nw, func(n0, n1 int) { sgemmBlock(y, x, w, bias, K, M, n0, n1, 0, M) })
	}
}

// sgemmRowsL2 is the size in bytes of the block of x rows that is kept hot while all weight rows
// of a worker stream past it once; weight tiles of 4 rows are then reused from L1 across the
// block's tokens.
const sgemmRowsL2 = 256 << 10

// sgemmBlock computes y[n, m] for n in [n0, n1), m in [m0, m1). y (N, M), x (N, K), w (M, K).
func sgemmBlock(y, x, w, bias []float32, K, M, n0, n1, m0, m1 int) {
	tb := sgemmRowsL2 / (4 * max(K, 1)) // tokens per block
	tb = max(2, tb&^1)
	for t0 := n0; t0 < n1; t0 += tb {
		t1 := min(t0+tb, n1)
		m := m0
		for ; m+4 <= m1; m += 4 {
			w0 := w[(m+0)*K : (m+1)*K] // (K,)
			w1 := w[(m+1)*K : (m+2)*K] // (K,)
			w2 := w[(m+2)*K : (m+3)*K] // (K,)
			w3 := w[(m+3)*K : (m+4)*K] // (K,)
			var b0, b1, b2, b3 float32
			if bias != nil {
				b0, b1, b2, b3 = bias[m], bias[m+1], bias[m+2], bias[m+3]
			}
			t := t0
			for ; t+2 <= t1; t += 2 {
				xa := x[t*K : (t+1)*K]     // (K,)
				xb := x[(t+1)*K : (t+2)*K] // (K,)
				a0, a1, a2, a3, c0, c1, c2, c3 := dot2x4(xa, xb, w0, w1, w2, w3)
				ya := y[t*M+m : t*M+m+4]         // (4,)
				yb := y[(t+1)*M+m : (t+1)*M+m+4] // (4,)
				ya[0], ya[1], ya[2], ya[3] = a0+b0, a1+b1, a2+b2, a3+b3
				yb[0], yb[1], yb[2], yb[3] = c0+b0, c1+b1, c2+b2, c3+b3
			}
			for ; t < t1; t++ {
				xa := x[t*K : (t+1)*K] // (K,)
				a0, a1, a2, a3 := dot1x4(xa, w0, w1, w2, w3)
				ya := y[t*M+m : t*M+m+4] // (4,)
				ya[0], ya[1], ya[2], ya[3] = a0+b0, a1+b1, a2+b2, a3+b3
			}
		}
		for ; m < m1; m++ { // leftover weight rows, one at a time
			wm := w[m*K : (m+1)*K] // (K,)
			var bm float32
			if bias != nil {
				bm = bias[m]
			}
			for t := t0; t < t1; t++ {
				y[t*M+m] = dot1(x[t*K:(t+1)*K], wm) + bm
			}
		}
	}
}

// dot1 returns the dot product of a and b (len(b) ≥ len(a)).
func dot1(a, b []float32) float32 {
	b = b[:len(a)]
	var s float32
	for k, av := range a {
		s += av * b[k]
	}
	return s
}

// dot1x4 returns the dot products of x with four weight rows, each of len(x) elements.
func dot1x4(x, w0, w1, w2, w3 []float32) (s0, s1, s2, s3 float32) {
	n := len(x)
	w0, w1, w2, w3 = w0[:n], w1[:n], w2[:n], w3[:n]
	for k, xv := range x {
		s0 += xv * w0[k]
		s1 += xv * w1[k]
		s2 += xv * w2[k]
		s3 += xv * w3[k]
	}
	return
}

// dot2x4 returns the 2×4 dot products of two token rows with four weight rows:
// a_j = xa·w_j and c_j = xb·w_j. Each weight element is loaded once for both tokens.
func dot2x4(xa, xb, w0, w1, w2, w3 []float32) (a0, a1, a2, a3, c0, c1, c2, c3 float32) {
	n := len(xa)
	xb = xb[:n]
	w0, w1, w2, w3 = w0[:n], w1[:n], w2[:n], w3[:n]
	for k := 0; k < n; k++ {
		u, v := xa[k], xb[k]
		p0, p1, p2, p3 := w0[k], w1[k], w2[k], w3[k]
		a0 += u * p0
		a1 += u * p1
		a2 += u * p2
		a3 += u * p3
		c0 += v * p0
		c1 += v * p1
		c2 += v * p2
		c3 += v * p3
	}
	return
}
