package quant

import (
	"fmt"
	"math"
	"math/rand/v2"
	"sort"
)

// LoftQ initialises a LoRA pair for a quantized base (Li et al., "LoftQ: LoRA-Fine-Tuning-Aware
// Quantization", 2023). With W0 (out, in), rank r and LoRA scale s it alternates, iters times,
// starting from B·A = 0:
//
//	W_q   = Q(W0 − s·B·A)
//	B, A  = the best rank-r factors of (W0 − deq(W_q))/s, split as B = U_r·√Σ_r, A = √Σ_r·V_rᵀ
//
// so that deq(W_q) + s·B·A starts close to W0. The rank-r factorisation is a randomized
// subspace iteration (a Gaussian sketch of r+8 columns, four power iterations with
// re-orthonormalisation, then an exact eigendecomposition of the small projected problem), in
// float64, seeded by rng. It returns W_q, A (r, in) and B (out, r).
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
		u, sig, v := lowRank(res, out, in, r, rng)
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

// lowRank returns the leading r singular triplets of m (rows, cols): U (rows, r), σ (r) in
// decreasing order and V (cols, r), row-major.
func lowRank(m []float64, rows, cols, r int, rng *rand.Rand) (u, sig, v []float64) {
	k := min(r+8, rows, cols)
	// Y = M·Ω, Ω (cols, k) Gaussian.
	omega := make([]float64, cols*k)
	for i := range omega {
		omega[i] = rng.NormFloat64()
	}
	y := mulNN(m, omega, rows, cols, k) // (rows, k)
	orthonormalize(y, rows, k)
	for range 4 {
		z := mulTN(m, y, rows, cols, k) // Mᵀ·Q, (cols, k)
		orthonormalize(z, cols, k)
		y = mulNN(m, z, rows, cols, k)
		orthonormalize(y, rows, k)
	}
	// Small problem: Bs = Qᵀ·M (k, cols), C = Bs·Bsᵀ (k, k) = E·Λ·Eᵀ.
	bs := mulTN(y, m, rows, k, cols) // (k, cols): Qᵀ (k, rows) · M (rows, cols)
	c := make([]float64, k*k)
	for i := 0; i < k; i++ {
		for j := 0; j <= i; j++ {
			var d float64
			for t := 0; t < cols; t++ {
				d += bs[i*cols+t] * bs[j*cols+t]
			}
			c[i*k+j], c[j*k+i] = d, d
		}
	}
	lam, e := jacobiEigen(c, k)
	order := make([]int, k)
	for i := range order {
		order[i] = i
	}
	sort.Slice(order, func(a, b int) bool { return lam[order[a]] > lam[order[b]] })
	u, sig, v = make([]float64, rows*r), make([]float64, r), make([]float64, cols*r)
	for j := 0; j < r; j++ {
		idx := order[j]
		s := math.Sqrt(max(lam[idx], 0))
		sig[j] = s
		for i := 0; i < rows; i++ { // U = Q·E
			var d float64
			for t := 0; t < k; t++ {
				d += y[i*k+t] * e[t*k+idx]
			}
			u[i*r+j] = d
		}
		if s == 0 {
			continue
		}
		for i := 0; i < cols; i++ { // V = Bsᵀ·E / σ
			var d float64
			for t := 0; t < k; t++ {
				d += bs[t*cols+i] * e[t*k+idx]
			}
			v[i*r+j] = d / s
		}
	}
	return u, sig, v
}

// mulNN returns a (n, p) · b (p, q), row-major.
func mulNN(a, b []float64, n, p, q int) []float64 {
	out := make([]float64, n*q)
	for i := 0; i < n; i++ {
		row := out[i*q : (i+1)*q]
		for t := 0; t < p; t++ {
			av := a[i*p+t]
			if av == 0 {
				continue
			}
			for j, bv := range b[t*q : (t+1)*q] {
				row[j] += av * bv
			}
		}
	}
	return out
}

// mulTN returns aᵀ·b for a (n, p) and b (n, q): (p, q).
func mulTN(a, b []float64, n, p, q int) []float64 {
	out := make([]float64, p*q)
	for t := 0; t < n; t++ {
		br := b[t*q : (t+1)*q]
		for i := 0; i < p; i++ {
			av := a[t*p+i]
			if av == 0 {
				continue
			}
			row := out[i*q : (i+1)*q]
			for j, bv := range br {
				row[j] += av * bv
			}
		}
	}
	return out
}

// orthonormalize makes the k columns of x (n, k) orthonormal in place (modified Gram-Schmidt,
// twice for stability); a column that vanishes is left zero.
func orthonormalize(x []float64, n, k int) {
	for pass := 0; pass < 2; pass++ {
		for j := 0; j < k; j++ {
			for p := 0; p < j; p++ {
				var d float64
				for i := 0; i < n; i++ {
					d += x[i*k+j] * x[i*k+p]
				}
				for i := 0; i < n; i++ {
					x[i*k+j] -= d * x[i*k+p]
				}
			}
			var nrm float64
			for i := 0; i < n; i++ {
				nrm += x[i*k+j] * x[i*k+j]
			}
			nrm = math.Sqrt(nrm)
			for i := 0; i < n; i++ {
				if nrm > 1e-300 {
					x[i*k+j] /= nrm
				} else {
					x[i*k+j] = 0
				}
			}
		}
	}
}

// jacobiEigen diagonalises the symmetric matrix c (k, k) by cyclic Jacobi rotations and
// returns its eigenvalues and eigenvectors (the columns of e, (k, k)).
func jacobiEigen(c []float64, k int) ([]float64, []float64) {
	a := append([]float64(nil), c...)
	e := make([]float64, k*k)
	for i := 0; i < k; i++ {
		e[i*k+i] = 1
	}
	for sweep := 0; sweep < 100; sweep++ {
		var off, diag float64
		for i := 0; i < k; i++ {
			diag += a[i*k+i] * a[i*k+i]
			for j := i + 1; j < k; j++ {
				off += a[i*k+j] * a[i*k+j]
			}
		}
		if off <= 1e-30*diag || off == 0 {
			break
		}
		for p := 0; p < k; p++ {
			for q := p + 1; q < k; q++ {
				apq := a[p*k+q]
				if apq == 0 {
					continue
				}
				theta := (a[q*k+q] - a[p*k+p]) / (2 * apq)
				t := math.Copysign(1, theta) / (math.Abs(theta) + math.Sqrt(theta*theta+1))
				cs := 1 / math.Sqrt(t*t+1)
				sn := t * cs
				for i := 0; i < k; i++ { // columns p, q of A
					aip, aiq := a[i*k+p], a[i*k+q]
					a[i*k+p], a[i*k+q] = cs*aip-sn*aiq, sn*aip+cs*aiq
				}
				for i := 0; i < k; i++ { // rows p, q of A
					api, aqi := a[p*k+i], a[q*k+i]
					a[p*k+i], a[q*k+i] = cs*api-sn*aqi, sn*api+cs*aqi
				}
				for i := 0; i < k; i++ {
					eip, eiq := e[i*k+p], e[i*k+q]
					e[i*k+p], e[i*k+q] = cs*eip-sn*eiq, sn*eip+cs*eiq
				}
			}
		}
	}
	lam := make([]float64, k)
	for i := range lam {
		lam[i] = a[i*k+i]
	}
	return lam, e
}
