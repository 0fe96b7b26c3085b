package cpu

import (
	"fmt"
	"math/rand/v2"
	"testing"
)

// BenchmarkMatMulForward times the GEMM on generation (N=1) and prefill/training shapes and
// reports GFLOP/s (2·N·K·M flops per call).
func BenchmarkMatMulForward(b *testing.B) {
	for _, sh := range []struct{ N, K, M int }{
		{1, 576, 1536},  // SmolLM-135M MLP up, one token
		{1, 576, 49152}, // SmolLM-135M lm_head, one token
		{64, 576, 1536}, // prefill
		{256, 1024, 1024},
	} {
		b.Run(fmt.Sprintf("N%d_K%d_M%d", sh.N, sh.K, sh.M), func(b *testing.B) {
			be := New()
			r := rand.New(rand.NewPCG(1, 1))
			x := buf(be, randn(r, sh.N*sh.K)) // (N, K)
			w := buf(be, randn(r, sh.M*sh.K)) // (M, K)
			out := be.Alloc(sh.N * sh.M)      // (N, M)
			b.ResetTimer()
			for i := 0; i < b.N; i++ {
				be.MatMulForward(out, x, w, nil, sh.N, sh.K, sh.M)
			}
			b.ReportMetric(2*float64(sh.N*sh.K*sh.M)*float64(b.N)/b.Elapsed().Seconds()/1e9, "GFLOP/s")
		})
	}
}
