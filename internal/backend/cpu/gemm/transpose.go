package gemm

// simdF32 lets tests switch the assembly transposes off to check the portable loops.
var simdF32 = true

// transposeF32 sets d[k*w + i] = s[off + i*stride + k] for i < rows, k < kc: `rows` contiguous
// float32 streams (rows of A, or columns of B in the NT form) become k-major slivers/panels of
// width w ≥ rows. Whole 8×k8 blocks (and the 6-row slivers of the AVX2 kernel) go through the
// assembly transposes where the CPU has them; the rest through the Go loop. Either way every
// element is copied, so the packed panels are bitwise the same.
func transposeF32(d []float32, w int, s []float32, off, stride, rows, kc int) {
	i8, k8 := 0, 0
	if simdF32 {
		i8, k8 = transposeSIMD(d, w, s, off, stride, rows, kc)
	}
	if k8 < kc {
		transposeGo(d, w, s, off, stride, 0, i8, k8, kc) // the k tail of those streams
	}
	transposeGo(d, w, s, off, stride, i8, rows, 0, kc) // the other streams
}

// transposeGo does streams [i0, i1) × k [k0, kc) of transposeF32, four k at a time so that
// every stream is read in order and d is written in order.
func transposeGo(d []float32, w int, s []float32, off, stride, i0, i1, k0, kc int) {
	n := i1 - i0
	if n <= 0 || k0 >= kc {
		return
	}
	var src [maxTile][]float32
	for i := 0; i < n; i++ {
		o := off + (i0+i)*stride
		src[i] = s[o : o+kc]
	}
	k := k0
	for ; k+4 <= kc; k += 4 {
		d0 := d[k*w+i0 : k*w+i1]
		d1 := d[(k+1)*w+i0 : (k+1)*w+i1]
		d2 := d[(k+2)*w+i0 : (k+2)*w+i1]
		d3 := d[(k+3)*w+i0 : (k+3)*w+i1]
		for i, r := range src[:n] {
			r4 := r[k : k+4]
			d0[i], d1[i], d2[i], d3[i] = r4[0], r4[1], r4[2], r4[3]
		}
	}
	for ; k < kc; k++ {
		dk := d[k*w+i0 : k*w+i1]
		for i, r := range src[:n] {
			dk[i] = r[k]
		}
	}
}
