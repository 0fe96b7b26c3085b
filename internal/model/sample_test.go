package model

import (
	"cmp"
	"math"
	"math/rand/v2"
	"slices"
	"testing"
)

// randLogits returns n seeded logits with spread scale.
func randLogits(seed uint64, n int, scale float64) []float32 {
	r := rand.New(rand.NewPCG(seed, 3))
	l := make([]float32, n) // (V,)
	for i := range l {
		l[i] = float32(scale * r.NormFloat64())
	}
	return l
}

// softmax64 returns softmax(l/temp) in float64.
func softmax64(l []float32, temp float64) []float64 {
	mx := math.Inf(-1)
	for _, v := range l {
		mx = max(mx, float64(v))
	}
	p := make([]float64, len(l))
	sum := 0.0
	for i, v := range l {
		p[i] = math.Exp((float64(v) - mx) / temp)
		sum += p[i]
	}
	for i := range p {
		p[i] /= sum
	}
	return p
}

// frequencies draws n samples and returns the empirical distribution over len(logits) ids.
func frequencies(s *Sampler, logits []float32, n int) []float64 {
	f := make([]float64, len(logits))
	for i := 0; i < n; i++ {
		f[s.Sample(logits)]++
	}
	for i := range f {
		f[i] /= float64(n)
	}
	return f
}

// checkFreq compares empirical frequencies with expected probabilities (ids with expected
// probability 0 must never appear).
func checkFreq(t *testing.T, what string, got, want []float64, tol float64) {
	t.Helper()
	for i := range want {
		if want[i] == 0 && got[i] != 0 {
			t.Errorf("%s: id %d sampled with frequency %.4f but is outside the allowed set", what, i, got[i])
		} else if math.Abs(got[i]-want[i]) > tol {
			t.Errorf("%s: id %d frequency %.4f, want %.4f ± %.3f", what, i, got[i], want[i], tol)
		}
	}
}

func TestSamplerGreedy(t *testing.T) {
	l := randLogits(1, 100, 2)
	l[17], l[5], l[60] = 50, 50, 50 // three-way tie at the maximum
	for _, s := range []*Sampler{NewSampler(0, 0, 1, 1), NewSampler(0, 5, 0.5, 2), NewSampler(1.5, 1, 1, 3)} {
		for i := 0; i < 10; i++ {
			if got := s.Sample(l); got != 5 {
				t.Fatalf("greedy/top-k=1 with ties at 5, 17, 60: got %d, want the lowest id 5", got)
			}
		}
	}
	l2 := randLogits(2, 10, 1)
	l2[0] = float32(math.NaN())
	want := 1
	for i := 2; i < len(l2); i++ {
		if l2[i] > l2[want] {
			want = i
		}
	}
	if got := NewSampler(0, 0, 1, 0).Sample(l2); got != want {
		t.Errorf("argmax with a NaN at 0: got %d, want %d", got, want)
	}
}

func TestSamplerDeterministic(t *testing.T) {
	l := randLogits(4, 300, 1.5)
	for _, p := range []struct {
		temp float32
		k    int
		topP float32
	}{{1, 0, 1}, {0.8, 40, 1}, {0.9, 0, 0.9}, {1.2, 20, 0.8}} {
		draw := func(seed uint64) []int {
			s := NewSampler(p.temp, p.k, p.topP, seed)
			ids := make([]int, 200)
			for i := range ids {
				ids[i] = s.Sample(l)
			}
			return ids
		}
		a, b, c := draw(42), draw(42), draw(43)
		if !slices.Equal(a, b) {
			t.Errorf("%+v: same seed gave different sequences", p)
		}
		if slices.Equal(a, c) {
			t.Errorf("%+v: seeds 42 and 43 gave the same 200 draws", p)
		}
	}
}

func TestSamplerTemperature(t *testing.T) {
	l := randLogits(5, 6, 1)
	for _, temp := range []float32{0.5, 1, 2} {
		got := frequencies(NewSampler(temp, 0, 1, 7), l, 40000)
		checkFreq(t, "temperature", got, softmax64(l, float64(temp)), 0.012)
	}
}

