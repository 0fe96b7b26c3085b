package cpu

import (
	"fmt"
	"math"
	"math/rand/v2"
	"testing"

	"github.com/loractl/loractl/internal/backend"
)

// randn returns n seeded standard-normal float32 values.
func randn(r *rand.Rand, n int) []float32 {
	s := make([]float32, n) // (n,)
	for i := range s {
		s[i] = float32(r.NormFloat64())
	}
	return s
}

// buf uploads s into a fresh CPU buffer.
func buf(be *Backend, s []float32) backend.Buffer {
	b := be.Alloc(len(s))
	if err := be.Upload(b, s); err != nil {
		panic(err)
	}
	return b
}

// checkClose fails t when |got-want| > atol + rtol·|want| anywhere, reporting the op, the first
// few mismatching indices, got and want, and the worst error.
func checkClose(t *testing.T, op string, got []float32, want []float64, atol, rtol float64) {
	t.Helper()
	if len(got) != len(want) {
		t.Fatalf("%s: got %d values, want %d", op, len(got), len(want))
	}
	bad, worst := 0, 0.0
	for i := range want {
		d := math.Abs(float64(got[i]) - want[i])
		worst = max(worst, d)
		if d > atol+rtol*math.Abs(want[i]) || math.IsNaN(float64(got[i])) {
			if bad < 5 {
				t.Errorf("%s: index %d: got %.9g, want %.9g (|diff| %.3g)", op, i, got[i], want[i], d)
			}
			bad++
		}
	}
	if bad > 0 {
		t.Errorf("%s: %d of %d values out of tolerance (atol %g, rtol %g), max |diff| %.3g", op, bad, len(want), atol, rtol, worst)
	}
}

func TestEmbeddingForward(t *testing.T) {
	be := New()
	r := rand.New(rand.NewPCG(1, 2))
	V, C := 37, 12
	table := randn(r, V*C) // (V, C)
	tokens := []int{0, 36, 5, 5, 17, 1}
	out := be.Alloc(len(tokens) * C) // (N, C)
	be.EmbeddingForward(out, buf(be, table), tokens, C)
	want := make([]float64, len(tokens)*C) // (N, C)
	for n, id := range tokens {
		for c := 0; c < C; c++ {
			want[n*C+c] = float64(table[id*C+c])
		}
	}
	checkClose(t, "EmbeddingForward", out.(*Buffer).Data(), want, 0, 0)
}

// refRMSNorm is the float64 reference: out = x / sqrt(mean(x²)+eps) * w.
func refRMSNorm(x, w []float32, N, C int, eps float64) []float64 {
	out := make([]float64, N*C) // (N, C)
	for n := 0; n < N; n++ {
		ss := 0.0
		for c := 0; c < C; c++ {
			v := float64(x[n*C+c])
			ss += v * v
		}
		s := 1 / math.Sqrt(ss/float64(C)+eps)
		for c := 0; c < C; c++ {
			out[n*C+c] = float64(x[n*C+c]) * s * float64(w[c])
		}
	}
	return out
}

func TestRMSNormForward(t *testing.T) {
	be := New()
	for _, tc := range []struct {
		N, C    int
		eps     float32
		inPlace bool
	}{
		{1, 64, 1e-5, false}, {7, 33, 1e-6, false}, {5, 8, 1e-5, true}, {40, 128, 1e-6, true},
	} {
		t.Run(fmt.Sprintf("N%d_C%d_inplace%v", tc.N, tc.C, tc.inPlace), func(t *testing.T) {
			r := rand.New(rand.NewPCG(uint64(tc.N), uint64(tc.C)))
			x := randn(r, tc.N*tc.C) // (N, C)
			w := randn(r, tc.C)      // (C,)
			want := refRMSNorm(x, w, tc.N, tc.C, float64(tc.eps))
			xb := buf(be, x)
			out := xb
			if !tc.inPlace {
				out = be.Alloc(tc.N * tc.C)
			}
			be.RMSNormForward(out, xb, buf(be, w), tc.N, tc.C, tc.eps)
			checkClose(t, "RMSNormForward", out.(*Buffer).Data(), want, 1e-6, 1e-5)
		})
	}
}

