package gemm

import (
	"fmt"
	"math"
	"math/rand/v2"
	"sync"
	"testing"
)

// usable returns every kernel set this CPU can run, opt-in ones included.
func usable() []string {
	s := Impls()
	for _, k := range optIn() {
		s = append(s, k.name)
	}
	return s
}

// forEachImpl runs f with each usable kernel set selected.
func forEachImpl(t *testing.T, f func(t *testing.T)) {
	for _, name := range usable() {
		t.Run(name, func(t *testing.T) {
			prev, err := SetImpl(name)
			if err != nil {
				t.Fatal(err)
			}
			defer SetImpl(prev)
			f(t)
		})
	}
}

// goRunner splits like the backend's parallelFor: chunks of whole align units, one goroutine
// each.
func goRunner(n, align, workers int, body Body) {
	units := (n + align - 1) / align
	workers = min(workers, units)
	var wg sync.WaitGroup
	for w := 0; w < workers; w++ {
		lo := min(n, units*w/workers*align)
		hi := min(n, units*(w+1)/workers*align)
		if lo >= hi {
			continue
		}
		wg.Add(1)
		go func() { defer wg.Done(); body.Run(lo, hi) }()
	}
	wg.Wait()
}

func randv(r *rand.Rand, n int) []float32 {
	v := make([]float32, n)
	for i := range v {
		v[i] = float32(r.NormFloat64())
	}
	return v
}

// layout describes how A and B are stored for one product of a training step.
type layout struct {
	name string
	// views returns A (m, k) and B (k, n) views over fresh random storage.
	views func(r *rand.Rand, m, n, k int) (a, b Mat)
}

var layouts = []layout{
	// NT: Y (T, M) = X (T, K) · Wᵀ, W (M, K) row-major.
	{"NT", func(r *rand.Rand, m, n, k int) (Mat, Mat) {
		return RowMajor(randv(r, m*k), k), Transposed(randv(r, n*k), k)
	}},
	// NN: dX (T, C) += dY (T, OC) · W (OC, C).
	{"NN", func(r *rand.Rand, m, n, k int) (Mat, Mat) {
		return RowMajor(randv(r, m*k), k), RowMajor(randv(r, k*n), n)
	}},
	// TN: dW (OC, C) += dYᵀ · X: dY (T, OC), X (T, C), k = T.
	{"TN", func(r *rand.Rand, m, n, k int) (Mat, Mat) {
		return Transposed(randv(r, k*m), m), RowMajor(randv(r, k*n), n)
	}},
}

func at(v Mat, i, j int) float64 { return float64(v.D[i*v.RS+j*v.CS]) }

// check compares C (m, n, stride ldc) with c0 + A·B (c0 nil: 0) in float64, each element
// relative to c0's magnitude plus Σ_k |a||b|.
func check(t *testing.T, what string, c, c0 []float32, ldc int, a, b Mat, m, n, k int) {
	t.Helper()
	worst := 0.0
	for i := 0; i < m; i++ {
		for j := 0; j < n; j++ {
			var s, scale float64
			for p := 0; p < k; p++ {
				s += at(a, i, p) * at(b, p, j)
				scale += math.Abs(at(a, i, p) * at(b, p, j))
			}
			if c0 != nil {
				s += float64(c0[i*ldc+j])
				scale += math.Abs(float64(c0[i*ldc+j]))
			}
			got := float64(c[i*ldc+j])
			if scale == 0 {
				if got != 0 {
					t.Fatalf("%s: C[%d,%d] = %g, want 0", what, i, j, got)
				}
				continue
			}
			if e := math.Abs(got-s) / scale; e > worst {
				worst = e
			}
		}
	}
	if worst > 1e-5 || math.IsNaN(worst) {
		t.Fatalf("%s: max rel error %.3g > 1e-5", what, worst)
	}
}

