package linalg

import (
	"math"
	"math/rand/v2"
	"testing"
	"time"
)

func newRNG(t testing.TB) *rand.Rand {
	seed := uint64(time.Now().UnixNano())
	t.Logf("seed %d", seed)
	return rand.New(rand.NewPCG(seed, 0x9e37))
}

// TestQR checks Q's orthonormal columns and Q·R = X, for tall and wide inputs.
func TestQR(t *testing.T) {
	rng := rand.New(rand.NewPCG(3, 3))
	for _, c := range []struct{ m, n int }{{9, 4}, {4, 9}, {6, 6}} {
		x := make([]float64, c.m*c.n)
		for i := range x {
			x[i] = rng.NormFloat64()
		}
		q, r, p := QR(x, c.m, c.n)
		for i := 0; i < c.m; i++ {
			for j := 0; j < c.n; j++ {
				var s float64
				for k := 0; k < p; k++ {
					s += q[i*p+k] * r[k*c.n+j]
				}
				if math.Abs(s-x[i*c.n+j]) > 1e-12 {
					t.Fatalf("%dx%d: (QR)[%d,%d] = %v, X = %v", c.m, c.n, i, j, s, x[i*c.n+j])
				}
			}
		}
		for a := 0; a < p; a++ {
			for b := 0; b < p; b++ {
				var s float64
				for i := 0; i < c.m; i++ {
					s += q[i*p+a] * q[i*p+b]
				}
				want := 0.0
				if a == b {
					want = 1
				}
				if math.Abs(s-want) > 1e-12 {
					t.Fatalf("QᵀQ[%d,%d] = %v", a, b, s)
				}
			}
		}
	}
}

// TestLowRankRecoversRankR checks the randomized SVD on a random matrix of exact rank r plus
// the best rank-r error of a full-rank one against its own singular values.
func TestLowRankRecoversRankR(t *testing.T) {
	rng := newRNG(t)
	rows, cols, r := 40+rng.IntN(60), 30+rng.IntN(90), 1+rng.IntN(6)
	// M = X·Y with X (rows, r), Y (r, cols) Gaussian: rank r.
	x, y := make([]float64, rows*r), make([]float64, r*cols)
	for i := range x {
		x[i] = rng.NormFloat64()
	}
	for i := range y {
		y[i] = rng.NormFloat64()
	}
	m := MulNN(x, y, rows, r, cols)
	u, sig, v := LowRank(m, rows, cols, r, rng)
	var num, den float64
	for i := 0; i < rows; i++ {
		for j := 0; j < cols; j++ {
			var d float64
			for k := 0; k < r; k++ {
				d += u[i*r+k] * sig[k] * v[j*r+k]
			}
			e := m[i*cols+j] - d
			num += e * e
			den += m[i*cols+j] * m[i*cols+j]
		}
	}
	if rel := math.Sqrt(num / den); rel > 1e-9 {
		t.Fatalf("rank-%d reconstruction error %.3g of a rank-%d matrix (%d×%d)", r, rel, r, rows, cols)
	}
	for k := 1; k < r; k++ {
		if sig[k] > sig[k-1] {
			t.Fatalf("singular values not decreasing: %v", sig)
		}
	}
}
