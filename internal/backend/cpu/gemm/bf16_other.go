//go:build !amd64

package gemm

// widenRowsSIMD does nothing here: the portable loop of widenRows does all the work.
func widenRowsSIMD(d []float32, ldd int, h []uint16, off, lds, rows, cols int) int { return 0 }

// transposeWidenSIMD does nothing here: the portable loop does all the work.
func transposeWidenSIMD(d []float32, w int, h []uint16, off, stride, rows, kc int) (i8, k8 int) {
	return 0, 0
}

// transposeSIMD does nothing here: the portable loop does all the work.
func transposeSIMD(d []float32, w int, s []float32, off, stride, rows, kc int) (i8, k8 int) {
	return 0, 0
}