// shapes returns (m, n, k) triples: tiny, ragged around every tile and block size, multi-KC.
func shapes() [][3]int {
	s := [][3]int{{1, 1, 1}, {1, 2, 3}, {3, 1, 2}, {2, 3, 1}, {1, 1, 700}, {1, 33, 5}, {13, 1, 9},
		{6, 16, 256}, {12, 32, 257}, {7, 17, 255}, {13, 33, 513}, {25, 65, 31}, {37, 50, 300},
		{145, 70, 20}, {150, 2049 + 40, 3}, {5, 9, 1}, {200, 31, 600}}
	r := rand.New(rand.NewPCG(7, 7))
	for range 12 {
		s = append(s, [3]int{1 + r.IntN(90), 1 + r.IntN(90), 1 + r.IntN(600)})
	}
	return s
}

func TestMulVsFloat64(t *testing.T) {
	forEachImpl(t, func(t *testing.T) {
		r := rand.New(rand.NewPCG(1, 2))
		for _, L := range layouts {
			for _, sh := range shapes() {
				m, n, k := sh[0], sh[1], sh[2]
				a, b := L.views(r, m, n, k)
				ldc := n + r.IntN(3) // a row stride wider than n must leave the gap alone
				for _, acc := range []bool{false, true} {
					c := randv(r, (m-1)*ldc+n)
					c0 := append([]float32(nil), c...)
					workers := 1 + r.IntN(3)
					Mul(goRunner, workers, c, ldc, a, b, m, n, k, acc)
					what := fmt.Sprintf("%s m=%d n=%d k=%d ldc=%d acc=%v workers=%d", L.name, m, n, k, ldc, acc, workers)
					if acc {
						check(t, what, c, c0, ldc, a, b, m, n, k)
					} else {
						check(t, what, c, nil, ldc, a, b, m, n, k)
					}
					for i := 0; i < m-1; i++ { // the gap between rows is untouched
						for j := n; j < ldc; j++ {
							if c[i*ldc+j] != c0[i*ldc+j] {
								t.Fatalf("%s: wrote C[%d,%d] outside the product", what, i, j)
							}
						}
					}
				}
			}
		}
	})
}

func TestMulKZero(t *testing.T) {
	c := []float32{1, 2, 3, 4}
	Mul(nil, 1, c, 2, Mat{}, Mat{}, 2, 2, 0, true)
	if c[0] != 1 || c[3] != 4 {
		t.Fatalf("k=0 accumulate changed C: %v", c)
	}
	Mul(nil, 1, c, 2, Mat{}, Mat{}, 2, 2, 0, false)
	for _, v := range c {
		if v != 0 {
			t.Fatalf("k=0 overwrite left %v", c)
		}
	}
}

