package variant

import (
	"math"

	"github.com/loractl/loractl/internal/lora"
)

// withScale sets pair p's alpha so that its scale (alpha/r, alpha/√r with rsLoRA, at its own
// rank) is s: how a pruned or rescaled pair keeps its update in PEFT's alpha_pattern.
func withScale(c lora.Config, p *lora.Pair, s float64) {
	r := float64(p.R)
	if c.RSLoRA {
		p.Alpha = s * math.Sqrt(r)
	} else {
		p.Alpha = s * r
	}
}

// pruned returns a copy of adapter a keeping, for every pair, the ranks k where keep[i][k],
// at the scale scale[i]: A keeps rows, B columns. Pairs that keep no rank are left out; the
// returned counts are the kept ranks per pair of a (0 for one left out).
func pruned(a *lora.Adapter, keep [][]bool, scale []float64) (*lora.Adapter, []int) {
	out := &lora.Adapter{Config: a.Config}
	out.Config.RankPattern = nil
	ranks := make([]int, len(a.Pairs))
	for i, p := range a.Pairs {
		r, in, o := a.RankOf(p), p.Module.In, p.Module.Out
		var idx []int
		for k := 0; k < r; k++ {
			if keep[i][k] {
				idx = append(idx, k)
			}
		}
		ranks[i] = len(idx)
		if len(idx) == 0 {
			continue
		}
		n := len(idx)
		q := &lora.Pair{Module: p.Module, R: n, A: make([]float32, n*in), B: make([]float32, o*n)}
		for j, k := range idx {
			copy(q.A[j*in:(j+1)*in], p.A[k*in:(k+1)*in])
			for row := 0; row < o; row++ {
				q.B[row*n+j] = p.B[row*r+k]
			}
		}
		withScale(a.Config, q, scale[i])
		out.Pairs = append(out.Pairs, q)
	}
	// PEFT's r is the most common rank; the others go to rank_pattern on save.
	count := map[int]int{}
	best := 0
	for _, q := range out.Pairs {
		count[q.R]++
		if count[q.R] > count[best] {
			best = q.R
		}
	}
	if best > 0 {
		out.Config.R = best
		out.Config.Alpha = 0
		if len(out.Pairs) > 0 {
			out.Config.Alpha = out.Pairs[0].Alpha
			for _, q := range out.Pairs {
				if q.R == best {
					out.Config.Alpha = q.Alpha
					break
				}
			}
		}
	}
	return out, ranks
}
