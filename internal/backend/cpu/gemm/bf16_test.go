package gemm

import (
	"fmt"
	"math"
	"math/rand/v2"
	"testing"
)

// randBF16 returns n random bfloat16 bit patterns: mostly rounded normal values of a few
// scales, with signed zeros, subnormals and large values mixed in (products never overflow).
func randBF16(r *rand.Rand, n int) []uint16 {
	h := make([]uint16, n)
	for i := range h {
		switch r.IntN(50) {
		case 0:
			h[i] = uint16(r.IntN(2)) << 15 // ±0
		case 1:
			h[i] = uint16(r.IntN(2))<<15 | uint16(1+r.IntN(127)) // subnormal
		case 2:
			h[i] = uint16(r.IntN(2))<<15 | uint16(0x90+r.IntN(0x18))<<7 | uint16(r.IntN(128)) // large: 2^17..2^40
		default:
			f := float32(r.NormFloat64() * math.Ldexp(1, r.IntN(9)-4))
			h[i] = uint16((math.Float32bits(f) + 0x7FFF + (math.Float32bits(f)>>16)&1) >> 16) // round to nearest even
		}
	}
	return h
}

// forEachWiden runs f with the assembly widening on (where the CPU has it) and off.
func forEachWiden(t *testing.T, f func(t *testing.T)) {
	for _, on := range []bool{true, false} {
		name := "simd"
		if !on {
			name = "purego"
		}
		t.Run(name, func(t *testing.T) {
			prev := simdBF16
			simdBF16 = on
			defer func() { simdBF16 = prev }()
			f(t)
		})
	}
}

// widened returns the float32 values of h.
func widened(h []uint16) []float32 {
	f := make([]float32, len(h))
	for i, v := range h {
		f[i] = math.Float32frombits(uint32(v) << 16)
	}
	return f
}

func TestWiden(t *testing.T) { forEachWiden(t, testWiden) }

func testWiden(t *testing.T) {
	r := rand.New(rand.NewPCG(11, 12))
	for _, n := range []int{0, 1, 7, 8, 15, 16, 17, 31, 32, 33, 63, 64, 65, 100, 1000, 4099} {
		for _, lead := range []int{0, 1, 3} { // unaligned starts
			h := randBF16(r, n+lead)[lead:]
			dst := make([]float32, n+1)
			sentinel := float32(r.NormFloat64())
			dst[n] = sentinel
			Widen(dst[:n], h)
			want := widened(h)
			for i := 0; i < n; i++ {
				if math.Float32bits(dst[i]) != math.Float32bits(want[i]) {
					t.Fatalf("n=%d lead=%d: dst[%d] = %#x, want %#x", n, lead, i, math.Float32bits(dst[i]), math.Float32bits(want[i]))
				}
			}
			if dst[n] != sentinel {
				t.Fatalf("n=%d: wrote past the end", n)
			}
		}
	}
	// Every bit pattern.
	h := make([]uint16, 1<<16)
	for i := range h {
		h[i] = uint16(i)
	}
	dst := make([]float32, len(h))
	Widen(dst, h)
	for i, v := range dst {
		if math.Float32bits(v) != uint32(i)<<16 {
			t.Fatalf("Widen(%#04x) = %#08x", i, math.Float32bits(v))
		}
	}
}

func TestTransposeWiden(t *testing.T) { forEachWiden(t, testTransposeWiden) }

func testTransposeWiden(t *testing.T) {
	r := rand.New(rand.NewPCG(13, 14))
	for _, w := range []int{4, 6, 8, 12, 16, 32} {
		for _, rows := range []int{1, 3, 5, 7, 8, 9, 15, 16, 17, 31, 32} {
			if rows > w {
				continue
			}
			for _, kc := range []int{1, 3, 4, 7, 8, 9, 16, 17, 63, 256} {
				stride := kc + r.IntN(20)
				off := r.IntN(9)
				h := randBF16(r, off+(rows-1)*stride+kc)
				d := make([]float32, kc*w)
				for i := range d {
					d[i] = -7 // untouched columns keep it
				}
				transposeWidenInto(d, w, h, off, stride, rows, kc)
				for k := 0; k < kc; k++ {
					for i := 0; i < w; i++ {
						want := float32(-7)
						if i < rows {
							want = BF16ToFloat32(h[off+i*stride+k])
						}
						if math.Float32bits(d[k*w+i]) != math.Float32bits(want) {
							t.Fatalf("w=%d rows=%d kc=%d stride=%d off=%d: d[%d, %d] = %g, want %g", w, rows, kc, stride, off, k, i, d[k*w+i], want)
						}
					}
				}
			}
		}
	}
}

// bf16Layout is a product form with a bfloat16 operand: the float32 views of the widened
// values and the same views over the bits.
type bf16Layout struct {
	name string
	// views returns A (m, k) and B (k, n) as float32 views and as the views under test.
	views func(r *rand.Rand, m, n, k int) (a, b, ah, bh Mat)
}

