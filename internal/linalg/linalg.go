// Package linalg holds the small dense linear algebra loractl needs on the host, in float64:
// a Householder QR, a one-sided Jacobi SVD, a randomized rank-r SVD for large matrices, and the
// two products they use. Matrices are row-major.
package linalg

import (
	"math"
	"math/rand/v2"
	"sort"
)

// QR factors the m×n matrix x (row-major) as Q·R with p = min(m, n): Q is m×p with orthonormal
// columns, R is p×n upper trapezoidal. x is not modified.
func QR(x []float64, m, n int) (q, r []float64, p int) {
	p = min(m, n)
	a := append([]float64(nil), x...) // (m, n), overwritten by R and the reflectors
	vs := make([][]float64, p)        // Householder vectors, each of length m-k
	for k := 0; k < p; k++ {
		var norm float64
		for i := k; i < m; i++ {
			norm = math.Hypot(norm, a[i*n+k])
		}
		v := make([]float64, m-k) // (m-k)
		if norm == 0 {
			vs[k] = v // nothing to reflect: the zero vector leaves the matrix alone
			continue
		}
		alpha := -norm
		if a[k*n+k] < 0 {
			alpha = norm
		}
		for i := k; i < m; i++ {
			v[i-k] = a[i*n+k]
		}
		v[0] -= alpha
		var vn float64
		for _, e := range v {
			vn += e * e
		}
		if vn == 0 {
			vs[k] = make([]float64, m-k)
			continue
		}
		for i := range v {
			v[i] /= math.Sqrt(vn)
		}
		vs[k] = v
		// a[k:, k:] -= 2 v (vᵀ a[k:, k:])
		for j := k; j < n; j++ {
			var d float64
			for i := k; i < m; i++ {
				d += v[i-k] * a[i*n+j]
			}
			d *= 2
			for i := k; i < m; i++ {
				a[i*n+j] -= d * v[i-k]
			}
		}
	}
	r = make([]float64, p*n) // (p, n)
	for i := 0; i < p; i++ {
		for j := i; j < n; j++ {
			r[i*n+j] = a[i*n+j]
		}
	}
	// Q = H_0 H_1 … H_{p-1} applied to the first p columns of the identity.
	q = make([]float64, m*p) // (m, p)
	for i := 0; i < p; i++ {
		q[i*p+i] = 1
	}
	for k := p - 1; k >= 0; k-- {
		v := vs[k]
		for j := 0; j < p; j++ {
			var d float64
			for i := k; i < m; i++ {
				d += v[i-k] * q[i*p+j]
			}
			d *= 2
			if d == 0 {
				continue
			}
			for i := k; i < m; i++ {
				q[i*p+j] -= d * v[i-k]
			}
		}
	}
	return q, r, p
}

