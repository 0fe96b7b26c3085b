package quant

import (
	"fmt"
	"math"
	"math/rand/v2"

	"github.com/loractl/loractl/internal/linalg"
)

// LoftQ initialises a LoRA pair for a quantized base (Li et al., "LoftQ: LoRA-Fine-Tuning-Aware
// Quantization", 2023). With W0 (out, in), rank r and LoRA scale s it alternates, iters times,
// starting from B·A = 0:
//
//	W_q   = Q(W0 − s·B·A)
//	B, A  = the best rank-r factors of (W0 − deq(W_q))/s, split as B = U_r·√Σ_r, A = √Σ_r·V_rᵀ
//
// so that deq(W_q) + s·B·A starts close to W0. The rank-r factorisation is a randomized
// subspace iteration (linalg.LowRank), in float64, seeded by rng. It returns W_q, A (r, in) and B (out, r).
func LoftQ(name string, w0 []float32, shape []int, r int, s float32, o Options, iters int, rng *rand.Rand) (*Tensor, []float32, []float32, error) {
	if len(shape) != 2 {
		return nil, nil, nil, fmt.Errorf("LoftQ of %s: shape %v, want a matrix", name, shape)
	}
	out, in := shape[0], shape[1]
	if r < 1 || r > min(out, in) {
		return nil, nil, nil, fmt.Errorf("LoftQ of %s: rank %d outside [1, %d]", name, r, min(out, in))
	}
	if iters < 1 || s == 0 {
		return nil, nil, nil, fmt.Errorf("LoftQ of %s: need at least one iteration and a nonzero scale (got %d, %g)", name, iters, s)
	}
	target := append([]float32(nil), w0...) // W0 − s·B·A, (out, in)
	var q *Tensor
	var a, b []float32
	res := make([]float64, out*in) // (W0 − deq(W_q))/s, (out, in)
	for it := 0; it < iters; it++ {
		if a != nil {
			ba := matmulBA(b, a, out, in, r)
			for i := range target {
				target[i] = w0[i] - s*ba[i]
			}
		}
		var err error
		if q, err = Quantize(name, target, shape, o); err != nil {
			return nil, nil, nil, err
		}
		deq := q.Dequantize()
		for i := range res {
			res[i] = (float64(w0[i]) - float64(deq[i])) / float64(s)
		}
		u, sig, v := linalg.LowRank(res, out, in, r, rng)
		a, b = make([]float32, r*in), make([]float32, out*r)
		for k := 0; k < r; k++ {
			rs := math.Sqrt(sig[k])
			for i := 0; i < in; i++ {
				a[k*in+i] = float32(rs * v[i*r+k])
			}
			for o := 0; o < out; o++ {
				b[o*r+k] = float32(rs * u[o*r+k])
			}
		}
	}
	return q, a, b, nil
}

// matmulBA returns B·A, (out, in), for B (out, r) and A (r, in), in float32.
func matmulBA(b, a []float32, out, in, r int) []float32 {
	d := make([]float32, out*in)
	for o := 0; o < out; o++ {
		row := d[o*in : (o+1)*in]
		for k := 0; k < r; k++ {
			bk := b[o*r+k]
			for i, av := range a[k*in : (k+1)*in] {
				row[i] += bk * av
			}
		}
	}
	return d
}

// LowRankError returns ‖W0 − (deq(W_q) + s·B·A)‖_F / ‖W0‖_F; nil a and b mean B·A = 0.
func LowRankError(w0 []float32, q *Tensor, a, b []float32, r int, s float32) float64 {
	deq := q.Dequantize()
	var ba []float32
	if a != nil {
		ba = matmulBA(b, a, q.Shape[0], q.Shape[1], r)
	}
	var num, den float64
	for i, w := range w0 {
		x := float64(deq[i])
		if ba != nil {
			x += float64(s) * float64(ba[i])
		}
		num += (float64(w) - x) * (float64(w) - x)
		den += float64(w) * float64(w)
	}
	return math.Sqrt(num / den)
}
