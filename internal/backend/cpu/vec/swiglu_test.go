package vec

import (
	"math"
	"math/rand/v2"
	"testing"
)

// swigluLengths is every tail length up to two blocks and a few long rows.
var swigluLengths = []int{0, 1, 2, 3, 4, 5, 6, 7, 8, 9, 10, 11, 12, 13, 14, 15, 16, 17, 100, 1000, 4099}

func sigmoid64(g float32) float64 { return 1 / (1 + math.Exp(-float64(g))) }

func same32(a, b float32) bool {
	return math.Float32bits(a) == math.Float32bits(b) || (a != a && b != b)
}

func TestSwiGLU(t *testing.T) {
	impls(t, func(t *testing.T) {
		r := rand.New(rand.NewPCG(11, 12))
		for _, n := range swigluLengths {
			g, u := randVec(r, n, -20, 20), randVec(r, n, -3, 3)
			if n > 3 {
				g[0], g[1], u[2] = 0, float32(math.Copysign(0, -1)), 0 // exact zeros
			}
			out := make([]float32, n)
			SwiGLU(out, g, u)
			for i := range g {
				want := float64(g[i]) * sigmoid64(g[i]) * float64(u[i])
				// exp (2e-7), 1+e, the division and two products: under 6e-7 relative.
				if d := math.Abs(float64(out[i]) - want); d > 6e-7*math.Abs(want) {
					t.Fatalf("n=%d i=%d: SwiGLU(g=%g, u=%g) = %g, want %g (rel %.2g)", n, i, g[i], u[i], out[i], want, d/math.Abs(want))
				}
			}
		}
	})
}

// swigluBwdTol is the error bound of one SwiGLUBackward element: the sigmoid's relative error
// (under 4e-7) enters 1 − s absolutely, so the dgate term is bounded by |dout·u|·s·(1 + 2|g|)
// rather than by its own size (it crosses zero at g ≈ −1.28); the += adds one rounding.
func swigluBwdWant(dg0, du0, dout, g, u float32) (dg, tolG, du, tolU float64) {
	s := sigmoid64(g)
	p := float64(dout) * float64(u)
	tg := p * s * (1 + float64(g)*(1-s))
	dg = float64(dg0) + tg
	tolG = 6e-7*math.Abs(p)*s*(1+2*math.Abs(float64(g))) + 1.2e-7*(math.Abs(float64(dg0))+math.Abs(tg))
	tu := float64(dout) * float64(g) * s
	du = float64(du0) + tu
	tolU = 6e-7*math.Abs(tu) + 1.2e-7*(math.Abs(float64(du0))+math.Abs(tu))
	return
}

func TestSwiGLUBackward(t *testing.T) {
	impls(t, func(t *testing.T) {
		r := rand.New(rand.NewPCG(13, 14))
		for _, n := range swigluLengths {
			g, u, dout := randVec(r, n, -20, 20), randVec(r, n, -3, 3), randVec(r, n, -2, 2)
			dg0, du0 := randVec(r, n, -1, 1), randVec(r, n, -1, 1)
			if n > 3 {
				g[0], g[1], dout[2] = 0, -1.2784645, 0 // silu(0) = 0, silu'(−1.278…) ≈ 0, dout = 0
			}
			dg, du := append([]float32(nil), dg0...), append([]float32(nil), du0...)
			SwiGLUBackward(dg, du, dout, g, u)
			for i := range g {
				wg, tg, wu, tu := swigluBwdWant(dg0[i], du0[i], dout[i], g[i], u[i])
				if d := math.Abs(float64(dg[i]) - wg); d > tg {
					t.Fatalf("n=%d i=%d g=%g u=%g dout=%g: dg = %g, want %g (err %.2g > %.2g)", n, i, g[i], u[i], dout[i], dg[i], wg, d, tg)
				}
				if d := math.Abs(float64(du[i]) - wu); d > tu {
					t.Fatalf("n=%d i=%d g=%g u=%g dout=%g: du = %g, want %g (err %.2g > %.2g)", n, i, g[i], u[i], dout[i], du[i], wu, d, tu)
				}
			}
			// nil dg or du: the other output is the same, bit for bit.
			du1 := append([]float32(nil), du0...)
			SwiGLUBackward(nil, du1, dout, g, u)
			dg1 := append([]float32(nil), dg0...)
			SwiGLUBackward(dg1, nil, dout, g, u)
			for i := range g {
				if !same32(du1[i], du[i]) || !same32(dg1[i], dg[i]) {
					t.Fatalf("n=%d i=%d: with dg nil du = %g, with du nil dg = %g; with both %g, %g", n, i, du1[i], dg1[i], du[i], dg[i])
				}
			}
			SwiGLUBackward(nil, nil, dout, g, u) // nothing to do, no panic
		}
	})
}