// SVD computes the thin singular value decomposition of the m×n matrix x (row-major):
// x = U·diag(s)·Vᵀ with U m×k, V n×k, k = min(m, n), singular values in s in descending order.
// It uses one-sided Jacobi rotations (Hestenes), which is accurate to working precision for
// the small matrices it is used on. x is not modified.
func SVD(x []float64, m, n int) (u, s, v []float64) {
	if m < n {
		// Work on the transpose: xᵀ = V S Uᵀ.
		xt := make([]float64, n*m) // (n, m)
		for i := 0; i < m; i++ {
			for j := 0; j < n; j++ {
				xt[j*m+i] = x[i*n+j]
			}
		}
		vt, st, ut := SVD(xt, n, m)
		return ut, st, vt
	}
	// Columns of g are orthogonalised in place; vm accumulates the rotations.
	g := append([]float64(nil), x...) // (m, n)
	vm := make([]float64, n*n)        // (n, n)
	for i := 0; i < n; i++ {
		vm[i*n+i] = 1
	}
	const eps = 1e-15
	for sweep := 0; sweep < 60; sweep++ {
		rotated := false
		for p := 0; p < n-1; p++ {
			for q := p + 1; q < n; q++ {
				var alpha, beta, gamma float64
				for i := 0; i < m; i++ {
					gp, gq := g[i*n+p], g[i*n+q]
					alpha += gp * gp
					beta += gq * gq
					gamma += gp * gq
				}
				if gamma == 0 || math.Abs(gamma) <= eps*math.Sqrt(alpha*beta) {
					continue
				}
				rotated = true
				zeta := (beta - alpha) / (2 * gamma)
				t := math.Copysign(1, zeta) / (math.Abs(zeta) + math.Sqrt(1+zeta*zeta))
				c := 1 / math.Sqrt(1+t*t)
				sn := c * t
				for i := 0; i < m; i++ {
					gp, gq := g[i*n+p], g[i*n+q]
					g[i*n+p] = c*gp - sn*gq
					g[i*n+q] = sn*gp + c*gq
				}
				for i := 0; i < n; i++ {
					vp, vq := vm[i*n+p], vm[i*n+q]
					vm[i*n+p] = c*vp - sn*vq
					vm[i*n+q] = sn*vp + c*vq
				}
			}
		}
		if !rotated {
			break
		}
	}
	norms := make([]float64, n)
	for j := 0; j < n; j++ {
		var sq float64
		for i := 0; i < m; i++ {
			sq += g[i*n+j] * g[i*n+j]
		}
		norms[j] = math.Sqrt(sq)
	}
	order := make([]int, n)
	for i := range order {
		order[i] = i
	}
	sort.SliceStable(order, func(a, b int) bool { return norms[order[a]] > norms[order[b]] })
	u = make([]float64, m*n) // (m, n)
	s = make([]float64, n)
	v = make([]float64, n*n) // (n, n)
	for k, j := range order {
		s[k] = norms[j]
		for i := 0; i < n; i++ {
			v[i*n+k] = vm[i*n+j]
		}
		if norms[j] == 0 {
			continue // a zero singular value: its left vector is never used with a non-zero weight
		}
		for i := 0; i < m; i++ {
			u[i*n+k] = g[i*n+j] / norms[j]
		}
	}
	return u, s, v
}

// LowRank returns the leading r singular triplets of m (rows, cols): U (rows, r), σ (r) in
// decreasing order and V (cols, r). It is a randomized subspace iteration: a Gaussian sketch of
// r+8 columns drawn from rng, four power iterations re-orthonormalised by QR, then the exact
// SVD of the small projected matrix Qᵀ·M.
func LowRank(m []float64, rows, cols, r int, rng *rand.Rand) (u, sig, v []float64) {
	k := min(r+8, rows, cols)
	omega := make([]float64, cols*k) // (cols, k) Gaussian
	for i := range omega {
		omega[i] = rng.NormFloat64()
	}
	q, _, _ := QR(MulNN(m, omega, rows, cols, k), rows, k) // (rows, k)
	for range 4 {
		z, _, _ := QR(MulTN(m, q, rows, cols, k), cols, k) // Mᵀ·Q, (cols, k)
		q, _, _ = QR(MulNN(m, z, rows, cols, k), rows, k)
	}
	bs := MulTN(q, m, rows, k, cols)    // Qᵀ·M, (k, cols)
	ub, s, vb := SVD(bs, k, cols)       // ub (k, k), s (k), vb (cols, k)
	uk := MulNN(q, ub, rows, k, len(s)) // (rows, k)
	return leadingColumns(uk, rows, len(s), r), s[:r], leadingColumns(vb, cols, len(s), r)
}

// leadingColumns returns the first r columns of x (n, k) as an (n, r) matrix.
func leadingColumns(x []float64, n, k, r int) []float64 {
	out := make([]float64, n*r)
	for i := 0; i < n; i++ {
		copy(out[i*r:(i+1)*r], x[i*k:i*k+r])
	}
	return out
}

// MulNN returns a (n, p) · b (p, q), row-major.
func MulNN(a, b []float64, n, p, q int) []float64 {
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

// MulTN returns aᵀ·b for a (n, p) and b (n, q): (p, q).
func MulTN(a, b []float64, n, p, q int) []float64 {
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
