package merge

import (
	"fmt"
	"math"
	"math/rand/v2"

	"github.com/loractl/loractl/internal/linalg"
	"github.com/loractl/loractl/internal/safetensors"
)

// lowRank is a delta B·diag(coef)·A of one (out, in) weight, in float64.
type lowRank struct {
	r, in, out int
	a          []float64 // (r, in)
	b          []float64 // (out, r)
	coef       []float64 // (r)
	m          []float32 // (out) DoRA's magnitude, nil for LoRA: the row becomes m/‖W0 + Δ‖·(W0 + Δ)
}

// term is one adapter's update of one weight: c·B·A with c = weight·scale.
type term struct {
	adapter int       // index into the merge's adapters
	r       int       // rank
	a       []float32 // (r, in)
	b       []float32 // (out, r)
	c       float64   // w_i·s_i
	m       []float32 // (out) DoRA's magnitude, nil for LoRA
}

// catTerms concatenates the ranks of terms: A stacked (Σr, in), B side by side (out, Σr), and
// each column's coefficient w_i·s_i (the weights folded in). The delta B·diag(coef)·A is
// Σ w_i·s_i·B_i·A_i, and addRow computes it in the same order of operations as the terms
// one by one, so cat and linear give bitwise the same weights.
func catTerms(terms []term, in, out int) *lowRank {
	R := 0
	for _, t := range terms {
		R += t.r
	}
	l := &lowRank{r: R, in: in, out: out, a: make([]float64, R*in), b: make([]float64, out*R), coef: make([]float64, R)}
	off := 0
	for _, t := range terms {
		for k := 0; k < t.r; k++ {
			l.coef[off+k] = t.c
			for i := 0; i < in; i++ {
				l.a[(off+k)*in+i] = float64(t.a[k*in+i])
			}
			for o := 0; o < out; o++ {
				l.b[o*R+off+k] = float64(t.b[o*t.r+k])
			}
		}
		off += t.r
	}
	return l
}

// addRow adds row o of the delta to acc (in).
// addDoRARow turns acc, holding row o of W0, into row o of diag(m/‖W0 + Δ‖)·(W0 + Δ), the
// norm in float64.
func (l *lowRank) addDoRARow(o int, acc []float64) {
	l.addRow(o, acc)
	var n2 float64
	for _, v := range acc {
		n2 += v * v
	}
	c := float64(l.m[o]) / math.Sqrt(n2)
	for i := range acc {
		acc[i] *= c
	}
}

func (l *lowRank) addRow(o int, acc []float64) {
	for j := 0; j < l.r; j++ {
		bj := l.coef[j] * l.b[o*l.r+j]
		if bj == 0 {
			continue
		}
		aj := l.a[j*l.in : (j+1)*l.in]
		for i, av := range aj {
			acc[i] += bj * av
		}
	}
}

// dense returns the whole delta (out, in).
func (l *lowRank) dense() []float64 {
	d := make([]float64, l.out*l.in) // (out, in)
	for o := 0; o < l.out; o++ {
		l.addRow(o, d[o*l.in:(o+1)*l.in])
	}
	return d
}

// truncate returns the best rank-k approximation (in the Frobenius and spectral norms) of
// the delta l. With l = B·diag(c)·A, QR factorisations B = Qb·Rb and Aᵀ = Qa·Ra give
// l = Qb·(Rb·diag(c)·Raᵀ)·Qaᵀ; the SVD of the small middle matrix M = U·S·Vᵀ gives
// l = (Qb·U)·S·(Qa·V)ᵀ exactly, and keeping the first k singular triplets is the truncation.
// It also returns all singular values of l.
func (l *lowRank) truncate(k int) (*lowRank, []float64) {
	R, in, out := l.r, l.in, l.out
	qb, rb, pb := linalg.QR(l.b, out, R) // qb (out, pb), rb (pb, R)
	at := make([]float64, in*R)          // Aᵀ (in, R)
	for j := 0; j < R; j++ {
		for i := 0; i < in; i++ {
			at[i*R+j] = l.a[j*in+i]
		}
	}
	qa, ra, pa := linalg.QR(at, in, R) // qa (in, pa), ra (pa, R)
	mid := make([]float64, pb*pa)      // Rb·diag(c)·Raᵀ (pb, pa)
	for i := 0; i < pb; i++ {
		for j := 0; j < pa; j++ {
			var s float64
			for t := 0; t < R; t++ {
				s += rb[i*R+t] * l.coef[t] * ra[j*R+t]
			}
			mid[i*pa+j] = s
		}
	}
	u, sv, v := linalg.SVD(mid, pb, pa) // u (pb, q), sv (q), v (pa, q), q = min(pb, pa)
	q := len(sv)
	k = min(k, q)
	t := &lowRank{r: k, in: in, out: out, a: make([]float64, k*in), b: make([]float64, out*k), coef: make([]float64, k)}
	for j := 0; j < k; j++ {
		t.coef[j] = sv[j]
		for o := 0; o < out; o++ { // (Qb·U)[:, j]
			var s float64
			for x := 0; x < pb; x++ {
				s += qb[o*pb+x] * u[x*q+j]
			}
			t.b[o*k+j] = s
		}
		for i := 0; i < in; i++ { // (Qa·V)[:, j]
			var s float64
			for x := 0; x < pa; x++ {
				s += qa[i*pa+x] * v[x*q+j]
			}
			t.a[j*in+i] = s
		}
	}
	return t, sv
}