// TestSwiGLUPositionIndependent checks that each element's result depends only on its inputs,
// not on where it sits in the slice or on the slice's length (the backend's determinism).
func TestSwiGLUPositionIndependent(t *testing.T) {
	impls(t, func(t *testing.T) {
		r := rand.New(rand.NewPCG(15, 16))
		const n = 67
		g, u, dout := randVec(r, n, -10, 10), randVec(r, n, -3, 3), randVec(r, n, -2, 2)
		out := make([]float32, n)
		SwiGLU(out, g, u)
		dg, du := make([]float32, n), make([]float32, n)
		SwiGLUBackward(dg, du, dout, g, u)
		for lo := 0; lo < 20; lo++ {
			for hi := lo; hi <= n; hi += 1 + hi%5 {
				o := make([]float32, hi-lo)
				SwiGLU(o, g[lo:hi], u[lo:hi])
				sg, su := make([]float32, hi-lo), make([]float32, hi-lo)
				SwiGLUBackward(sg, su, dout[lo:hi], g[lo:hi], u[lo:hi])
				for i := range o {
					if !same32(o[i], out[lo+i]) || !same32(sg[i], dg[lo+i]) || !same32(su[i], du[lo+i]) {
						t.Fatalf("[%d:%d] element %d: %g %g %g, whole row %g %g %g", lo, hi, i, o[i], sg[i], su[i], out[lo+i], dg[lo+i], du[lo+i])
					}
				}
			}
		}
	})
}

func TestSwiGLUAliasing(t *testing.T) {
	impls(t, func(t *testing.T) {
		r := rand.New(rand.NewPCG(17, 18))
		for _, n := range swigluLengths {
			g, u := randVec(r, n, -10, 10), randVec(r, n, -3, 3)
			want := make([]float32, n)
			SwiGLU(want, g, u)
			og := append([]float32(nil), g...)
			SwiGLU(og, og, u) // out = g
			ou := append([]float32(nil), u...)
			SwiGLU(ou, g, ou) // out = u
			for i := range want {
				if !same32(og[i], want[i]) || !same32(ou[i], want[i]) {
					t.Fatalf("n=%d i=%d: out=g gives %g, out=u gives %g, want %g", n, i, og[i], ou[i], want[i])
				}
			}
		}
	})
}

// TestSwiGLUSpecials: NaN in any input propagates; |g| = 100 saturates σ without NaN or Inf
// from the exponential's clamp; σ(0) = 1/2 exactly.
func TestSwiGLUSpecials(t *testing.T) {
	impls(t, func(t *testing.T) {
		nan := float32(math.NaN())
		for _, n := range []int{5, 8, 13, 16} { // the tail buffer and the 8-lane loop
			for at := 0; at < n; at += 3 {
				for which := range 3 { // NaN in g, u, dout
					g, u, dout := make([]float32, n), make([]float32, n), make([]float32, n)
					for i := range g {
						g[i], u[i], dout[i] = float32(i)-6, 0.5, 1.5
					}
					[][]float32{g, u, dout}[which][at] = nan
					out, dg, du := make([]float32, n), make([]float32, n), make([]float32, n)
					SwiGLU(out, g, u)
					SwiGLUBackward(dg, du, dout, g, u)
					for i := range g {
						fwdNaN := i == at && which < 2
						if (out[i] != out[i]) != fwdNaN || (dg[i] != dg[i]) != (i == at) {
							t.Fatalf("n=%d NaN in input %d at %d: element %d: out %g dg %g", n, which, at, i, out[i], dg[i])
						}
						// du = dout·(g·s) does not read u.
						if (du[i] != du[i]) != (i == at && which != 1) {
							t.Fatalf("n=%d NaN in input %d at %d: element %d: du %g", n, which, at, i, du[i])
						}
					}
				}
			}
		}

		g := []float32{100, -100, 88, -88, 87.5, -87.5, 1000, -1000, 0, 30, -30}
		n := len(g)
		u, dout := make([]float32, n), make([]float32, n)
		for i := range u {
			u[i], dout[i] = 0.75, -2
		}
		out, dg, du := make([]float32, n), make([]float32, n), make([]float32, n)
		SwiGLU(out, g, u)
		SwiGLUBackward(dg, du, dout, g, u)
		for i, x := range g {
			for _, v := range []float32{out[i], dg[i], du[i]} {
				if math.IsNaN(float64(v)) || math.IsInf(float64(v), 0) {
					t.Fatalf("g=%g: out %g dg %g du %g, want finite", x, out[i], dg[i], du[i])
				}
			}
			switch {
			case x >= 88: // σ = 1 exactly: silu(g) = g, silu'(g) = 1
				if out[i] != x*0.75 || dg[i] != -2*0.75 || du[i] != -2*x {
					t.Fatalf("g=%g: out %g dg %g du %g, want %g %g %g", x, out[i], dg[i], du[i], x*0.75, -2*0.75, -2*x)
				}
			case x <= -88: // σ ≈ e^−88, the clamp: everything vanishes
				if math.Abs(float64(out[i])) > 1e-30 || math.Abs(float64(dg[i])) > 1e-30 || math.Abs(float64(du[i])) > 1e-30 {
					t.Fatalf("g=%g: out %g dg %g du %g, want ≈ 0", x, out[i], dg[i], du[i])
				}
			case x == 0:
				if out[i] != 0 || dg[i] != -2*0.75*0.5 || du[i] != 0 {
					t.Fatalf("g=0: out %g dg %g du %g, want 0 %g 0", out[i], dg[i], du[i], -2*0.75*0.5)
				}
			}
		}
		if s := Sigmoid(0); s != 0.5 {
			t.Fatalf("Sigmoid(0) = %g", s)
		}
	})
}

