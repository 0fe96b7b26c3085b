//go:build !amd64

package gemm

// archKernels returns no assembly kernels: only the portable Go kernel runs here.
func archKernels() []*kernels { return nil }

// optIn returns no opt-in kernel sets.
func optIn() []*kernels { return nil }
