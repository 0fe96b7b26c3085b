package backendtest

import "math"

// This file holds the float64 reference forward of every op: the definitions that backends are
// compared with, and the functions that the finite differences run on. They are written for
// clarity, not speed.

// refEmbedding returns out (N, C) with out[n, :] = table[tokens[n], :]. table (V, C).
func refEmbedding(table []float64, tokens []int, C int) []float64 {
	out := make([]float64, len(tokens)*C) // (N, C)
	for n, id := range tokens {
		copy(out[n*C:(n+1)*C], table[id*C:(id+1)*C])
	}
	return out
}

// refRMSNorm returns out (N, C) = x / sqrt(mean(x²) + eps) · w. x (N, C), w (C).
func refRMSNorm(x, w []float64, N, C int, eps float64) []float64 {
	out := make([]float64, N*C) // (N, C)
	for n := 0; n < N; n++ {
		ss := 0.0
		for c := 0; c < C; c++ {
			ss += x[n*C+c] * x[n*C+c]
		}
		r := 1 / math.Sqrt(ss/float64(C)+eps)
		for c := 0; c < C; c++ {
			out[n*C+c] = x[n*C+c] * r * w[c]
		}
	}
	return out
}

// refMatMul returns out (N, OC) = x · wᵀ + bias. x (N, C), w (OC, C), bias (OC) or nil.
func refMatMul(x, w, bias []float64, N, C, OC int) []float64 {
	out := make([]float64, N*OC) // (N, OC)
	for n := 0; n < N; n++ {
		for o := 0; o < OC; o++ {
			s := 0.0
			if bias != nil {
				s = bias[o]
			}
			for c := 0; c < C; c++ {
				s += x[n*C+c] * w[o*C+c]
			}
			out[n*OC+o] = s
		}
	}
	return out
}

// refRoPE returns x (N, NH, D) rotated in the rotate_half layout, row n at position pos[n].
// The angle is the float32 product float32(pos)·invFreq[i], as in transformers (and every
// backend); only the rotation is done in float64. invFreq (D/2).
func refRoPE(x []float64, invFreq []float32, pos []int, N, NH, D int) []float64 {
	half := D / 2
	out := make([]float64, N*NH*D) // (N, NH, D)
	for n := 0; n < N; n++ {
		for i := 0; i < half; i++ {
			theta := float64(float32(pos[n]) * invFreq[i])
			c, s := math.Cos(theta), math.Sin(theta)
			for h := 0; h < NH; h++ {
				o := (n*NH + h) * D
				x0, x1 := x[o+i], x[o+i+half]
				out[o+i] = x0*c - x1*s
				out[o+i+half] = x1*c + x0*s
			}
		}
	}
	return out
}

// refAttention returns the attention output out (B, Tq, NH·D) and probabilities att
// (B, NH, Tq, S, 0 where masked) of queries q (B, Tq, NH·D) over keys k and values v
// (B, S, NKV·D). Query t of batch b sees key s when visible(b, t, s); head h uses KV head
// h/(NH/NKV); scores are scaled by 1/sqrt(D).
func refAttention(q, k, v []float64, B, Tq, S, NH, NKV, D int, visible func(b, t, s int) bool) (out, att []float64) {
	out = make([]float64, B*Tq*NH*D) // (B, Tq, NH·D)
	att = make([]float64, B*NH*Tq*S) // (B, NH, Tq, S)
	groups := NH / NKV
	scale := 1 / math.Sqrt(float64(D))
	for b := 0; b < B; b++ {
		for h := 0; h < NH; h++ {
			kh := h / groups
			for t := 0; t < Tq; t++ {
				p := att[((b*NH+h)*Tq+t)*S : ((b*NH+h)*Tq+t+1)*S] // (S,)
				qo := (b*Tq+t)*NH*D + h*D
				maxv := math.Inf(-1)
				for s := 0; s < S; s++ {
					if !visible(b, t, s) {
						continue
					}
					ko := (b*S+s)*NKV*D + kh*D
					dot := 0.0
					for d := 0; d < D; d++ {
						dot += q[qo+d] * k[ko+d]
					}
					p[s] = dot * scale
					maxv = max(maxv, p[s])
				}
				sum := 0.0
				for s := 0; s < S; s++ {
					if visible(b, t, s) {
						p[s] = math.Exp(p[s] - maxv)
						sum += p[s]
					}
				}
				for s := 0; s < S; s++ {
					if !visible(b, t, s) {
						continue
					}
					p[s] /= sum
					vo := (b*S+s)*NKV*D + kh*D
					for d := 0; d < D; d++ {
						out[qo+d] += p[s] * v[vo+d]
					}
				}
			}
		}
	}
	return out, att
}