// TestDeterminism checks the contract: bitwise the same results whatever the thread count,
// and a row of C computed alone (a single token) equal to the same row inside a larger
// product, for every layout and both modes.
func TestDeterminism(t *testing.T) {
	forEachImpl(t, func(t *testing.T) {
		r := rand.New(rand.NewPCG(3, 4))
		for _, L := range layouts {
			for _, sh := range [][3]int{{37, 300, 700}, {100, 45, 300}, {13, 2100, 260}, {300, 20, 33}} {
				m, n, k := sh[0], sh[1], sh[2]
				a, b := L.views(r, m, n, k)
				c0 := randv(r, m*n)
				for _, acc := range []bool{false, true} {
					ref := append([]float32(nil), c0...)
					Mul(nil, 1, ref, n, a, b, m, n, k, acc)
					for _, workers := range []int{2, 3, 5} {
						c := append([]float32(nil), c0...)
						Mul(goRunner, workers, c, n, a, b, m, n, k, acc)
						for i := range c {
							if math.Float32bits(c[i]) != math.Float32bits(ref[i]) {
								t.Fatalf("%s %v acc=%v: %d workers differ at %d: %g vs %g", L.name, sh, acc, workers, i, c[i], ref[i])
							}
						}
					}
					// Rows alone and in small groups.
					for _, rows := range [][2]int{{0, 1}, {m - 1, m}, {m / 2, m/2 + 1}, {1, min(m, 4)}} {
						i0, i1 := rows[0], rows[1]
						sub := append([]float32(nil), c0[i0*n:i1*n]...)
						as := Mat{D: a.D[i0*a.RS:], RS: a.RS, CS: a.CS}
						Mul(nil, 1, sub, n, as, b, i1-i0, n, k, acc)
						for i := range sub {
							if math.Float32bits(sub[i]) != math.Float32bits(ref[i0*n+i]) {
								t.Fatalf("%s %v acc=%v: rows [%d,%d) alone differ at %d", L.name, sh, acc, i0, i1, i)
							}
						}
					}
					// A column range alone (one output feature of a wide layer).
					j0, j1 := n/3, n/3+1
					sub := make([]float32, m)
					for i := range sub {
						sub[i] = c0[i*n+j0]
					}
					bs := Mat{D: b.D[j0*b.CS:], RS: b.RS, CS: b.CS}
					Mul(nil, 1, sub, 1, a, bs, m, j1-j0, k, acc)
					for i := range sub {
						if math.Float32bits(sub[i]) != math.Float32bits(ref[i*n+j0]) {
							t.Fatalf("%s %v acc=%v: column %d alone differs at row %d", L.name, sh, acc, j0, i)
						}
					}
				}
			}
		}
	})
}

func TestBoundsPanic(t *testing.T) {
	defer func() {
		if recover() == nil {
			t.Fatal("no panic for a short C")
		}
	}()
	Mul(nil, 1, make([]float32, 3), 2, RowMajor(make([]float32, 4), 2), RowMajor(make([]float32, 4), 2), 2, 2, 2, false)
}

// TestDirectOperandsBitwise: reading a row-major A or B in place (the strided kernel, used for
// skinny products) gives the same bits as packing both, for every layout, ragged shapes that
// cover full and edge tiles, strides wider than the matrix, with and without acc, 1–2 workers.
func TestDirectOperandsBitwise(t *testing.T) {
	forEachImpl(t, func(t *testing.T) {
		r := rand.New(rand.NewPCG(21, 22))
		sh := [][3]int{{6, 16, 8}, {12, 32, 300}, {13, 17, 257}, {64, 64, 100}, {1024, 16, 70}, {16, 600, 90},
			{7, 64, 513}, {200, 5, 33}, {3, 50, 1}}
		for range 10 {
			sh = append(sh, [3]int{1 + r.IntN(70), 1 + r.IntN(70), 1 + r.IntN(600)})
		}
		for _, L := range layouts {
			for _, s := range sh {
				m, n, k := s[0], s[1], s[2]
				a, b := L.views(r, m, n, k)
				// A wider row stride, so that reading in place must honour RS.
				if a.CS == 1 {
					a = Mat{D: append(randv(r, 3), a.D...)[3:], RS: a.RS, CS: 1}
				}
				c0 := randv(r, m*n+5)
				for _, acc := range []bool{false, true} {
					for workers := 1; workers <= 2; workers++ {
						want := append([]float32(nil), c0...)
						prev := direct
						direct.a, direct.b = false, false
						Mul(goRunner, workers, want, n, a, b, m, n, k, acc)
						for _, d := range [][2]bool{{true, false}, {false, true}, {true, true}} {
							direct.a, direct.b = d[0], d[1]
							got := append([]float32(nil), c0...)
							Mul(goRunner, workers, got, n, a, b, m, n, k, acc)
							for i := range got {
								if math.Float32bits(got[i]) != math.Float32bits(want[i]) {
									direct = prev
									t.Fatalf("%s %dx%dx%d acc=%v workers=%d direct=%v: C[%d] = %g, packed gives %g",
										L.name, m, n, k, acc, workers, d, i, got[i], want[i])
								}
							}
						}
						direct = prev
					}
				}
			}
		}
	})
}
