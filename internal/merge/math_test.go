package merge

import (
	"math"
	"math/big"
	"math/rand/v2"
	"sort"
	"testing"

	"github.com/loractl/loractl/internal/linalg"
	"github.com/loractl/loractl/internal/safetensors"
)

func randTerm(seed uint64, r, in, out int, c float64) term {
	rng := rand.New(rand.NewPCG(seed, 9))
	t := term{adapter: int(seed), r: r, a: make([]float32, r*in), b: make([]float32, out*r), c: c}
	for i := range t.a {
		t.a[i] = float32(rng.NormFloat64())
	}
	for i := range t.b {
		t.b[i] = float32(rng.NormFloat64())
	}
	return t
}

// TestSVDFullRankIsExact: truncating to the full rank reproduces the summed delta.
func TestSVDFullRankIsExact(t *testing.T) {
	for _, c := range []struct{ in, out int }{{30, 40}, {40, 30}, {7, 5}} { // the last has Σr > min(in, out)
		in, out := c.in, c.out
		l := catTerms([]term{randTerm(11, 4, in, out, 0.5), randTerm(12, 6, in, out, -2)}, in, out)
		tr, sv := l.truncate(l.r)
		if rel := maxRel(tr.dense(), l.dense()); rel > 1e-12 {
			t.Fatalf("%dx%d: full-rank SVD differs from the sum by %.3g", out, in, rel)
		}
		for i := 1; i < len(sv); i++ {
			if sv[i] > sv[i-1] {
				t.Fatalf("singular values not descending: %v", sv)
			}
		}
	}
}

// TestSVDTruncationIsBestRankK: the rank-k result keeps the k largest singular values of the
// dense delta (computed independently by a dense SVD), and its error is the Eckart–Young bound
// ‖Δ − Δ_k‖²_F = Σ_{j>k} σ_j².
func TestSVDTruncationIsBestRankK(t *testing.T) {
	in, out := 37, 29
	l := catTerms([]term{randTerm(21, 5, in, out, 1), randTerm(22, 3, in, out, 0.3), randTerm(23, 4, in, out, -0.8)}, in, out)
	full := l.dense()
	_, sigma, _ := linalg.SVD(full, out, in)
	for _, k := range []int{1, 3, 7, 11} {
		tr, sv := l.truncate(k)
		if tr.r != k {
			t.Fatalf("rank %d, want %d", tr.r, k)
		}
		for j := 0; j < 12; j++ {
			if math.Abs(sv[j]-sigma[j]) > 1e-10*sigma[0] {
				t.Fatalf("σ_%d = %v from the factors, %v from the dense SVD", j, sv[j], sigma[j])
			}
		}
		for j := 12; j < len(sigma); j++ {
			if sigma[j] > 1e-10*sigma[0] {
				t.Fatalf("dense σ_%d = %v; the sum of ranks 12 should bound the rank", j, sigma[j])
			}
		}
		d := tr.dense()
		var errSq, tail float64
		for i := range d {
			errSq += (full[i] - d[i]) * (full[i] - d[i])
		}
		for j := k; j < len(sigma); j++ {
			tail += sigma[j] * sigma[j]
		}
		if math.Abs(errSq-tail) > 1e-9*tail {
			t.Fatalf("k=%d: ‖Δ−Δk‖² = %v, Σσ² beyond k = %v", k, errSq, tail)
		}
		// A different rank-k matrix (the first k of the terms' own factors) is worse.
		if k == 3 {
			alt := catTerms([]term{randTerm(21, 3, in, out, 1)}, in, out).dense()
			var altErr float64
			for i := range alt {
				altErr += (full[i] - alt[i]) * (full[i] - alt[i])
			}
			if altErr <= errSq {
				t.Fatalf("another rank-3 matrix has error %v <= the SVD's %v", altErr, errSq)
			}
		}
	}
}

