package gemm

// transpose8AVX2 sets dst[k*ldd + i] = src[i*lds + k] for i < 8, k < kc8; kc8 is a positive
// multiple of 8 and ldd ≥ 8.
//
//go:noescape
func transpose8AVX2(dst *float32, ldd int, src *float32, lds int, kc8 int)

// transpose6AVX2 sets dst[k*6 + i] = src[i*lds + k] for i < 6, k < kc8; kc8 is a positive
// multiple of 8.
//
//go:noescape
func transpose6AVX2(dst *float32, src *float32, lds int, kc8 int)

// useAVX2F32 is whether the AVX2 transposes can run.
var useAVX2F32 = hasAVX2()

// transposeSIMD does the blocks of transposeF32 the assembly covers and returns the streams
// [0, i8) and the k [0, k8) it did.
func transposeSIMD(d []float32, w int, s []float32, off, stride, rows, kc int) (i8, k8 int) {
	k8 = kc &^ 7
	if !useAVX2F32 || k8 == 0 {
		return 0, 0
	}
	if w == 6 && rows == 6 {
		// One sliver of the 6×16 kernel.
		_ = d[(k8-1)*6+5]
		_ = s[off+5*stride+k8-1]
		transpose6AVX2(&d[0], &s[off], stride, k8)
		return 6, k8
	}
	i8 = rows &^ 7
	if i8 == 0 {
		return 0, 0
	}
	for i := 0; i < i8; i += 8 {
		_ = d[(k8-1)*w+i+7]
		_ = s[off+(i+7)*stride+k8-1]
		transpose8AVX2(&d[i], w, &s[off+i*stride], stride, k8)
	}
	return i8, k8
}
