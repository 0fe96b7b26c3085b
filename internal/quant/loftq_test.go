package quant

import (
	"testing"
)

// TestLoftQBeatsPlainInit checks that LoftQ's deq(W_q) + s·B·A is closer to W0 than the plain
// start deq(Q(W0)) with B = 0, for every format, and logs the errors.
func TestLoftQBeatsPlainInit(t *testing.T) {
	rng := newRNG(t)
	for _, o := range []Options{{Format: NF4}, {Format: NF4, DoubleQuant: true}, {Format: Int4}, {Format: Int8}} {
		out, in, r := 64+rng.IntN(64), 64+rng.IntN(128), 4+rng.IntN(8)
		// A weight with some low-rank structure on top of Gaussian noise, as trained weights have.
		w := randWeights(rng, out*in)
		lr := make([]float32, out*in)
		for k := 0; k < 3; k++ {
			a, b := randWeights(rng, out), randWeights(rng, in)
			for i := 0; i < out; i++ {
				for j := 0; j < in; j++ {
					lr[i*in+j] += a[i] * b[j]
				}
			}
		}
		for i := range w {
			w[i] = 0.5*w[i] + lr[i]/float32(in)
		}
		s := float32(16) / float32(r)
		plain, err := Quantize("w", w, []int{out, in}, o.withDefaults())
		if err != nil {
			t.Fatal(err)
		}
		e0 := LowRankError(w, plain, nil, nil, r, s)
		for _, iters := range []int{1, 2, 5} {
			q, a, b, err := LoftQ("w", w, []int{out, in}, r, s, o.withDefaults(), iters, rng)
			if err != nil {
				t.Fatal(err)
			}
			e := LowRankError(w, q, a, b, r, s)
			t.Logf("%s dq=%v %d×%d r=%d: plain ‖W0−W_q‖/‖W0‖ = %.5f, LoftQ iters=%d: %.5f", o.Format, o.DoubleQuant, out, in, r, e0, iters, e)
			if e >= e0 {
				t.Fatalf("%s: LoftQ error %.5f is not below the plain init's %.5f", o.Format, e, e0)
			}
		}
	}
}

// withDefaults returns o with the default group size filled in.
func (o Options) withDefaults() Options {
	if o.GroupSize == 0 {
		o.GroupSize = DefaultGroupSize
	}
	return o
}
