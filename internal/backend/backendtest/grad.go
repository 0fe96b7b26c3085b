package backendtest

import (
	"fmt"
	"math"
	"math/rand/v2"
	"testing"

	"github.com/loractl/loractl/internal/backend"
)

// accumulated runs a backward op twice: into zeroed gradient buffers of the given sizes, and into
// buffers prefilled with random values. It checks that the second run added the first run's
// gradients to the prefilled values (the += contract) and returns the first run's gradients.
func accumulated(t *testing.T, be backend.Backend, r *rand.Rand, op string, sizes []int, call func(grads []backend.Buffer)) [][]float32 {
	t.Helper()
	zero := make([]backend.Buffer, len(sizes))
	pre := make([]backend.Buffer, len(sizes))
	init := make([][]float32, len(sizes))
	for i, n := range sizes {
		zero[i] = be.Alloc(n)
		init[i] = randn(r, n, 1)
		pre[i] = upload(t, be, init[i])
	}
	call(zero)
	call(pre)
	grads := make([][]float32, len(sizes))
	for i := range sizes {
		grads[i] = download(t, be, zero[i])
		acc := download(t, be, pre[i])
		for j, g := range grads[i] {
			want := float64(init[i][j]) + float64(g)
			if d := float64(acc[j]) - want; d > 1e-5+1e-5*abs(want) || -d > 1e-5+1e-5*abs(want) {
				t.Errorf("%s: gradient output %d does not accumulate: index %d: got %.9g, want prefill %.9g + gradient %.9g", op, i, j, acc[j], init[i][j], g)
				break
			}
		}
	}
	return grads
}

func abs(x float64) float64 {
	if x < 0 {
		return -x
	}
	return x
}