// TestTIESHandExample follows the three steps by hand on three task vectors, density 0.5
// (k = 3 of 6 entries kept per task):
//
//	t1 = [ 4, -1,  2, -3, 0.5,  6]  trim → [ 4,  0,  0, -3, 0, 6]
//	t2 = [-2,  3,  1, -5, 0.25, -1] trim → [-2,  3,  0, -5, 0, 0]
//	t3 = [ 1, -4, -3,  2, 5, -0.5]  trim → [ 0, -4, -3,  0, 5, 0]
//	sum of trimmed = [2, -1, -3, -8, 5, 6] → elected signs [+, -, -, -, +, +]
//	agreeing means: [4/1, -4/1, -3/1, (-3-5)/2, 5/1, 6/1] = [4, -4, -3, -4, 5, 6]
func TestTIESHandExample(t *testing.T) {
	ts := [][]float64{{4, -1, 2, -3, 0.5, 6}, {-2, 3, 1, -5, 0.25, -1}, {1, -4, -3, 2, 5, -0.5}}
	trimmed := [][]float64{{4, 0, 0, -3, 0, 6}, {-2, 3, 0, -5, 0, 0}, {0, -4, -3, 0, 5, 0}}
	for i, tk := range ts {
		trimTopK(tk, int(0.5*float64(len(tk))))
		for e := range tk {
			if tk[e] != trimmed[i][e] {
				t.Fatalf("trim of t%d = %v, want %v", i+1, tk, trimmed[i])
			}
		}
	}
	got := make([]float64, 6)
	electAndMerge(ts, got)
	want := []float64{4, -4, -3, -4, 5, 6}
	for e := range want {
		if got[e] != want[e] {
			t.Fatalf("TIES = %v, want %v", got, want)
		}
	}
}

// TestTrimTies: equal magnitudes at the threshold are kept in index order, exactly k survive.
func TestTrimTies(t *testing.T) {
	v := []float64{1, -2, 2, 2, -0.5, 3}
	trimTopK(v, 3) // keeps 3, then the first two of the three 2s
	want := []float64{0, -2, 2, 0, 0, 3}
	for i := range want {
		if v[i] != want[i] {
			t.Fatalf("trim = %v, want %v", v, want)
		}
	}
}

// TestDAREHandExample: with density 0.5, a kept entry is doubled and a dropped one is 0; with
// the masks fixed by hand, dare_ties elects and averages as TIES does:
//
//	t1 = [2, -1, 3, 1]  mask [1, 1, 0, 1] → [4, -2, 0, 2]
//	t2 = [-1, -3, 1, 1] mask [1, 0, 1, 1] → [-2, 0, 2, 2]
//	sum [2, -2, 2, 4] → signs [+, -, +, +] → [4, -2, 2, (2+2)/2] = [4, -2, 2, 2]
//	dare_linear sums instead: [2, -2, 2, 4]
func TestDAREHandExample(t *testing.T) {
	ts := [][]float64{{2, -1, 3, 1}, {-1, -3, 1, 1}}
	masks := [][]bool{{true, true, false, true}, {true, false, true, true}}
	for i := range ts {
		for e := range ts[i] {
			if masks[i][e] {
				ts[i][e] /= 0.5
			} else {
				ts[i][e] = 0
			}
		}
	}
	got := make([]float64, 4)
	electAndMerge(ts, got)
	for e, w := range []float64{4, -2, 2, 2} {
		if got[e] != w {
			t.Fatalf("dare_ties = %v", got)
		}
	}
	// dropRandom's statistics and determinism on a long random vector.
	rng := rand.New(rand.NewPCG(8, 8))
	v := make([]float64, 20000)
	for i := range v {
		v[i] = rng.NormFloat64()
	}
	a, b, c := append([]float64(nil), v...), append([]float64(nil), v...), append([]float64(nil), v...)
	dropRandom(a, 0.3, taskSeed(5, 0, "w"))
	dropRandom(b, 0.3, taskSeed(5, 0, "w"))
	dropRandom(c, 0.3, taskSeed(6, 0, "w"))
	kept, same, differ := 0, true, false
	for i := range v {
		if a[i] != 0 {
			kept++
			if math.Abs(a[i]-v[i]/0.3) > 1e-15*math.Abs(v[i]) {
				t.Fatalf("kept entry %d = %v, want %v/0.3", i, a[i], v[i])
			}
		}
		same = same && a[i] == b[i]
		differ = differ || a[i] != c[i]
	}
	if !same || !differ {
		t.Fatalf("same seed gives the same mask: %v; another seed another: %v", same, differ)
	}
	if frac := float64(kept) / float64(len(v)); math.Abs(frac-0.3) > 0.02 {
		t.Fatalf("kept %.3f of the entries, want about 0.3", frac)
	}
}

