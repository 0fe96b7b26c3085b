package gemm

import (
	"math"
	"math/rand/v2"
	"testing"
)

// TestTransposeF32 checks the packing transposes (assembly where the CPU has it) against the
// definition d[k*w + i] = s[off + i*stride + k], element for element, on the panel widths the
// kernels use and ragged stream counts and lengths, and that nothing outside the panel is
// written.
func TestTransposeF32(t *testing.T) {
	r := rand.New(rand.NewPCG(11, 12))
	for _, simd := range []bool{true, false} {
		prev := simdF32
		simdF32 = simd
		for _, c := range []struct{ w, rows int }{{6, 6}, {6, 5}, {6, 1}, {16, 16}, {16, 13}, {16, 8}, {16, 7}, {12, 12}, {32, 32}, {32, 19}, {4, 4}, {8, 8}} {
			for _, kc := range []int{1, 7, 8, 9, 16, 63, 256, 257} {
				stride := kc + r.IntN(40)
				off := r.IntN(9)
				s := randv(r, off+(c.rows-1)*stride+kc+r.IntN(5))
				d := make([]float32, kc*c.w+8)
				for i := range d {
					d[i] = float32(math.NaN())
				}
				transposeF32(d, c.w, s, off, stride, c.rows, kc)
				for k := 0; k < kc; k++ {
					for i := 0; i < c.w; i++ {
						got := d[k*c.w+i]
						if i >= c.rows {
							if got == got {
								t.Fatalf("simd=%v w=%d rows=%d kc=%d: wrote padding (%d, %d)", simd, c.w, c.rows, kc, k, i)
							}
							continue
						}
						if want := s[off+i*stride+k]; math.Float32bits(got) != math.Float32bits(want) {
							t.Fatalf("simd=%v w=%d rows=%d kc=%d: (%d, %d) = %g, want %g", simd, c.w, c.rows, kc, k, i, got, want)
						}
					}
				}
				for _, v := range d[kc*c.w:] {
					if v == v {
						t.Fatalf("simd=%v w=%d rows=%d kc=%d: wrote past the panel", simd, c.w, c.rows, kc)
					}
				}
			}
		}
		simdF32 = prev
	}
}