// refMatMul is the float64 reference y = x·wᵀ + b.
func refMatMul(x, w, b []float32, N, K, M int) []float64 {
	y := make([]float64, N*M) // (N, M)
	for n := 0; n < N; n++ {
		for m := 0; m < M; m++ {
			s := 0.0
			if b != nil {
				s = float64(b[m])
			}
			for k := 0; k < K; k++ {
				s += float64(x[n*K+k]) * float64(w[m*K+k])
			}
			y[n*M+m] = s
		}
	}
	return y
}

func TestMatMulForward(t *testing.T) {
	for _, tc := range []struct {
		N, K, M int
		bias    bool
		threads int
	}{
		{1, 64, 512, false, 1},   // matrix-vector (generation)
		{1, 64, 512, true, 4},    // matrix-vector, parallel over weight rows
		{3, 5, 7, true, 1},       // odd everything, leftover rows
		{2, 1, 1, false, 1},      // degenerate
		{33, 96, 70, true, 2},    // odd token count, M not a multiple of 4
		{37, 4096, 10, false, 3}, // several token blocks, parallel over tokens
		{64, 300, 257, true, 2},  // parallel over weight rows
	} {
		name := fmt.Sprintf("N%d_K%d_M%d_bias%v_threads%d", tc.N, tc.K, tc.M, tc.bias, tc.threads)
		t.Run(name, func(t *testing.T) {
			be := New()
			be.SetThreads(tc.threads)
			r := rand.New(rand.NewPCG(uint64(tc.N*1000+tc.K), uint64(tc.M)))
			x := randn(r, tc.N*tc.K) // (N, K)
			w := randn(r, tc.M*tc.K) // (M, K)
			var b []float32          // (M,) or nil
			var bb backend.Buffer
			if tc.bias {
				b = randn(r, tc.M)
				bb = buf(be, b)
			}
			out := be.Alloc(tc.N * tc.M) // (N, M)
			be.MatMulForward(out, buf(be, x), buf(be, w), bb, tc.N, tc.K, tc.M)
			// float32 accumulation over K terms of size ~1: error grows like sqrt(K)·eps·|terms|.
			atol := 1e-6 * math.Sqrt(float64(tc.K)) * 4
			checkClose(t, "MatMulForward", out.(*Buffer).Data(), refMatMul(x, w, b, tc.N, tc.K, tc.M), atol, 1e-5)

			// The result is bit-identical whatever the thread count and the token's neighbours.
			serial := New()
			serial.SetThreads(1)
			for n := 0; n < tc.N; n += max(1, tc.N/3) {
				one := serial.Alloc(tc.M) // (1, M)
				serial.MatMulForward(one, buf(serial, x[n*tc.K:(n+1)*tc.K]), buf(serial, w), bb, 1, tc.K, tc.M)
				got := out.(*Buffer).Data()[n*tc.M : (n+1)*tc.M]
				for m, v := range one.(*Buffer).Data() {
					if got[m] != v {
						t.Fatalf("token %d column %d: batched %.9g != single-token serial %.9g", n, m, got[m], v)
					}
				}
			}
		})
	}
}

// refInvFreq is the default RoPE inverse frequency in float64.
func refInvFreq(D int, theta float64) []float32 {
	f := make([]float32, D/2) // (D/2,)
	for i := range f {
		f[i] = float32(1 / math.Pow(theta, float64(2*i)/float64(D)))
	}
	return f
}

