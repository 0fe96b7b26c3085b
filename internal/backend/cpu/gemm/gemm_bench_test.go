package gemm

import (
	"fmt"
	"math/rand/v2"
	"testing"
)

// Peak fp32 FMA throughput per core measured on the development machine kind
// (docs: /work/shared/notes/cpu-gemm-findings.md), in GFLOP/s.
const (
	peakAVX512 = 218
	peakAVX2   = 108
)

// BenchmarkMul times the three products of a training step on the square reference shape and
// on the shapes of a T=1024 token step (d = 288, 576, 1536, vocab 32000, LoRA rank 16), on 1
// and 2 threads.
// It reports GFLOP/s, the fraction of the AVX-512 single-core peak times the thread count
// (peak512) and the same for AVX2 (peak2).
func BenchmarkMul(b *testing.B) {
	type shape struct {
		name    string
		m, n, k int // C (m, n) = A (m, k) · B (k, n)
	}
	var shapes []shape
	for _, L := range []string{"NT", "NN", "TN"} {
		add := func(T, in, out int) {
			switch L {
			case "NT": // y (T, out) = x (T, in) · wᵀ
				shapes = append(shapes, shape{fmt.Sprintf("NT_T%d_in%d_out%d", T, in, out), T, out, in})
			case "NN": // dx (T, in) += dy (T, out) · w (out, in)
				shapes = append(shapes, shape{fmt.Sprintf("NN_T%d_in%d_out%d", T, in, out), T, in, out})
			case "TN": // dw (out, in) += dyᵀ · x, k = T
				shapes = append(shapes, shape{fmt.Sprintf("TN_T%d_in%d_out%d", T, in, out), out, in, T})
			}
		}
		if L == "NT" {
			add(512, 2048, 2048)
		}
		add(1024, 288, 288)
		add(1024, 576, 1536)
		add(1024, 1536, 576)
		add(1024, 288, 32000)
		// The skinny LoRA products (r = 16): x·Aᵀ (T, r) and u·Bᵀ (T, d), and their gradients.
		add(1024, 576, 16)
		add(1024, 16, 576)
	}
	layoutOf := map[string]layout{}
	for _, L := range layouts {
		layoutOf[L.name] = L
	}
	for _, sh := range shapes {
		for _, threads := range []int{1, 2} {
			b.Run(fmt.Sprintf("%s/%s/t%d", Impl(), sh.name, threads), func(b *testing.B) {
				r := rand.New(rand.NewPCG(1, 1))
				a, bm := layoutOf[sh.name[:2]].views(r, sh.m, sh.n, sh.k)
				c := make([]float32, sh.m*sh.n)
				acc := sh.name[:2] != "NT"
				Mul(goRunner, threads, c, sh.n, a, bm, sh.m, sh.n, sh.k, acc) // warm the workspaces
				b.ResetTimer()
				for range b.N {
					Mul(goRunner, threads, c, sh.n, a, bm, sh.m, sh.n, sh.k, acc)
				}
				gf := 2 * float64(sh.m) * float64(sh.n) * float64(sh.k) * float64(b.N) / b.Elapsed().Seconds() / 1e9
				b.ReportMetric(gf, "GFLOP/s")
				b.ReportMetric(gf/(peakAVX512*float64(threads)), "peak512")
				b.ReportMetric(gf/(peakAVX2*float64(threads)), "peak2")
			})
		}
	}
}

// BenchmarkMulBF16 times the products that read a frozen weight, with the weight as float32
// (f32) and as bfloat16 bits widened while packing (bf16): the forward y = x·Wᵀ (NT) and the
// input gradient dx += dy·W (NN), on the square reference shape, a T=1024 step of stories15M's
// down_proj (in 768, out 288) and one generated token (T=1) of SmolLM-135M's up_proj.
func BenchmarkMulBF16(b *testing.B) {
	type shape struct {
		name    string
		m, n, k int // C (m, n) = A (m, k) · B (k, n)
		nt      bool
	}
	shapes := []shape{
		{"NT_T512_in2048_out2048", 512, 2048, 2048, true},
		{"NT_T1024_in768_out288", 1024, 288, 768, true},
		{"NN_T1024_in768_out288", 1024, 768, 288, false},
		{"NT_T1_in576_out1536", 1, 1536, 576, true},
	}
	for _, sh := range shapes {
		for _, dt := range []string{"f32", "bf16"} {
			for _, threads := range []int{1, 2} {
				b.Run(fmt.Sprintf("%s/%s/%s/t%d", Impl(), sh.name, dt, threads), func(b *testing.B) {
					r := rand.New(rand.NewPCG(1, 1))
					a := RowMajor(randv(r, sh.m*sh.k), sh.k)
					h := randBF16(r, sh.k*sh.n) // the weight: (out, in) row-major
					var bm Mat
					switch {
					case sh.nt && dt == "f32":
						bm = Transposed(widened(h), sh.k)
					case sh.nt:
						bm = TransposedBF16(h, sh.k)
					case dt == "f32":
						bm = RowMajor(widened(h), sh.n)
					default:
						bm = RowMajorBF16(h, sh.n)
					}
					c := make([]float32, sh.m*sh.n)
					acc := !sh.nt
					Mul(goRunner, threads, c, sh.n, a, bm, sh.m, sh.n, sh.k, acc) // warm the workspaces
					b.ResetTimer()
					for range b.N {
						Mul(goRunner, threads, c, sh.n, a, bm, sh.m, sh.n, sh.k, acc)
					}
					gf := 2 * float64(sh.m) * float64(sh.n) * float64(sh.k) * float64(b.N) / b.Elapsed().Seconds() / 1e9
					b.ReportMetric(gf, "GFLOP/s")
				})
			}
		}
	}
}