var bf16Layouts = []bf16Layout{
	// NT: y (T, out) = x (T, in) · Wᵀ with W (out, in) bfloat16 (MatMulForward).
	{"NT", func(r *rand.Rand, m, n, k int) (Mat, Mat, Mat, Mat) {
		x := RowMajor(randv(r, m*k), k)
		w := randBF16(r, n*k)
		return x, Transposed(widened(w), k), x, TransposedBF16(w, k)
	}},
	// NN: dx (T, in) += dy (T, out) · W with W (out, in) bfloat16 (MatMulBackward's dx).
	{"NN", func(r *rand.Rand, m, n, k int) (Mat, Mat, Mat, Mat) {
		dy := RowMajor(randv(r, m*k), k)
		w := randBF16(r, k*n)
		return dy, RowMajor(widened(w), n), dy, RowMajorBF16(w, n)
	}},
	// Both operands bfloat16, A row-major (packA's contiguous streams).
	{"NN_A", func(r *rand.Rand, m, n, k int) (Mat, Mat, Mat, Mat) {
		a, b := randBF16(r, m*k), randBF16(r, k*n)
		return RowMajor(widened(a), k), RowMajor(widened(b), n), RowMajorBF16(a, k), RowMajorBF16(b, n)
	}},
	// A transposed bfloat16 (packA's strided path), B float32.
	{"TN_A", func(r *rand.Rand, m, n, k int) (Mat, Mat, Mat, Mat) {
		a := randBF16(r, k*m)
		b := RowMajor(randv(r, k*n), n)
		return Transposed(widened(a), m), b, TransposedBF16(a, m), b
	}},
	// Strided on both axes (neither stride 1): the element-by-element packing path.
	{"strided", func(r *rand.Rand, m, n, k int) (Mat, Mat, Mat, Mat) {
		a := randBF16(r, 2*m*k)
		b := randBF16(r, 2*k*n)
		av, bv := Mat{RS: 2 * k, CS: 2}, Mat{RS: 2, CS: 2 * k}
		af, bf := av, bv
		av.H, bv.H = a, b
		af.D, bf.D = widened(a), widened(b)
		return af, bf, av, bv
	}},
}

// TestMulBF16Bitwise checks the bfloat16 contract: a product with a bfloat16 operand is
// bitwise the product with the widened float32 operand, for every kernel set, ragged shapes,
// both modes and several worker counts, with the assembly widening and without.
func TestMulBF16Bitwise(t *testing.T) { forEachWiden(t, testMulBF16Bitwise) }

func testMulBF16Bitwise(t *testing.T) {
	forEachImpl(t, func(t *testing.T) {
		r := rand.New(rand.NewPCG(21, 22))
		for _, L := range bf16Layouts {
			for _, sh := range shapes() {
				m, n, k := sh[0], sh[1], sh[2]
				a, b, ah, bh := L.views(r, m, n, k)
				ldc := n + r.IntN(3)
				for _, acc := range []bool{false, true} {
					c0 := randv(r, (m-1)*ldc+n)
					workers := 1 + r.IntN(3)
					want := append([]float32(nil), c0...)
					Mul(goRunner, workers, want, ldc, a, b, m, n, k, acc)
					got := append([]float32(nil), c0...)
					Mul(goRunner, workers, got, ldc, ah, bh, m, n, k, acc)
					for i := range got {
						if math.Float32bits(got[i]) != math.Float32bits(want[i]) {
							t.Fatalf("%s m=%d n=%d k=%d ldc=%d acc=%v workers=%d: C[%d] = %g with bf16, %g with widened f32",
								L.name, m, n, k, ldc, acc, workers, i, got[i], want[i])
						}
					}
				}
			}
		}
	})
}

// TestMulBF16Check checks a product with a bfloat16 weight against float64, so the bitwise test
// above cannot pass by computing the same wrong thing twice.
func TestMulBF16Check(t *testing.T) {
	r := rand.New(rand.NewPCG(23, 24))
	for _, L := range bf16Layouts[:2] {
		for _, sh := range [][3]int{{7, 17, 255}, {37, 50, 300}, {13, 33, 513}} {
			m, n, k := sh[0], sh[1], sh[2]
			a, b, ah, bh := L.views(r, m, n, k)
			c := make([]float32, m*n)
			Mul(goRunner, 2, c, n, ah, bh, m, n, k, false)
			check(t, fmt.Sprintf("%s bf16 %v", L.name, sh), c, nil, n, a, b, m, n, k)
		}
	}
}

func TestBF16ViewBoundsPanic(t *testing.T) {
	defer func() {
		if recover() == nil {
			t.Fatal("no panic for a short bfloat16 view")
		}
	}()
	Mul(nil, 1, make([]float32, 4), 2, RowMajor(make([]float32, 4), 2), RowMajorBF16(make([]uint16, 3), 2), 2, 2, 2, false)
}