// runTrain checks the ops of backend.Trainer.
func runTrain(t *testing.T, newBackend func() backend.Backend, rep *report) {
	t.Run("ZeroAxpy", func(t *testing.T) {
		be, r := newBackend(), seededRand(20)
		tr := be.(backend.Trainer)
		N := 23
		y, x := randn(r, N, 1), randn(r, N, 1) // (N,), (N,)
		yb := upload(t, be, y)
		tr.Axpy(yb, upload(t, be, x), -0.75, N)
		want := make([]float64, N) // (N,)
		for i := range want {
			want[i] = float64(y[i]) - 0.75*float64(x[i])
		}
		checkClose(t, rep, "Axpy", "N=23", download(t, be, yb), want, 1e-6, 1e-6)
		tr.Zero(yb, N-3)
		got := download(t, be, yb)
		for i := range got {
			if (i < N-3 && got[i] != 0) || (i >= N-3 && float64(got[i]) != float64(float32(want[i]))) {
				t.Fatalf("Zero(n=%d): index %d holds %g", N-3, i, got[i])
			}
		}
	})

	t.Run("Scale", func(t *testing.T) {
		be, r := newBackend(), seededRand(27)
		tr := be.(backend.Trainer)
		N := 45
		x := randn(r, N, 1) // (N,)
		xb := upload(t, be, x)
		tr.Scale(xb, -0.37, N-5)
		got := download(t, be, xb)
		for i := range got {
			want := x[i]
			if i < N-5 {
				want = x[i] * -0.37
			}
			if math.Float32bits(got[i]) != math.Float32bits(want) {
				t.Fatalf("Scale(n=%d): index %d holds %g, want %g", N-5, i, got[i], want)
			}
		}
	})

	t.Run("ColScale", func(t *testing.T) {
		be, r := newBackend(), seededRand(29)
		tr := be.(backend.Trainer)
		for _, d := range [][2]int{{5, 7}, {70, 300}} {
			N, OC := d[0], d[1]
			shape := fmt.Sprintf("N=%d OC=%d", N, OC)
			x, c, bias, dy := randn(r, N*OC, 1), randn(r, OC, 1), randn(r, OC, 1), randn(r, N*OC, 1) // (N, OC), (OC), (OC), (N, OC)
			want := make([]float64, N*OC)                                                            // (N, OC) x·diag(c) + bias
			wantNB := make([]float64, N*OC)                                                          // (N, OC) x·diag(c)
			wantDX := make([]float64, N*OC)                                                          // (N, OC) dy·diag(c)
			wantDC := make([]float64, OC)                                                            // (OC) Σ_n dy·x
			for n := 0; n < N; n++ {
				for o := 0; o < OC; o++ {
					i := n*OC + o
					wantNB[i] = float64(x[i]) * float64(c[o])
					want[i] = wantNB[i] + float64(bias[o])
					wantDX[i] = float64(dy[i]) * float64(c[o])
					wantDC[o] += float64(dy[i]) * float64(x[i])
				}
			}
			yb := be.Alloc(N * OC)
			tr.ColScaleForward(yb, upload(t, be, x), upload(t, be, c), upload(t, be, bias), N, OC)
			checkClose(t, rep, "ColScaleForward", shape, download(t, be, yb), want, 1e-6, 1e-6)
			xb := upload(t, be, x) // in place, no bias
			tr.ColScaleForward(xb, xb, upload(t, be, c), nil, N, OC)
			checkClose(t, rep, "ColScaleForward", shape+" in place", download(t, be, xb), wantNB, 1e-6, 1e-6)

			xb, cb := upload(t, be, x), upload(t, be, c)
			var dx []float32
			grads := accumulated(t, be, r, "ColScaleBackward", []int{OC}, func(g []backend.Buffer) {
				dyb := upload(t, be, dy) // dx written over dy
				tr.ColScaleBackward(dyb, g[0], dyb, xb, cb, N, OC)
				dx = download(t, be, dyb)
			})
			checkClose(t, rep, "ColScaleBackward dx", shape, dx, wantDX, 1e-6, 1e-6)
			checkClose(t, rep, "ColScaleBackward dc", shape, grads[0], wantDC, 1e-5, 1e-5)
		}
	})

	t.Run("MatMulForwardAcc", func(t *testing.T) {
		be, r := newBackend(), seededRand(28)
		tr := be.(backend.Trainer)
		for _, d := range [][3]int{{7, 19, 11}, {70, 16, 300}} {
			N, C, OC := d[0], d[1], d[2]
			shape := fmt.Sprintf("N=%d C=%d OC=%d", N, C, OC)
			x, w, y0 := randn(r, N*C, 1), randn(r, OC*C, 1), randn(r, N*OC, 1) // (N, C), (OC, C), (N, OC)
			yb := upload(t, be, y0)
			tr.MatMulForwardAcc(yb, upload(t, be, x), upload(t, be, w), N, C, OC)
			want := refAdd(f64(y0), refMatMul(f64(x), f64(w), nil, N, C, OC))
			checkClose(t, rep, "MatMulForwardAcc", shape, download(t, be, yb), want, 1e-5, 1e-4)
		}
	})

	t.Run("CrossEntropy", func(t *testing.T) {
		// A tiny vocabulary (every vector tail) and one wide enough for the unrolled loops.
		for _, dims := range [][2]int{{6, 9}, {4, 203}} {
			be, r := newBackend(), seededRand(21)
			tr := be.(backend.Trainer)
			N, V := dims[0], dims[1]
			logits := randn(r, N*V, 3) // (N, V)
			targets := make([]int, N)  // (N,)
			for i := range targets {
				targets[i] = r.IntN(V)
			}
			targets[1] = backend.IgnoreIndex
			if N > 4 {
				targets[4] = backend.IgnoreIndex
			}
			valid := 0
			for _, tg := range targets {
				if tg != backend.IgnoreIndex {
					valid++
				}
			}
			scale := float32(1 / float64(valid)) // mean over the counted rows
			shape := fmt.Sprintf("N=%d V=%d (%d ignored)", N, V, N-valid)

			lb := upload(t, be, logits)
			losses := upload(t, be, poison(N))
			tr.CrossEntropyForward(losses, lb, targets, N, V)
			lossVals := download(t, be, losses)
			checkClose(t, rep, "CrossEntropyForward", shape, lossVals, refCrossEntropy(f64(logits), targets, N, V), 1e-6, 1e-5)

			dl := upload(t, be, poison(N*V))
			tr.CrossEntropyBackward(dl, lb, targets, N, V, scale)
			got := download(t, be, dl)
			x := f64(logits)
			fd := numGrad(func() float64 {
				s := 0.0
				for _, l := range refCrossEntropy(x, targets, N, V) {
					s += l
				}
				return float64(scale) * s
			}, x, fdEps)
			checkGrad(t, rep, "CrossEntropyBackward dlogits", shape, got, fd)

			// The fused op gives the same bits as the two separate ones, out of place and in place.
			losses2, dl2 := upload(t, be, poison(N)), upload(t, be, poison(N*V))
			tr.CrossEntropyForwardBackward(losses2, dl2, lb, targets, N, V, scale)
			sameBits(t, "CrossEntropyForwardBackward losses", download(t, be, losses2), lossVals)
			sameBits(t, "CrossEntropyForwardBackward dlogits", download(t, be, dl2), got)

			tr.CrossEntropyBackward(lb, lb, targets, N, V, scale) // in place
			sameBits(t, "CrossEntropyBackward in place", download(t, be, lb), got)
			lb = upload(t, be, logits)
			tr.CrossEntropyForwardBackward(losses2, lb, lb, targets, N, V, scale) // in place
			sameBits(t, "CrossEntropyForwardBackward in place losses", download(t, be, losses2), lossVals)
			sameBits(t, "CrossEntropyForwardBackward in place dlogits", download(t, be, lb), got)
		}
	})

	// A square-ish Linear, a LoRA-A-like one (few outputs) and a LoRA-B-like one (few inputs,
	// many outputs: backends may take another route for such narrow weights), with enough rows
	// for the vector kernels.
	for _, dims := range [][3]int{{5, 7, 6}, {70, 33, 4}, {70, 4, 40}} {
		t.Run(fmt.Sprintf("MatMul N=%d C=%d OC=%d", dims[0], dims[1], dims[2]), func(t *testing.T) {
			testMatMulBackward(t, newBackend, rep, dims[0], dims[1], dims[2])
		})
	}

	t.Run("RMSNorm", func(t *testing.T) {
		be, r := newBackend(), seededRand(23)
		tr := be.(backend.Trainer)
		N, C := 4, 12
		eps := float32(1e-5)
		shape := "N=4 C=12"
		x := randn(r, N*C, 1.5) // (N, C)
		w := randn(r, C, 1)     // (C,)
		dy := randn(r, N*C, 1)  // (N, C)
		xb, wb, dyb := upload(t, be, x), upload(t, be, w), upload(t, be, dy)
		g := accumulated(t, be, r, "RMSNormBackward", []int{N * C, C}, func(gr []backend.Buffer) {
			tr.RMSNormBackward(gr[0], gr[1], dyb, xb, wb, N, C, eps)
		})
		X, W, DY := f64(x), f64(w), f64(dy)
		loss := func() float64 { return dot(DY, refRMSNorm(X, W, N, C, float64(eps))) }
		checkGrad(t, rep, "RMSNormBackward dx", shape, g[0], numGrad(loss, X, fdEps))
		checkGrad(t, rep, "RMSNormBackward dw", shape, g[1], numGrad(loss, W, fdEps))
	})

	t.Run("RoPEPos", func(t *testing.T) {
		be, r := newBackend(), seededRand(24)
		tr := be.(backend.Trainer)
		N, NH, D := 6, 2, 8
		shape := "N=6 NH=2 D=8 packed pos"
		pos := []int{0, 1, 2, 0, 1, 37} // two packed samples, and a far position
		inv := ropeInvFreq(D, 10000)
		invb := upload(t, be, inv)
		x := randn(r, N*NH*D, 1) // (N, NH, D)
		xb := upload(t, be, x)
		tr.RoPEForwardPos(xb, invb, pos, N, NH, D)
		checkClose(t, rep, "RoPEForwardPos", shape, download(t, be, xb), refRoPE(f64(x), inv, pos, N, NH, D), 1e-6, 1e-5)

		// Same positions as RoPEForward's pos0+t: the same result.
		y := randn(r, 3*NH*D, 1) // (1, 3, NH, D)
		a, b := upload(t, be, y), upload(t, be, y)
		be.RoPEForward(a, invb, 1, 3, NH, D, 4)
		tr.RoPEForwardPos(b, invb, []int{4, 5, 6}, 3, NH, D)
		checkClose(t, rep, "RoPEForwardPos = RoPEForward", "N=3 pos0=4", download(t, be, b), f64(download(t, be, a)), 1e-7, 1e-6)

		dy := randn(r, N*NH*D, 1) // (N, NH, D)
		dyb := upload(t, be, dy)
		tr.RoPEBackwardPos(dyb, invb, pos, N, NH, D)
		X, DY := f64(x), f64(dy)
		fd := numGrad(func() float64 { return dot(DY, refRoPE(X, inv, pos, N, NH, D)) }, X, fdEps)
		checkGrad(t, rep, "RoPEBackwardPos dx", shape, download(t, be, dyb), fd)
	})

	// A long sequence: the CPU backend computes attention in blocks of 64 query rows, and
	// samples packed across a block boundary.
	long := make([]int, 70)
	for i := 30; i < len(long); i++ {
		long[i] = 1
	}
	for _, tc := range []struct {
		name             string
		seg              []int // (B·T) or nil
		B, T, NH, NKV, D int
	}{
		{"one segment", nil, 2, 7, 4, 2, 4},
		{"packed", []int{0, 0, 0, 1, 1, 1, 1, 5, 5, 5, 5, 5, 5, 9}, 2, 7, 4, 2, 4}, // batch 0: 2 samples; batch 1: 2
		{"long", nil, 1, 70, 2, 1, 4},
		{"long packed", long, 1, 70, 2, 1, 4},
	} {
		t.Run("Attention "+tc.name, func(t *testing.T) {
			be, r := newBackend(), seededRand(25)
			tr := be.(backend.Trainer)
			B, T, NH, NKV, D := tc.B, tc.T, tc.NH, tc.NKV, tc.D
			shape := fmt.Sprintf("B=%d T=%d NH=%d NKV=%d D=%d %s", B, T, NH, NKV, D, tc.name)
			q := randn(r, B*T*NH*D, 1)  // (B, T, NH·D)
			k := randn(r, B*T*NKV*D, 1) // (B, T, NKV·D)
			v := randn(r, B*T*NKV*D, 1) // (B, T, NKV·D)
			qb, kb, vb := upload(t, be, q), upload(t, be, k), upload(t, be, v)
			out := upload(t, be, poison(B*T*NH*D))
			att := upload(t, be, poison(B*NH*T*T))
			tr.AttentionTrainForward(out, att, qb, kb, vb, tc.seg, B, T, NH, NKV, D)
			Q, K, Vv := f64(q), f64(k), f64(v)
			vis := segVisible(tc.seg, T)
			wantOut, wantAtt := refAttention(Q, K, Vv, B, T, T, NH, NKV, D, vis)
			checkClose(t, rep, "AttentionTrainForward out", shape, download(t, be, out), wantOut, 1e-5, 1e-4)
			checkClose(t, rep, "AttentionTrainForward att", shape, download(t, be, att), wantAtt, 1e-6, 1e-4)

			dout := randn(r, B*T*NH*D, 1) // (B, T, NH·D)
			doutb := upload(t, be, dout)
			g := accumulated(t, be, r, "AttentionBackward", []int{B * T * NH * D, B * T * NKV * D, B * T * NKV * D}, func(gr []backend.Buffer) {
				tr.AttentionBackward(gr[0], gr[1], gr[2], doutb, att, qb, kb, vb, tc.seg, B, T, NH, NKV, D)
			})
			DO := f64(dout)
			loss := func() float64 {
				o, _ := refAttention(Q, K, Vv, B, T, T, NH, NKV, D, vis)
				return dot(DO, o)
			}
			checkGrad(t, rep, "AttentionBackward dq", shape, g[0], numGrad(loss, Q, fdEps))
			checkGrad(t, rep, "AttentionBackward dk", shape, g[1], numGrad(loss, K, fdEps))
			checkGrad(t, rep, "AttentionBackward dv", shape, g[2], numGrad(loss, Vv, fdEps))

			// The flash capability, where the backend has it: the same output, the logsumexp of
			// every row, and the same gradients from out and lse alone.
			fa, ok := be.(backend.FlashAttention)
			if !ok || !fa.FlashAttentionFits(D) {
				return
			}
			out2 := upload(t, be, poison(B*T*NH*D))
			lse := upload(t, be, poison(B*NH*T))
			fa.AttentionTrainForwardLSE(out2, lse, qb, kb, vb, tc.seg, B, T, NH, NKV, D)
			checkClose(t, rep, "AttentionTrainForwardLSE out", shape, download(t, be, out2), wantOut, 1e-5, 1e-4)
			checkClose(t, rep, "AttentionTrainForwardLSE lse", shape, download(t, be, lse), refLSE(Q, K, B, T, NH, NKV, D, vis), 1e-5, 1e-5)
			gf := accumulated(t, be, r, "AttentionBackwardLSE", []int{B * T * NH * D, B * T * NKV * D, B * T * NKV * D}, func(gr []backend.Buffer) {
				fa.AttentionBackwardLSE(gr[0], gr[1], gr[2], doutb, out2, lse, qb, kb, vb, tc.seg, B, T, NH, NKV, D)
			})
			checkGrad(t, rep, "AttentionBackwardLSE dq", shape, gf[0], numGrad(loss, Q, fdEps))
			checkGrad(t, rep, "AttentionBackwardLSE dk", shape, gf[1], numGrad(loss, K, fdEps))
			checkGrad(t, rep, "AttentionBackwardLSE dv", shape, gf[2], numGrad(loss, Vv, fdEps))
		})
	}

	t.Run("Attention packed = separate", func(t *testing.T) {
		// A packed sequence gives each sample exactly what it gets alone: the basis of the
		// packed-equals-unpacked loss test.
		be, r := newBackend(), seededRand(26)
		tr := be.(backend.Trainer)
		T1, T2, NH, NKV, D := 3, 4, 4, 2, 8
		T := T1 + T2
		q := randn(r, T*NH*D, 1)  // (1, T, NH·D)
		k := randn(r, T*NKV*D, 1) // (1, T, NKV·D)
		v := randn(r, T*NKV*D, 1) // (1, T, NKV·D)
		packed := be.Alloc(T * NH * D)
		tr.AttentionTrainForward(packed, be.Alloc(NH*T*T), upload(t, be, q), upload(t, be, k), upload(t, be, v), []int{0, 0, 0, 1, 1, 1, 1}, 1, T, NH, NKV, D)
		got := download(t, be, packed)
		want := make([]float64, 0, T*NH*D) // (T, NH·D)
		for _, part := range [][2]int{{0, T1}, {T1, T}} {
			lo, hi, n := part[0], part[1], part[1]-part[0]
			out := be.Alloc(n * NH * D)
			tr.AttentionTrainForward(out, be.Alloc(NH*n*n),
				upload(t, be, q[lo*NH*D:hi*NH*D]), upload(t, be, k[lo*NKV*D:hi*NKV*D]), upload(t, be, v[lo*NKV*D:hi*NKV*D]),
				nil, 1, n, NH, NKV, D)
			want = append(want, f64(download(t, be, out))...)
		}
		checkClose(t, rep, "AttentionTrainForward packed=separate", "T=3+4 NH=4 NKV=2 D=8", got, want, 1e-6, 1e-6)
	})

	t.Run("SwiGLU", func(t *testing.T) {
		be, r := newBackend(), seededRand(27)
		tr := be.(backend.Trainer)
		N := 31
		shape := "N=31"
		gt, up, dout := randn(r, N, 2.5), randn(r, N, 1), randn(r, N, 1) // (N,) each
		gb, ub, db := upload(t, be, gt), upload(t, be, up), upload(t, be, dout)
		g := accumulated(t, be, r, "SwiGLUBackward", []int{N, N}, func(gr []backend.Buffer) {
			tr.SwiGLUBackward(gr[0], gr[1], db, gb, ub, N)
		})
		G, U, DO := f64(gt), f64(up), f64(dout)
		loss := func() float64 { return dot(DO, refSwiGLU(G, U)) }
		checkGrad(t, rep, "SwiGLUBackward dgate", shape, g[0], numGrad(loss, G, fdEps))
		checkGrad(t, rep, "SwiGLUBackward dup", shape, g[1], numGrad(loss, U, fdEps))
	})

	t.Run("Embedding", func(t *testing.T) {
		be, r := newBackend(), seededRand(28)
		tr := be.(backend.Trainer)
		V, C := 6, 5
		tokens := []int{2, 5, 2, 0, 2, 4} // repeats accumulate
		shape := "V=6 C=5 N=6 repeats"
		table := randn(r, V*C, 1)          // (V, C)
		dout := randn(r, len(tokens)*C, 1) // (N, C)
		db := upload(t, be, dout)
		g := accumulated(t, be, r, "EmbeddingBackward", []int{V * C}, func(gr []backend.Buffer) {
			tr.EmbeddingBackward(gr[0], db, tokens, C)
		})
		TB, DO := f64(table), f64(dout)
		fd := numGrad(func() float64 { return dot(DO, refEmbedding(TB, tokens, C)) }, TB, fdEps)
		checkGrad(t, rep, "EmbeddingBackward dtable", shape, g[0], fd)
	})
}