// TestSwiGLUMatchesAsm checks the assembly two ways. Bit for bit against the same float32
// operations done in Go on ExpSum's exponentials (the path the CPU backend took before SwiGLU,
// so its results are unchanged). And against the Go twin, which differs only in its exponential
// (Exp is within 1 ulp of the lanes, which fuse their multiply-adds): the rounding of 1 + e, the
// division and the products can turn that ulp into 3 or 4 ulps of a result whose binade is
// lower, so the bound is 4·2⁻²³ of the result's size (≈ 2.7 the largest seen over 2²⁰ random
// inputs; strictly in ulps of the result, up to 4). The dgate term is measured against its
// scale |dout·u|·s·(1 + |g|), as it cancels near g ≈ −1.28, and the sums dg0 + term and
// du0 + term against |dg0| + scale and |du0| + |term|.
func TestSwiGLUMatchesAsm(t *testing.T) {
	if !hasAsm() {
		t.Skip("no AVX2+FMA on this CPU: only the Go implementation runs")
	}
	r := rand.New(rand.NewPCG(19, 20))
	const n = 1 << 16
	g, u, dout := randVec(r, n, -30, 30), randVec(r, n, -3, 3), randVec(r, n, -2, 2)
	copy(g, randVec(r, n/2, -3, 3)) // dense where σ bends
	copy(g[n-8:], []float32{100, -100, 88, -88, 87.5, -87.5, float32(math.NaN()), 0})
	dg0, du0 := randVec(r, n, -1, 1), randVec(r, n, -1, 1)
	run := func(impl string) (out, dg, du []float32) {
		prev := SetImpl(impl)
		defer SetImpl(prev)
		out = make([]float32, n)
		dg, du = append([]float32(nil), dg0...), append([]float32(nil), du0...)
		SwiGLU(out, g, u)
		SwiGLUBackward(dg, du, dout, g, u)
		return
	}
	ao, adg, adu := run("avx2")
	gout, gdg, gdu := run("go")

	prev := SetImpl("avx2")
	e := make([]float32, n)
	ExpSum(e, g, 0, -1)
	SetImpl(prev)
	for i, x := range g {
		s := 1 / (1 + e[i])
		wo := float32(x*s) * u[i]
		wg := dg0[i] + float32(float32(dout[i]*u[i])*float32(s*float32(1+float32(x*(1-s)))))
		wu := du0[i] + float32(dout[i]*float32(x*s))
		if !same32(ao[i], wo) || !same32(adg[i], wg) || !same32(adu[i], wu) {
			t.Fatalf("g=%g u=%g dout=%g: asm %g %g %g, Go on ExpSum %g %g %g", x, u[i], dout[i], ao[i], adg[i], adu[i], wo, wg, wu)
		}
	}

	relUlps := func(a, b float32, scale float64) float64 {
		if same32(a, b) {
			return 0
		}
		return math.Abs(float64(a)-float64(b)) / (scale * 0x1p-23)
	}
	var worst [3]float64
	for i := range g {
		s := float64(Sigmoid(g[i]))
		d := [3]float64{
			relUlps(ao[i], gout[i], math.Abs(float64(gout[i]))),
			relUlps(adg[i], gdg[i], math.Abs(float64(dout[i]*u[i]))*s*(1+math.Abs(float64(g[i])))+math.Abs(float64(dg0[i]))),
			relUlps(adu[i], gdu[i], math.Abs(float64(dout[i]*g[i]))*s+math.Abs(float64(du0[i]))),
		}
		for k := range d {
			if !(d[k] <= 4) {
				t.Fatalf("g=%g u=%g dout=%g: asm %g %g %g, Go %g %g %g (%.2f %.2f %.2f ulps)", g[i], u[i], dout[i], ao[i], adg[i], adu[i], gout[i], gdg[i], gdu[i], d[0], d[1], d[2])
			}
			worst[k] = max(worst[k], d[k])
		}
	}
	t.Logf("largest asm−Go differences, in 2⁻²³ of the size: out %.2f, dgate %.2f, dup %.2f", worst[0], worst[1], worst[2])
}

