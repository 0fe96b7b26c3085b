package model

import (
	"cmp"
	"fmt"
	"math"
	"math/rand/v2"
	"slices"
)

// Sampler picks the next token from logits: greedy argmax at temperature 0, otherwise a draw
// from softmax(logits/temperature), optionally restricted to the topK most likely tokens and
// then to the nucleus of probability topP. The draws come from a PCG generator seeded by the
// seed, so a given seed always produces the same tokens for the same logits.
// A Sampler is not safe for concurrent use.
type Sampler struct {
	temperature float32 // 0: greedy
	topK        int     // 0: off
	topP        float32 // 1: off
	rng         *rand.Rand

	probs []float64 // (V) unnormalised probabilities exp((l - max)/temperature)
	ids   []int     // (V) candidate token ids, most likely first
}

// CheckSamplerParams reports whether the sampling parameters are valid: temperature ≥ 0,
// topK ≥ 0, 0 < topP ≤ 1. The error names the parameter and its allowed range.
func CheckSamplerParams(temperature float32, topK int, topP float32) error {
	switch {
	case !(temperature >= 0) || math.IsInf(float64(temperature), 0):
		return fmt.Errorf("temperature %g is invalid: use 0 for greedy decoding or a positive value such as 0.8", temperature)
	case topK < 0:
		return fmt.Errorf("top-k %d is invalid: use 0 to disable it or a positive count such as 40", topK)
	case !(topP > 0 && topP <= 1):
		return fmt.Errorf("top-p %g is invalid: use 1 to disable it or a value in (0, 1) such as 0.9", topP)
	}
	return nil
}

// NewSampler returns a sampler. temperature 0 means greedy (ties go to the lowest id); topK 0
// and topP 1 disable those filters. Out-of-range values are clamped (negative or NaN
// temperature → 0, negative topK → 0, topP outside (0, 1] → 1); validate user input with
// CheckSamplerParams first.
func NewSampler(temperature float32, topK int, topP float32, seed uint64) *Sampler {
	if !(temperature > 0) || math.IsInf(float64(temperature), 0) {
		temperature = 0
	}
	if topK < 0 {
		topK = 0
	}
	if !(topP > 0 && topP <= 1) {
		topP = 1
	}
	return &Sampler{
		temperature: temperature,
		topK:        topK,
		topP:        topP,
		rng:         rand.New(rand.NewPCG(seed, 0x9e3779b97f4a7c15)),
	}
}

// Sample returns the next token id for logits (V). It does not modify logits.
func (s *Sampler) Sample(logits []float32) int {
	if s.temperature == 0 || s.topK == 1 {
		return argmax(logits)
	}
	V := len(logits)
	if cap(s.probs) < V {
		s.probs = make([]float64, V)
		s.ids = make([]int, V)
	}
	probs := s.probs[:V] // (V)
	maxv := logits[argmax(logits)]
	invT := 1 / float64(s.temperature)
	var total float64
	for i, l := range logits {
		p := math.Exp((float64(l) - float64(maxv)) * invT) // NaN logits get probability 0
		if math.IsNaN(p) {
			p = 0
		}
		probs[i] = p
		total += p
	}

	if s.topK == 0 && s.topP == 1 { // plain sampling over the whole vocabulary, in id order
		r := s.rng.Float64() * total
		var cum float64
		for i, p := range probs {
			cum += p
			if r < cum {
				return i
			}
		}
		return argmax(logits) // r ≥ total only through rounding
	}

	// Candidates, most likely first (ties: lower id first). With top-p alone, a token whose
	// probability is below (1-topP)/(V-1) cannot be in the nucleus (llama2.c's cutoff), so
	// only the others need sorting.
	ids := s.ids[:0]
	cutoff := 0.0
	if s.topK == 0 && V > 1 {
		cutoff = (1 - float64(s.topP)) / float64(V-1) * total
	}
	for i, p := range probs {
		if p >= cutoff && p > 0 {
			ids = append(ids, i)
		}
	}
	slices.SortFunc(ids, func(a, b int) int {
		if c := cmp.Compare(probs[b], probs[a]); c != 0 {
			return c
		}
		return cmp.Compare(a, b)
	})
	if s.topK > 0 && len(ids) > s.topK {
		ids = ids[:s.topK]
	}
	var kept float64 // probability mass of the candidates
	for _, id := range ids {
		kept += probs[id]
	}
	if s.topP < 1 { // smallest prefix whose mass reaches topP of the candidates' mass
		var cum float64
		for i, id := range ids {
			cum += probs[id]
			if cum >= float64(s.topP)*kept {
				ids = ids[:i+1]
				kept = cum
				break
			}
		}
	}
	r := s.rng.Float64() * kept
	var cum float64
	for _, id := range ids {
		cum += probs[id]
		if r < cum {
			return id
		}
	}
	return ids[0]
}

// argmax returns the index of the largest logit; ties go to the lowest index, NaNs are skipped.
func argmax(logits []float32) int {
	best := 0
	for best < len(logits)-1 && math.IsNaN(float64(logits[best])) {
		best++
	}
	for i := best + 1; i < len(logits); i++ {
		if logits[i] > logits[best] {
			best = i
		}
	}
	return best
}
