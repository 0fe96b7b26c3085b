package gemm

// widenRowsAVX2 sets d[r*ldd + c] = widen(h[r*lds + c]) for r < rows, c < cols8; cols8 is a
// positive multiple of 8.
//
//go:noescape
func widenRowsAVX2(d *float32, ldd int, h *uint16, lds int, rows, cols8 int)

// transposeWiden8AVX2 sets d[k*ldd + i] = widen(h[i*lds + k]) for i < 8, k < kc8; kc8 is a
// positive multiple of 8.
//
//go:noescape
func transposeWiden8AVX2(d *float32, ldd int, h *uint16, lds int, kc8 int)

// useAVX2BF16 is whether the AVX2 widening routines can run (any CPU with the AVX2 kernels).
var useAVX2BF16 = hasAVX2()

// widenRowsSIMD widens the first cols&^7 columns of each row (see widenRows) and returns how
// many columns it did.
func widenRowsSIMD(d []float32, ldd int, h []uint16, off, lds, rows, cols int) int {
	c8 := cols &^ 7
	if !useAVX2BF16 || c8 == 0 || rows == 0 {
		return 0
	}
	// The last element each side touches, checked here: the routine itself does no bounds checks.
	_ = d[(rows-1)*ldd+c8-1]
	_ = h[off+(rows-1)*lds+c8-1]
	widenRowsAVX2(&d[0], ldd, &h[off], lds, rows, c8)
	return c8
}

// transposeWidenSIMD does the whole 8×8 blocks of transposeWidenInto and returns how many
// streams and how many k it did for them: streams [0, i8) × k [0, k8).
func transposeWidenSIMD(d []float32, w int, h []uint16, off, stride, rows, kc int) (i8, k8 int) {
	i8, k8 = rows&^7, kc&^7
	if !useAVX2BF16 || i8 == 0 || k8 == 0 {
		return 0, 0
	}
	for i := 0; i < i8; i += 8 {
		_ = d[(k8-1)*w+i+7]
		_ = h[off+(i+7)*stride+k8-1]
		transposeWiden8AVX2(&d[i], w, &h[off+i*stride], stride, k8)
	}
	return i8, k8
}
