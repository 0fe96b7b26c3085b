package optim

import "math"

// GlobalNorm returns the L2 norm of all gradients together, summed in float64 in the order
// given (tensor by tensor, element by element), so the result is the same bits on every run.
func GlobalNorm(grads [][]float32) float64 {
	var sum float64
	for _, g := range grads {
		for _, x := range g {
			sum += float64(x) * float64(x)
		}
	}
	return math.Sqrt(sum)
}

// ClipGlobalNorm scales all gradients in place so that their global L2 norm is at most
// maxNorm, as torch.nn.utils.clip_grad_norm_: the factor is maxNorm/(norm+1e-6), applied only
// when it is below 1. It returns the norm before clipping (what trainers log as grad_norm).
//
// maxNorm ≤ 0 disables clipping (the norm is still returned). A NaN or infinite norm leaves
// the gradients untouched, so the caller can see it and stop.
func ClipGlobalNorm(grads [][]float32, maxNorm float64) (norm float64) {
	norm = GlobalNorm(grads)
	if maxNorm <= 0 || math.IsNaN(norm) || math.IsInf(norm, 0) {
		return norm
	}
	coef := maxNorm / (norm + 1e-6)
	if coef < 1 {
		Scale(grads, float32(coef))
	}
	return norm
}

// Scale multiplies all gradients in place by factor. With gradient accumulation over n
// micro-batches whose losses are means, Scale(grads, 1/n) after summing their gradients gives
// the gradient of the mean loss over the whole batch.
func Scale(grads [][]float32, factor float32) {
	for _, g := range grads {
		for i := range g {
			g[i] *= factor
		}
	}
}

// Zero sets all gradients to 0, before accumulating the next batch.
func Zero(grads [][]float32) {
	for _, g := range grads {
		clear(g)
	}
}

// Grads returns the gradient slices of all parameters of groups, in order, for GlobalNorm,
// ClipGlobalNorm, Scale and Zero.
func Grads(groups []Group) [][]float32 {
	var out [][]float32
	for _, g := range groups {
		for _, p := range g.Params {
			out = append(out, p.Grad)
		}
	}
	return out
}