// trimTopK keeps the k entries of t with the largest magnitude and zeroes the rest (TIES'
// trim step, PEFT's prune "magnitude"). Entries of equal magnitude at the threshold are kept
// in index order, so the result is deterministic.
func trimTopK(t []float64, k int) {
	if k >= len(t) {
		return
	}
	if k <= 0 {
		clear(t)
		return
	}
	mags := make([]float64, len(t))
	for i, v := range t {
		mags[i] = math.Abs(v)
	}
	thr := selectNth(mags, len(t)-k) // the k-th largest magnitude
	above := 0
	for _, v := range t {
		if math.Abs(v) > thr {
			above++
		}
	}
	atThr := k - above // how many entries equal to the threshold survive
	for i, v := range t {
		a := math.Abs(v)
		switch {
		case a > thr:
		case a == thr && atThr > 0:
			atThr--
		default:
			t[i] = 0
		}
	}
}

// selectNth returns the value that would be at index n of a sorted ascending (quickselect with
// Hoare partitioning and a median-of-three pivot, O(len) on average); a is reordered.
func selectNth(a []float64, n int) float64 {
	lo, hi := 0, len(a)-1
	for lo < hi {
		x, y, z := a[lo], a[lo+(hi-lo)/2], a[hi]
		p := max(min(x, y), min(max(x, y), z)) // the median of the three
		i, j := lo, hi
		for i <= j {
			for a[i] < p {
				i++
			}
			for a[j] > p {
				j--
			}
			if i <= j {
				a[i], a[j] = a[j], a[i]
				i++
				j--
			}
		}
		switch {
		case n <= j:
			hi = j
		case n >= i:
			lo = i
		default:
			return a[n] // between the two parts: equal to the pivot
		}
	}
	return a[n]
}

// dropRandom is DARE's drop-and-rescale: each entry survives with probability density and is
// then divided by density (so the expectation is unchanged); the others become 0.
func dropRandom(t []float64, density float64, rng *rand.Rand) {
	for i := range t {
		if rng.Float64() < density {
			t[i] /= density
		} else {
			t[i] = 0
		}
	}
}

// electAndMerge is TIES' elect and disjoint-merge steps over the (trimmed or dropped) task
// vectors ts, all of one length: the sign of each entry is the sign of Σ_i t_i (ties to +),
// and the result is the mean of the entries whose sign agrees with it (zeros never agree).
// The result is written into out.
func electAndMerge(ts [][]float64, out []float64) {
	for e := range out {
		var sum float64
		for _, t := range ts {
			sum += t[e]
		}
		pos := sum >= 0
		var acc float64
		n := 0
		for _, t := range ts {
			v := t[e]
			if (pos && v > 0) || (!pos && v < 0) {
				acc += v
				n++
			}
		}
		if n > 0 {
			out[e] = acc / float64(n)
		} else {
			out[e] = 0
		}
	}
}

// roundOnce rounds the float64 x to dt (F32, BF16 or F16) with a single rounding to nearest,
// ties to even, and returns the bits (a float32's for F32, else the 16-bit pattern). Going
// through float32 first would round twice; instead x is first rounded to float32 with round
// to odd, which keeps the information a second rounding to a format at least two bits
// narrower needs (BF16 keeps 8 significant bits, F16 11, float32 24), so the result is the
// correctly rounded value of x.
func roundOnce(x float64, dt safetensors.DType) uint32 {
	if dt == safetensors.F32 {
		return math.Float32bits(float32(x))
	}
	f := toOdd32(x)
	if dt == safetensors.BF16 {
		return uint32(safetensors.Float32ToBF16(f))
	}
	return uint32(safetensors.Float32ToF16(f))
}

// toOdd32 rounds x to float32 with round to odd: exact values stay, others become the float32
// just below |x| in magnitude with its lowest significand bit set.
func toOdd32(x float64) float32 {
	f := float32(x)
	if float64(f) == x || math.IsNaN(x) || math.IsInf(float64(f), 0) {
		return f
	}
	if math.Abs(float64(f)) > math.Abs(x) {
		f = math.Nextafter32(f, 0)
	}
	return math.Float32frombits(math.Float32bits(f) | 1)
}

// widen returns the float64 value of the bits roundOnce produced.
func widen(bits uint32, dt safetensors.DType) float64 {
	switch dt {
	case safetensors.BF16:
		return float64(safetensors.BF16ToFloat32(uint16(bits)))
	case safetensors.F16:
		return float64(safetensors.F16ToFloat32(uint16(bits)))
	}
	return float64(math.Float32frombits(bits))
}

// taskSeed derives the DARE generator of one adapter's update of one tensor from --seed, so the
// drop mask does not depend on the order tensors are processed in.
func taskSeed(seed uint64, adapter int, tensor string) *rand.Rand {
	h := uint64(14695981039346656037) // FNV-1a over the tensor name
	for i := 0; i < len(tensor); i++ {
		h ^= uint64(tensor[i])
		h *= 1099511628211
	}
	return rand.New(rand.NewPCG(seed, h^uint64(adapter+1)*0x9e3779b97f4a7c15))
}

// finite reports the index of the first NaN or ±Inf in v, or -1.
func firstNonFinite32(v []float32) int {
	for i, x := range v {
		if math.IsNaN(float64(x)) || math.IsInf(float64(x), 0) {
			return i
		}
	}
	return -1
}

// describeIndex names element i of a tensor of the given shape, e.g. "[3, 17]".
func describeIndex(i int, shape []int) string {
	if len(shape) == 0 {
		return "[]"
	}
	idx := make([]int, len(shape))
	for d := len(shape) - 1; d >= 0; d-- {
		if shape[d] > 0 {
			idx[d] = i % shape[d]
			i /= shape[d]
		}
	}
	return fmt.Sprint(idx)
}
