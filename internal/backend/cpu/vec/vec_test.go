package vec

import (
	"math"
	"math/rand/v2"
	"testing"
)

// impls runs f under every implementation this CPU has.
func impls(t *testing.T, f func(t *testing.T)) {
	names := []string{"go"}
	if hasAsm() {
		names = append(names, "avx2")
	}
	for _, name := range names {
		t.Run(name, func(t *testing.T) {
			prev := SetImpl(name)
			defer SetImpl(prev)
			if Impl() != name {
				t.Fatalf("SetImpl(%q) gave %q", name, Impl())
			}
			f(t)
		})
	}
}

func randVec(r *rand.Rand, n int, lo, hi float64) []float32 {
	x := make([]float32, n)
	for i := range x {
		x[i] = float32(lo + (hi-lo)*r.Float64())
	}
	return x
}

// lengths covers the empty slice, every tail length and the unrolled loops.
var lengths = []int{0, 1, 3, 7, 8, 9, 15, 16, 17, 31, 33, 100, 1000, 4099}

func TestExpSum(t *testing.T) {
	impls(t, func(t *testing.T) {
		r := rand.New(rand.NewPCG(1, 2))
		for _, n := range lengths {
			x := randVec(r, n, -90, 10)
			shift, scale := float32(r.Float64()*4-2), float32(0.5+r.Float64())
			dst := make([]float32, n)
			got := ExpSum(dst, x, shift, scale)
			var want float64
			for i, v := range x {
				a := float64((v - shift) * scale) // the argument as the routine forms it
				e := math.Exp(a)
				if a < -87 {
					if dst[i] != 0 {
						t.Fatalf("n=%d: exp(%g) = %g, want 0 below -87", n, a, dst[i])
					}
					continue
				}
				want += float64(dst[i])
				if rel := math.Abs(float64(dst[i])-e) / e; rel > 3e-7 {
					t.Fatalf("n=%d i=%d: exp(%g) = %g, want %g (rel %.2g)", n, i, a, dst[i], e, rel)
				}
			}
			if math.Abs(got-want) > 1e-12*math.Max(1, want) {
				t.Fatalf("n=%d: sum %g, the elements add to %g", n, got, want)
			}
		}
	})
}

func TestExpSumInPlaceAndSpecials(t *testing.T) {
	impls(t, func(t *testing.T) {
		x := []float32{0, 1, -1, 88, 100, -87.5, -1000, float32(math.NaN()), 2, 3, float32(math.Inf(-1))}
		want := make([]float32, len(x))
		for i, v := range x {
			want[i] = Exp(v)
		}
		got := append([]float32(nil), x...)
		sum := ExpSum(got, got, 0, 1)
		if !math.IsNaN(sum) {
			t.Errorf("sum with a NaN = %g, want NaN", sum)
		}
		for i := range x {
			if math.Float32bits(got[i]) != math.Float32bits(want[i]) && !(got[i] != got[i] && want[i] != want[i]) {
				t.Errorf("exp(%g) in place = %g, Exp gives %g", x[i], got[i], want[i])
			}
		}
		if got[0] != 1 || got[6] != 0 || got[5] != 0 || got[10] != 0 || got[7] == got[7] {
			t.Errorf("specials: exp(0)=%g exp(-1000)=%g exp(-87.5)=%g exp(-Inf)=%g exp(NaN)=%g", got[0], got[6], got[5], got[10], got[7])
		}
		if e88 := math.Exp(88); math.Abs(float64(got[3])-e88)/e88 > 3e-7 || got[4] != got[3] {
			t.Errorf("exp(88)=%g exp(100)=%g, want %g for both (clamped)", got[3], got[4], e88)
		}
	})
}

// TestExpMatchesAsm checks that the Go twin of the lanes agrees with the assembly to 1 ulp.
func TestExpMatchesAsm(t *testing.T) {
	if !hasAsm() {
		t.Skip("no AVX2+FMA on this CPU: only the Go implementation runs")
	}
	prev := SetImpl("avx2")
	defer SetImpl(prev)
	r := rand.New(rand.NewPCG(3, 4))
	x := randVec(r, 4096, -88, 88)
	dst := make([]float32, len(x))
	ExpSum(dst, x, 0, 1)
	for i, v := range x {
		g, w := dst[i], Exp(v)
		if d := int64(math.Float32bits(g)) - int64(math.Float32bits(w)); d > 1 || d < -1 {
			t.Fatalf("exp(%g): asm %g, Go %g (%d ulp)", v, g, w, d)
		}
	}
}

func TestMax(t *testing.T) {
	impls(t, func(t *testing.T) {
		r := rand.New(rand.NewPCG(5, 6))
		for _, n := range lengths {
			x := randVec(r, n, -50, 50)
			want := float32(math.Inf(-1))
			for _, v := range x {
				want = max(want, v)
			}
			if got := Max(x); got != want {
				t.Fatalf("n=%d: Max = %g, want %g", n, got, want)
			}
			if n > 0 {
				for _, at := range []int{0, n / 2, n - 1} {
					y := append([]float32(nil), x...)
					y[at] = float32(math.NaN())
					if got := Max(y); got == got {
						t.Fatalf("n=%d: NaN at %d: Max = %g, want NaN", n, at, got)
					}
				}
			}
		}
	})
}

func TestDotAxpyScale(t *testing.T) {
	impls(t, func(t *testing.T) {
		r := rand.New(rand.NewPCG(7, 8))
		for _, n := range lengths {
			a, b := randVec(r, n, -1, 1), randVec(r, n, -1, 1)
			var want, mag float64
			for i := range a {
				want += float64(a[i]) * float64(b[i])
				mag += math.Abs(float64(a[i]) * float64(b[i]))
			}
			if got := Dot(a, b); math.Abs(float64(got)-want) > 1e-6*(mag+1e-30) {
				t.Fatalf("n=%d: Dot = %g, want %g", n, got, want)
			}
			alpha := float32(r.Float64()*2 - 1)
			y := randVec(r, n, -1, 1)
			y0 := append([]float32(nil), y...)
			Axpy(y, a, alpha)
			for i := range y {
				w := float64(y0[i]) + float64(alpha)*float64(a[i])
				if math.Abs(float64(y[i])-w) > 1.2e-7*(math.Abs(w)+math.Abs(float64(alpha*a[i]))) {
					t.Fatalf("n=%d: Axpy[%d] = %g, want %g", n, i, y[i], w)
				}
			}
			z := randVec(r, n, -1, 1)
			z0 := append([]float32(nil), z...)
			Scale(z, alpha)
			for i := range z {
				if z[i] != z0[i]*alpha {
					t.Fatalf("n=%d: Scale[%d] = %g, want %g", n, i, z[i], z0[i]*alpha)
				}
			}
		}
	})
}

func BenchmarkExpSum(b *testing.B) {
	x := randVec(rand.New(rand.NewPCG(1, 1)), 32000, -20, 0)
	dst := make([]float32, len(x))
	b.SetBytes(int64(4 * len(x)))
	for b.Loop() {
		ExpSum(dst, x, 0, 1)
	}
	b.ReportMetric(float64(b.Elapsed().Nanoseconds())/float64(b.N*len(x)), "ns/elem")
}

func BenchmarkMax(b *testing.B) {
	x := randVec(rand.New(rand.NewPCG(1, 1)), 32000, -20, 0)
	b.SetBytes(int64(4 * len(x)))
	for b.Loop() {
		Max(x)
	}
}
