package gemm

import "math"

// bfloat16 operands. A bfloat16 value is the top half of a float32, so widening is exact: the
// 16 bits shifted up, the low mantissa bits zero (no avx512_bf16 is needed, and the development
// CPU has none). The driver widens a bfloat16 view while it packs the view's slivers or panels
// (packA, packB), so the micro-kernels see exactly the float32 values they would see for the
// widened matrix and the determinism contract carries over bit for bit. Memory and memory
// traffic for the operand halve; the packing does about the same work (on amd64 with AVX2 the
// widening runs in bf16_amd64.s: VPMOVZXWD + VPSLLD, with an 8×8 register transpose for
// transposed operands; elsewhere, and for ragged edges, in the Go loops below).

// simdBF16 lets tests switch the assembly widening off to check the portable loops.
var simdBF16 = true

// BF16ToFloat32 widens one bfloat16 bit pattern; it is exact.
func BF16ToFloat32(h uint16) float32 { return math.Float32frombits(uint32(h) << 16) }

// Widen sets dst[i] to the widened src[i] for i < len(dst); src must be at least as long.
func Widen(dst []float32, src []uint16) {
	widenRows(dst, 0, src[:len(dst)], 0, 0, 1, len(dst))
}

// widenRows sets d[r*ldd + c] = widen(h[off + r*lds + c]) for r < rows, c < cols.
func widenRows(d []float32, ldd int, h []uint16, off, lds, rows, cols int) {
	c0 := 0
	if simdBF16 {
		c0 = widenRowsSIMD(d, ldd, h, off, lds, rows, cols)
	}
	if c0 == cols {
		return
	}
	for r := 0; r < rows; r++ {
		dr := d[r*ldd+c0 : r*ldd+cols]
		for c, v := range h[off+r*lds+c0 : off+r*lds+cols] {
			dr[c] = math.Float32frombits(uint32(v) << 16)
		}
	}
}

// transposeWidenInto is transposeInto over bfloat16 streams: for i < rows and k < kc,
// d[k*w + i] = widen(h[off + i*stride + k]). Stream i (a row of A, or a column of a transposed
// B) starts at h[off + i*stride].
func transposeWidenInto(d []float32, w int, h []uint16, off, stride, rows, kc int) {
	i8, k8 := 0, 0
	if simdBF16 {
		i8, k8 = transposeWidenSIMD(d, w, h, off, stride, rows, kc) // whole 8×8 blocks
	}
	if k8 < kc {
		transposeWidenGo(d, w, h, off, stride, 0, i8, k8, kc) // the k tail of those streams
	}
	transposeWidenGo(d, w, h, off, stride, i8, rows, 0, kc) // the other streams
}

// transposeWidenGo does streams [i0, i1) × k [k0, kc) of transposeWidenInto, four k at a time
// so that every stream is read in order and d is written in order.
func transposeWidenGo(d []float32, w int, h []uint16, off, stride, i0, i1, k0, kc int) {
	n := i1 - i0
	if n <= 0 {
		return
	}
	var src [maxTile][]uint16
	for i := 0; i < n; i++ {
		o := off + (i0+i)*stride
		src[i] = h[o : o+kc]
	}
	k := k0
	for ; k+4 <= kc; k += 4 {
		d0 := d[k*w+i0 : k*w+i1]
		d1 := d[(k+1)*w+i0 : (k+1)*w+i1]
		d2 := d[(k+2)*w+i0 : (k+2)*w+i1]
		d3 := d[(k+3)*w+i0 : (k+3)*w+i1]
		for i, s := range src[:n] {
			s4 := s[k : k+4]
			d0[i] = math.Float32frombits(uint32(s4[0]) << 16)
			d1[i] = math.Float32frombits(uint32(s4[1]) << 16)
			d2[i] = math.Float32frombits(uint32(s4[2]) << 16)
			d3[i] = math.Float32frombits(uint32(s4[3]) << 16)
		}
	}
	for ; k < kc; k++ {
		dk := d[k*w+i0 : k*w+i1]
		for i, s := range src[:n] {
			dk[i] = math.Float32frombits(uint32(s[k]) << 16)
		}
	}
}
