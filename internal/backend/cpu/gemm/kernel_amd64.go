package gemm

import "golang.org/x/sys/cpu"

// kern6x16AVX2 is the AVX2+FMA micro-kernel: a 6×16 tile in 12 ymm accumulators.
//
//go:noescape
func kern6x16AVX2(kc int, a, b, c *float32, ldc int, acc int)

// kern12x32AVX512 is the AVX-512 micro-kernel: a 12×32 tile in 24 zmm accumulators.
//
//go:noescape
func kern12x32AVX512(kc int, a, b, c *float32, ldc int, acc int)

var (
	avx2KS   = newKernels("avx2", 6, 16, 320, 144, 2048, kern6x16AVX2)
	avx512KS = newKernels("avx512", 12, 32, 256, 144, 2048, kern12x32AVX512)
)

func init() { avx2KS.skern = kern6x16AVX2s }

func hasAVX2() bool   { return cpu.X86.HasAVX2 && cpu.X86.HasFMA }
func hasAVX512() bool { return cpu.X86.HasAVX512F && cpu.X86.HasAVX2 && cpu.X86.HasFMA }

// archKernels returns the kernel sets chosen automatically on this CPU, best first.
//
// The AVX-512 kernel is not among them yet: it has not been run on an AVX-512 machine (the
// development VM exposes AVX2 only). It is selectable with LORACTL_GEMM=avx512 or SetImpl
// (see optIn) until a test run on such a CPU passes.
func archKernels() []*kernels {
	if hasAVX2() {
		return []*kernels{avx2KS}
	}
	return nil
}

// optIn returns the kernel sets this CPU can run that are only used when asked for by name.
func optIn() []*kernels {
	if hasAVX512() {
		return []*kernels{avx512KS}
	}
	return nil
}

// kern6x16AVX2s is the AVX2 6×16 kernel over strided operands (see kernel_strided_amd64.s):
// A element (i, k) at a[i·rsa + k·csa], B row k at b[k·ldb:]. It lets the driver read a
// row-major A or B in place instead of packing it.
//
//go:noescape
func kern6x16AVX2s(kc int, a *float32, rsa, csa int, b *float32, ldb int, c *float32, ldc int, acc int)