// testMatMulBackward checks MatMulBackward's three gradients against finite differences, the
// += contract, and that nil outputs are skipped.
func testMatMulBackward(t *testing.T, newBackend func() backend.Backend, rep *report, N, C, OC int) {
	be, r := newBackend(), seededRand(22)
	tr := be.(backend.Trainer)
	shape := fmt.Sprintf("N=%d C=%d OC=%d", N, C, OC)
	x := randn(r, N*C, 1)   // (N, C)
	w := randn(r, OC*C, 1)  // (OC, C)
	b := randn(r, OC, 1)    // (OC,)
	dy := randn(r, N*OC, 1) // (N, OC)
	xb, wb, dyb := upload(t, be, x), upload(t, be, w), upload(t, be, dy)
	g := accumulated(t, be, r, "MatMulBackward", []int{N * C, OC * C, OC}, func(gr []backend.Buffer) {
		tr.MatMulBackward(gr[0], gr[1], gr[2], dyb, xb, wb, N, C, OC)
	})
	X, W, Bs, DY := f64(x), f64(w), f64(b), f64(dy)
	loss := func() float64 { return dot(DY, refMatMul(X, W, Bs, N, C, OC)) }
	checkGrad(t, rep, "MatMulBackward dx", shape, g[0], numGrad(loss, X, fdEps))
	checkGrad(t, rep, "MatMulBackward dw", shape, g[1], numGrad(loss, W, fdEps))
	checkGrad(t, rep, "MatMulBackward dbias", shape, g[2], numGrad(loss, Bs, fdEps))

	// nil outputs are skipped, and the rest is unchanged.
	dx := be.Alloc(N * C)
	tr.MatMulBackward(dx, nil, nil, dyb, nil, wb, N, C, OC)
	checkClose(t, rep, "MatMulBackward dx only", shape, download(t, be, dx), f64(g[0]), 0, 0)
	dw := be.Alloc(OC * C)
	tr.MatMulBackward(nil, dw, nil, dyb, xb, nil, N, C, OC)
	checkClose(t, rep, "MatMulBackward dw only", shape, download(t, be, dw), f64(g[1]), 0, 0)
}