func TestRoPEForward(t *testing.T) {
	be := New()
	for _, tc := range []struct{ B, T, NH, D, pos0 int }{
		{1, 1, 4, 8, 0}, {1, 1, 2, 16, 37}, {2, 5, 3, 8, 3}, {1, 9, 8, 64, 100},
	} {
		t.Run(fmt.Sprintf("B%d_T%d_NH%d_D%d_pos%d", tc.B, tc.T, tc.NH, tc.D, tc.pos0), func(t *testing.T) {
			r := rand.New(rand.NewPCG(uint64(tc.T), uint64(tc.D+tc.pos0)))
			n := tc.B * tc.T * tc.NH * tc.D
			x := randn(r, n) // (B, T, NH, D)
			inv := refInvFreq(tc.D, 10000)
			want := make([]float64, n) // (B, T, NH, D)
			half := tc.D / 2
			for b := 0; b < tc.B; b++ {
				for tt := 0; tt < tc.T; tt++ {
					for h := 0; h < tc.NH; h++ {
						base := ((b*tc.T+tt)*tc.NH + h) * tc.D
						for i := 0; i < tc.D; i++ {
							// rotate_half: q*cos + cat(-q2, q1)*sin, cos/sin duplicated over halves
							th := float64(tc.pos0+tt) * float64(inv[i%half])
							var rot float64
							if i < half {
								rot = -float64(x[base+i+half])
							} else {
								rot = float64(x[base+i-half])
							}
							want[base+i] = float64(x[base+i])*math.Cos(th) + rot*math.Sin(th)
						}
					}
				}
			}
			xb := buf(be, x)
			be.RoPEForward(xb, buf(be, inv), tc.B, tc.T, tc.NH, tc.D, tc.pos0)
			// The angle is a float32 product, so allow a few ulps of pos·invFreq.
			atol := 4e-7 * float64(tc.pos0+tc.T) * 4
			checkClose(t, "RoPEForward", xb.(*Buffer).Data(), want, 1e-6+atol, 1e-5)
		})
	}
}

// refAttention is the float64 reference of causal GQA attention over a cache.
func refAttention(q, k, v []float32, B, T, S, pos0, NH, NKV, D int) []float64 {
	out := make([]float64, B*T*NH*D) // (B, T, NH, D)
	for b := 0; b < B; b++ {
		for h := 0; h < NH; h++ {
			kh := h * NKV / NH
			for t := 0; t < T; t++ {
				n := pos0 + t + 1
				sc := make([]float64, n) // (n,)
				mx := math.Inf(-1)
				for s := 0; s < n; s++ {
					d := 0.0
					for i := 0; i < D; i++ {
						d += float64(q[((b*T+t)*NH+h)*D+i]) * float64(k[((b*S+s)*NKV+kh)*D+i])
					}
					sc[s] = d / math.Sqrt(float64(D))
					mx = max(mx, sc[s])
				}
				sum := 0.0
				for s := range sc {
					sc[s] = math.Exp(sc[s] - mx)
					sum += sc[s]
				}
				for s := range sc {
					for i := 0; i < D; i++ {
						out[((b*T+t)*NH+h)*D+i] += sc[s] / sum * float64(v[((b*S+s)*NKV+kh)*D+i])
					}
				}
			}
		}
	}
	return out
}

func TestAttentionForward(t *testing.T) {
	for _, tc := range []struct{ B, T, S, pos0, NH, NKV, D, threads int }{
		{1, 1, 1, 0, 1, 1, 4, 1},      // first token: attends to itself only
		{1, 1, 16, 9, 8, 4, 8, 1},     // generation step, GQA 2:1
		{1, 12, 12, 0, 8, 8, 16, 1},   // full prefill, MHA
		{2, 5, 20, 7, 6, 2, 8, 2},     // batch, partial cache, GQA 3:1
		{1, 64, 80, 10, 4, 1, 32, 2},  // MQA, parallel over heads
		{1, 3, 300, 250, 2, 1, 64, 1}, // long cache
	} {
		name := fmt.Sprintf("B%d_T%d_S%d_pos%d_NH%d_NKV%d_D%d", tc.B, tc.T, tc.S, tc.pos0, tc.NH, tc.NKV, tc.D)
		t.Run(name, func(t *testing.T) {
			be := New()
			be.SetThreads(tc.threads)
			r := rand.New(rand.NewPCG(uint64(tc.S), uint64(tc.T*100+tc.NH)))
			q := randn(r, tc.B*tc.T*tc.NH*tc.D)  // (B, T, NH·D)
			k := randn(r, tc.B*tc.S*tc.NKV*tc.D) // (B, S, NKV·D)
			v := randn(r, tc.B*tc.S*tc.NKV*tc.D) // (B, S, NKV·D)
			out := be.Alloc(len(q))              // (B, T, NH·D)
			be.AttentionForward(out, buf(be, q), buf(be, k), buf(be, v), tc.B, tc.T, tc.S, tc.pos0, tc.NH, tc.NKV, tc.D)
			want := refAttention(q, k, v, tc.B, tc.T, tc.S, tc.pos0, tc.NH, tc.NKV, tc.D)
			checkClose(t, "AttentionForward", out.(*Buffer).Data(), want, 2e-6, 1e-5)
		})
	}
}