// refLSE returns the logsumexp (B, NH, T) of the scaled scores of every row of training
// attention (queries and keys of the same T tokens) over the keys visible(b, t, s).
func refLSE(q, k []float64, B, T, NH, NKV, D int, visible func(b, t, s int) bool) []float64 {
	lse := make([]float64, B*NH*T) // (B, NH, T)
	scale := 1 / math.Sqrt(float64(D))
	for b := 0; b < B; b++ {
		for h := 0; h < NH; h++ {
			kh := h / (NH / NKV)
			for t := 0; t < T; t++ {
				var sc []float64
				m := math.Inf(-1)
				for s := 0; s < T; s++ {
					if !visible(b, t, s) {
						continue
					}
					dot := 0.0
					for d := 0; d < D; d++ {
						dot += q[(b*T+t)*NH*D+h*D+d] * k[(b*T+s)*NKV*D+kh*D+d]
					}
					sc = append(sc, dot*scale)
					m = max(m, dot*scale)
				}
				sum := 0.0
				for _, x := range sc {
					sum += math.Exp(x - m)
				}
				lse[(b*NH+h)*T+t] = m + math.Log(sum)
			}
		}
	}
	return lse
}

// segVisible returns the mask of training attention: causal, and within one segment when seg
// (B·T) is not nil.
func segVisible(seg []int, T int) func(b, t, s int) bool {
	return func(b, t, s int) bool {
		return s <= t && (seg == nil || seg[b*T+s] == seg[b*T+t])
	}
}

// refSwiGLU returns out (N) = silu(gate) · up.
func refSwiGLU(gate, up []float64) []float64 {
	out := make([]float64, len(gate)) // (N,)
	for i, g := range gate {
		out[i] = g / (1 + math.Exp(-g)) * up[i]
	}
	return out
}

// refAdd returns a + b.
func refAdd(a, b []float64) []float64 {
	out := make([]float64, len(a)) // (N,)
	for i := range a {
		out[i] = a[i] + b[i]
	}
	return out
}

// refCrossEntropy returns losses (N): logsumexp(logits[n, :]) − logits[n, targets[n]], 0 for
// ignored targets (-100). logits (N, V).
func refCrossEntropy(logits []float64, targets []int, N, V int) []float64 {
	losses := make([]float64, N) // (N,)
	for n := 0; n < N; n++ {
		if targets[n] < 0 {
			continue
		}
		row := logits[n*V : (n+1)*V] // (V,)
		maxv := math.Inf(-1)
		for _, x := range row {
			maxv = max(maxv, x)
		}
		sum := 0.0
		for _, x := range row {
			sum += math.Exp(x - maxv)
		}
		losses[n] = math.Log(sum) + maxv - row[targets[n]]
	}
	return losses
}

// dot returns Σ a[i]·b[i]: the scalar loss L = Σ dy·y whose gradient with respect to y is dy.
func dot(a, b []float64) float64 {
	s := 0.0
	for i := range a {
		s += a[i] * b[i]
	}
	return s
}

// numGrad returns the central finite difference (f(x+eps·e_i) − f(x−eps·e_i)) / 2eps for every
// element of x, in float64; f reads x, which is restored after each probe.
func numGrad(f func() float64, x []float64, eps float64) []float64 {
	g := make([]float64, len(x)) // same shape as x
	for i := range x {
		old := x[i]
		x[i] = old + eps
		fp := f()
		x[i] = old - eps
		fm := f()
		x[i] = old
		g[i] = (fp - fm) / (2 * eps)
	}
	return g
}