func TestSamplerTopK(t *testing.T) {
	l := randLogits(6, 12, 1)
	const k = 3
	order := make([]int, len(l))
	for i := range order {
		order[i] = i
	}
	slices.SortFunc(order, func(a, b int) int { return cmp.Compare(l[b], l[a]) })
	p := softmax64(l, 0.8)
	want := make([]float64, len(l))
	sum := 0.0
	for _, id := range order[:k] {
		want[id] = p[id]
		sum += p[id]
	}
	for i := range want {
		want[i] /= sum
	}
	got := frequencies(NewSampler(0.8, k, 1, 8), l, 40000)
	checkFreq(t, "top-k 3", got, want, 0.012)
}

func TestSamplerTopP(t *testing.T) {
	// Probabilities 0.5, 0.3, 0.15, 0.05 on ids 2, 0, 3, 1.
	probs := map[int]float64{2: 0.5, 0: 0.3, 3: 0.15, 1: 0.05}
	l := make([]float32, 4)
	for id, p := range probs {
		l[id] = float32(math.Log(p))
	}
	for _, c := range []struct {
		topP float32
		topK int
		keep []int // ids in the nucleus
	}{
		{0.5, 0, []int{2}},        // 0.5 reaches 0.5
		{0.7, 0, []int{2, 0}},     // 0.5 < 0.7 ≤ 0.8
		{0.9, 0, []int{2, 0, 3}},  // 0.8 < 0.9 ≤ 0.95
		{1, 0, []int{2, 0, 3, 1}}, // off
		{0.9, 2, []int{2, 0}},     // top-k first: {0.5, 0.3}, then 0.9 of 0.8 needs both
		{0.6, 2, []int{2}},        // 0.5/0.8 = 0.625 ≥ 0.6
		{0.99, 3, []int{2, 0, 3}}, // top-k bounds the nucleus
	} {
		want := make([]float64, 4)
		sum := 0.0
		for _, id := range c.keep {
			sum += probs[id]
		}
		for _, id := range c.keep {
			want[id] = probs[id] / sum
		}
		got := frequencies(NewSampler(1, c.topK, c.topP, 9), l, 40000)
		checkFreq(t, "top-p", got, want, 0.012)
	}
}

func TestSamplerTopPLargeVocab(t *testing.T) {
	// Exercises the cutoff pre-filter: every draw must be inside the nucleus computed by a
	// full sort here.
	l := randLogits(10, 3000, 3)
	const topP = 0.8
	p := softmax64(l, 1)
	order := make([]int, len(l))
	for i := range order {
		order[i] = i
	}
	slices.SortFunc(order, func(a, b int) int { return cmp.Compare(p[b], p[a]) })
	nucleus := map[int]bool{}
	cum := 0.0
	for _, id := range order {
		nucleus[id] = true
		cum += p[id]
		if cum >= topP {
			break
		}
	}
	s := NewSampler(1, 0, topP, 11)
	seen := map[int]bool{}
	for i := 0; i < 2000; i++ {
		id := s.Sample(l)
		if !nucleus[id] {
			t.Fatalf("sampled id %d (p=%.3g) outside the top-p %.1f nucleus of %d ids", id, p[id], topP, len(nucleus))
		}
		seen[id] = true
	}
	if len(seen) < len(nucleus)/2 {
		t.Errorf("only %d of %d nucleus ids sampled in 2000 draws", len(seen), len(nucleus))
	}
}

func TestCheckSamplerParams(t *testing.T) {
	for _, c := range []struct {
		temp float32
		k    int
		p    float32
		ok   bool
	}{
		{0, 0, 1, true}, {0.8, 40, 0.9, true}, {-1, 0, 1, false}, {float32(math.NaN()), 0, 1, false},
		{1, -1, 1, false}, {1, 0, 0, false}, {1, 0, 1.5, false},
	} {
		err := CheckSamplerParams(c.temp, c.k, c.p)
		if (err == nil) != c.ok {
			t.Errorf("CheckSamplerParams(%v, %d, %v) = %v, want ok=%v", c.temp, c.k, c.p, err, c.ok)
		}
	}
}