func TestSwiGLUForward(t *testing.T) {
	be := New()
	r := rand.New(rand.NewPCG(3, 4))
	N := 301
	g := randn(r, N)                 // (N,)
	u := randn(r, N)                 // (N,)
	g[0], g[1], g[2] = 30, -30, -200 // saturated silu: ≈ x and ≈ 0 (exp overflow must not give NaN)
	want := make([]float64, N)       // (N,)
	for i := range want {
		x := float64(g[i])
		want[i] = x / (1 + math.Exp(-x)) * float64(u[i])
	}
	out := be.Alloc(N) // (N,)
	be.SwiGLUForward(out, buf(be, g), buf(be, u), N)
	checkClose(t, "SwiGLUForward", out.(*Buffer).Data(), want, 1e-7, 1e-6)

	gb := buf(be, g) // in place over gate
	be.SwiGLUForward(gb, gb, buf(be, u), N)
	checkClose(t, "SwiGLUForward in place", gb.(*Buffer).Data(), want, 1e-7, 1e-6)
}

func TestAddForward(t *testing.T) {
	be := New()
	r := rand.New(rand.NewPCG(5, 6))
	N := 77
	a := randn(r, N)           // (N,)
	b := randn(r, N)           // (N,)
	want := make([]float64, N) // (N,)
	for i := range want {
		want[i] = float64(a[i]) + float64(b[i])
	}
	ab := buf(be, a)
	be.AddForward(ab, ab, buf(be, b), N) // residual update in place
	checkClose(t, "AddForward", ab.(*Buffer).Data(), want, 0, 1e-7)
}

func TestBuffers(t *testing.T) {
	be := New()
	b := be.Alloc(10)
	src := []float32{0, 1, 2, 3, 4, 5, 6, 7, 8, 9}
	if err := be.Upload(b, src); err != nil {
		t.Fatal(err)
	}
	other := buf(be, []float32{-1, -2, -3, -4, -5})
	be.Copy(b, 3, other, 1, 4)
	got := make([]float32, 10)
	if err := be.Download(got, b); err != nil {
		t.Fatal(err)
	}
	want := []float32{0, 1, 2, -2, -3, -4, -5, 7, 8, 9}
	for i := range want {
		if got[i] != want[i] {
			t.Fatalf("after Copy: element %d = %v, want %v", i, got[i], want[i])
		}
	}
	if err := be.Upload(b, src[:3]); err == nil {
		t.Error("Upload of 3 values into a 10-element buffer: want an error")
	}
	if err := be.Download(got[:2], b); err == nil {
		t.Error("Download of a 10-element buffer into 2 values: want an error")
	}
}

func TestParallelForCoversRange(t *testing.T) {
	for _, tc := range []struct{ n, align, workers int }{{1, 4, 8}, {10, 4, 2}, {1000, 4, 3}, {7, 1, 7}, {5, 2, 9}} {
		seen := make([]int32, tc.n)
		parallelFor(tc.n, tc.align, tc.workers, func(lo, hi int) {
			if lo%tc.align != 0 {
				t.Errorf("n=%d align=%d: chunk starts at %d", tc.n, tc.align, lo)
			}
			for i := lo; i < hi; i++ {
				seen[i]++ // chunks are disjoint, so no race
			}
		})
		for i, c := range seen {
			if c != 1 {
				t.Fatalf("n=%d align=%d workers=%d: index %d visited %d times", tc.n, tc.align, tc.workers, i, c)
			}
		}
	}
}