// roundRef rounds x to a float with prec significand bits by math/big (normal range only).
func roundRef(x float64, prec uint) float64 {
	f, _ := new(big.Float).SetMode(big.ToNearestEven).SetPrec(prec).SetFloat64(x).Float64()
	return f
}

// TestRoundOnce: BF16 and F16 results are the correctly rounded float64 values, also where
// rounding to float32 first would round twice and give another answer.
func TestRoundOnce(t *testing.T) {
	// 1 + 2⁻⁸ + 2⁻³⁰: float32 drops 2⁻³⁰ and lands on the BF16 halfway point 1 + 2⁻⁸, which then
	// rounds to even (1); the correct BF16 value is 1 + 2⁻⁷.
	x := 1 + math.Ldexp(1, -8) + math.Ldexp(1, -30)
	if d := float64(safetensors.BF16ToFloat32(safetensors.Float32ToBF16(float32(x)))); d != 1 {
		t.Fatalf("the double-rounding example does not double-round (%v)", d)
	}
	if got := widen(roundOnce(x, safetensors.BF16), safetensors.BF16); got != 1+math.Ldexp(1, -7) {
		t.Fatalf("roundOnce BF16(%v) = %v, want %v", x, got, 1+math.Ldexp(1, -7))
	}
	y := 1 + math.Ldexp(1, -11) + math.Ldexp(1, -40) // F16's halfway point plus a little
	if got := widen(roundOnce(y, safetensors.F16), safetensors.F16); got != 1+math.Ldexp(1, -10) {
		t.Fatalf("roundOnce F16(%v) = %v", y, got)
	}
	rng := rand.New(rand.NewPCG(1, 2))
	for i := 0; i < 200000; i++ {
		v := rng.NormFloat64() * math.Ldexp(1, rng.IntN(20)-10)
		if i%2 == 0 { // values just off a halfway point of BF16, where double rounding bites
			v = roundRef(v, 9) + math.Ldexp(v, -30)
		}
		if got, want := widen(roundOnce(v, safetensors.BF16), safetensors.BF16), roundRef(v, 8); got != want {
			t.Fatalf("BF16(%v) = %v, want %v", v, got, want)
		}
		if got, want := widen(roundOnce(v, safetensors.F16), safetensors.F16), roundRef(v, 11); math.Abs(v) < 60000 && math.Abs(v) > 1e-4 && got != want {
			t.Fatalf("F16(%v) = %v, want %v", v, got, want)
		}
		if got := widen(roundOnce(v, safetensors.F32), safetensors.F32); got != float64(float32(v)) {
			t.Fatalf("F32(%v) = %v", v, got)
		}
	}
}

func TestParseSize(t *testing.T) {
	for s, want := range map[string]int64{"5GB": 5e9, "500MB": 5e8, "2GiB": 2 << 30, "10kb": 1e4, "123456": 123456, "1.5 MiB": 3 << 19, "64B": 64} {
		if got, err := ParseSize(s); err != nil || got != want {
			t.Errorf("ParseSize(%q) = %d, %v; want %d", s, got, err, want)
		}
	}
	for _, s := range []string{"", "GB", "-1MB", "0", "five", "NaNGB", "1e30TB"} {
		if _, err := ParseSize(s); err == nil {
			t.Errorf("ParseSize(%q) accepted", s)
		}
	}
}

// TestSelectNth compares quickselect with sorting, on random values with many repeats.
func TestSelectNth(t *testing.T) {
	rng := rand.New(rand.NewPCG(4, 4))
	for trial := 0; trial < 200; trial++ {
		n := 1 + rng.IntN(300)
		a := make([]float64, n)
		for i := range a {
			a[i] = float64(rng.IntN(1 + trial%20))
		}
		sorted := append([]float64(nil), a...)
		sort.Float64s(sorted)
		k := rng.IntN(n)
		if got := selectNth(append([]float64(nil), a...), k); got != sorted[k] {
			t.Fatalf("selectNth(%v, %d) = %v, want %v", a, k, got, sorted[k])
		}
	}
}