// The benchmarks run a row that stays in L2 (the backward's five rows: 320 KiB). "old" is the
// path the CPU backend took before SwiGLU: vec.ExpSum into a 256-element stack chunk, then
// scalar Go loops for the sigmoid and the products.
const benchN = 16384

func benchImpls(b *testing.B, old func(), cur func()) {
	b.Run("old", func(b *testing.B) {
		prev := SetImpl("avx2")
		defer SetImpl(prev)
		for b.Loop() {
			old()
		}
		b.ReportMetric(float64(b.Elapsed().Nanoseconds())/float64(b.N*benchN), "ns/elem")
	})
	names := []string{"go"}
	if hasAsm() {
		names = append(names, "avx2")
	}
	for _, name := range names {
		b.Run(name, func(b *testing.B) {
			prev := SetImpl(name)
			defer SetImpl(prev)
			for b.Loop() {
				cur()
			}
			b.ReportMetric(float64(b.Elapsed().Nanoseconds())/float64(b.N*benchN), "ns/elem")
		})
	}
}

const oldChunk = 256

func oldSigmoidChunk(sig *[oldChunk]float32, g []float32) {
	e := sig[:len(g)]
	ExpSum(e, g, 0, -1)
	for i, v := range e {
		e[i] = 1 / (1 + v)
	}
}

func BenchmarkSwiGLU(b *testing.B) {
	r := rand.New(rand.NewPCG(1, 1))
	g, u := randVec(r, benchN, -6, 6), randVec(r, benchN, -2, 2)
	out := make([]float32, benchN)
	b.SetBytes(3 * 4 * benchN)
	benchImpls(b, func() {
		var sig [oldChunk]float32
		for c0 := 0; c0 < benchN; c0 += oldChunk {
			c1 := min(benchN, c0+oldChunk)
			o, g, u := out[c0:c1], g[c0:c1], u[c0:c1]
			oldSigmoidChunk(&sig, g)
			for i, s := range sig[:len(g)] {
				o[i] = (g[i] * s) * u[i]
			}
		}
	}, func() { SwiGLU(out, g, u) })
}

func BenchmarkSwiGLUBackward(b *testing.B) {
	r := rand.New(rand.NewPCG(1, 1))
	g, u, dout := randVec(r, benchN, -6, 6), randVec(r, benchN, -2, 2), randVec(r, benchN, -1, 1)
	dg, du := make([]float32, benchN), make([]float32, benchN)
	b.SetBytes(7 * 4 * benchN)
	benchImpls(b, func() {
		var sig [oldChunk]float32
		for c0 := 0; c0 < benchN; c0 += oldChunk {
			c1 := min(benchN, c0+oldChunk)
			do, g, u := dout[c0:c1], g[c0:c1], u[c0:c1]
			oldSigmoidChunk(&sig, g)
			dg := dg[c0:c1]
			for i, s := range sig[:len(g)] {
				dg[i] += do[i] * u[i] * (s * (1 + g[i]*(1-s)))
			}
			du := du[c0:c1]
			for i, s := range sig[:len(g)] {
				du[i] += do[i] * (g[i] * s)
			}
		}
	}, func() { SwiGLUBackward(dg, du, dout, g, u) })
}
