package variant

import (
	"fmt"
	"math/rand/v2"
	"sort"
	"strings"

	"github.com/loractl/loractl/internal/lora"
	"github.com/loractl/loractl/internal/optim"
)

// adalora is AdaLoRA (Zhang et al. 2023) in the SVD form ΔW = s·P·diag(λ)·Q with P (out, r),
// λ (r), Q (r, in), s = alpha/(r + 1e-5) as PEFT scales it, P and Q from N(0, 0.02²) and λ = 0
// (so the adapted model starts equal to the base).
//
// Training adds the orthogonality regulariser γ·mean over modules of ‖PᵀP − I‖²_F + ‖QQᵀ − I‖²_F
// (gradients 4γ/n·P(PᵀP − I) and 4γ/n·(QQᵀ − I)Q, added on the host). After every optimizer
// step the importance of each entry, I = |w·∂L/∂w|, is smoothed (Ī ← β1·Ī + (1−β1)·I) with
// its uncertainty (Ū ← β2·Ū + (1−β2)·|I − Ī|); the score of the k-th singular triplet is
// Ī·Ū of λ_k plus the mean score of Q's row k and of P's column k. The budget (total rank
// over all modules) falls from init_r·n to target_r·n on a cubic schedule between tinit and
// T − tfinal; every deltaT steps the λ of the lowest-scoring triplets beyond the budget are
// set to 0, and in the last tfinal steps the final mask stays fixed.
type adalora struct {
	a                  *lora.Adapter
	o                  Options
	P, Q, E            [][]float32 // per pair: (out, r), (r, in), (r)
	dP, dQ, dE         [][]float32
	params             []optim.Param
	iBar, uBar         [][]float32 // per parameter (params order): smoothed importance and uncertainty
	mask               [][]bool    // per pair (r): the triplet is kept
	final              bool        // the final mask is fixed
	s                  float64
	OrthLoss, LastBudg float64
}

// NewAdaLoRA makes an AdaLoRA method; a's pairs are of rank init_r.
func NewAdaLoRA(a *lora.Adapter, o Options) (Method, error) {
	r := a.Config.R
	switch {
	case o.InitR != r:
		return nil, fmt.Errorf("lora.init_r %d must equal the adapter rank %d", o.InitR, r)
	case o.TargetR < 1 || o.TargetR > o.InitR:
		return nil, fmt.Errorf("lora.target_r must be in [1, lora.init_r = %d], got %d", o.InitR, o.TargetR)
	case o.TInit < 0 || o.TFinal < 0 || o.TInit+o.TFinal >= o.TotalSteps:
		return nil, fmt.Errorf("lora.tinit (%d) + lora.tfinal (%d) must be less than train.max_steps (%d), so that the budget has steps to fall in", o.TInit, o.TFinal, o.TotalSteps)
	case o.DeltaT < 1:
		return nil, fmt.Errorf("lora.delta_t must be at least 1, got %d", o.DeltaT)
	}
	if o.Beta1 == 0 {
		o.Beta1 = 0.85
	}
	if o.Beta2 == 0 {
		o.Beta2 = 0.85
	}
	d := &adalora{a: a, o: o, s: a.Config.Alpha / (float64(r) + 1e-5)}
	a.Config.Alpha = d.s * float64(r) // s = alpha/(r + 1e-5), as PEFT scales it
	rng := rand.New(rand.NewPCG(o.Seed, 0xada))
	for _, p := range a.Pairs {
		if a.RankOf(p) != r {
			return nil, fmt.Errorf("lora.method adalora starts every module at lora.init_r, but %s has rank %d", p.Module.Path, a.RankOf(p))
		}
		in, out := p.Module.In, p.Module.Out
		P, Q, E := make([]float32, out*r), make([]float32, r*in), make([]float32, r)
		for i := range P {
			P[i] = float32(0.02 * rng.NormFloat64())
		}
		for i := range Q {
			Q[i] = float32(0.02 * rng.NormFloat64())
		}
		pq, pe, pp := paramOf(p.Module.Path+".lora_A", Q), paramOf(p.Module.Path+".lora_E", E), paramOf(p.Module.Path+".lora_B", P)
		d.P, d.Q, d.E = append(d.P, P), append(d.Q, Q), append(d.E, E)
		d.dP, d.dQ, d.dE = append(d.dP, pp.Grad), append(d.dQ, pq.Grad), append(d.dE, pe.Grad)
		d.params = append(d.params, pq, pe, pp)
		m := make([]bool, r)
		for k := range m {
			m[k] = true
		}
		d.mask = append(d.mask, m)
	}
	for _, p := range d.params {
		d.iBar, d.uBar = append(d.iBar, make([]float32, len(p.Data))), append(d.uBar, make([]float32, len(p.Data)))
	}
	d.Compose()
	return d, nil
}

func (d *adalora) Name() string           { return "adalora" }
func (d *adalora) Adapter() *lora.Adapter { return d.a }
func (d *adalora) Params() []optim.Param  { return d.params }

// Compose: A' = diag(λ)·Q, B' = P.
func (d *adalora) Compose() {
	for i, p := range d.a.Pairs {
		in := p.Module.In
		for k, e := range d.E[i] {
			src, dst := d.Q[i][k*in:(k+1)*in], p.A[k*in:(k+1)*in]
			for c, v := range src {
				dst[c] = e * v
			}
		}
		copy(p.B, d.P[i])
	}
}

// Backward: dQ = diag(λ)·dA', dλ_k = Σ_c dA'_kc·Q_kc, dP = dB', plus the regulariser's
// gradients.
func (d *adalora) Backward(dA, dB [][]float32) error {
	if err := checkGrads(d.a, dA, dB); err != nil {
		return err
	}
	n := float64(len(d.a.Pairs))
	w := 4 * d.o.OrthWeight / n
	d.OrthLoss = 0
	for i, p := range d.a.Pairs {
		r, in, out := d.a.RankOf(p), p.Module.In, p.Module.Out
		for k, e := range d.E[i] {
			q, da, dq := d.Q[i][k*in:(k+1)*in], dA[i][k*in:(k+1)*in], d.dQ[i][k*in:(k+1)*in]
			var s float64
			for c, v := range da {
				s += float64(v) * float64(q[c])
				dq[c] += e * v
			}
			d.dE[i][k] += float32(s)
		}
		for j, v := range dB[i] {
			d.dP[i][j] += v
		}
		if d.o.OrthWeight == 0 {
			continue
		}
		// QQᵀ − I (r, r) and PᵀP − I (r, r), in float64.
		gq, gp := make([]float64, r*r), make([]float64, r*r)
		for a := 0; a < r; a++ {
			for b := 0; b < r; b++ {
				var sq, sp float64
				for c := 0; c < in; c++ {
					sq += float64(d.Q[i][a*in+c]) * float64(d.Q[i][b*in+c])
				}
				for o := 0; o < out; o++ {
					sp += float64(d.P[i][o*r+a]) * float64(d.P[i][o*r+b])
				}
				if a == b {
					sq, sp = sq-1, sp-1
				}
				gq[a*r+b], gp[a*r+b] = sq, sp
				d.OrthLoss += (sq*sq + sp*sp) * d.o.OrthWeight / n
			}
		}
		for a := 0; a < r; a++ { // dQ += w·(QQᵀ − I)·Q
			for c := 0; c < in; c++ {
				var s float64
				for b := 0; b < r; b++ {
					s += gq[a*r+b] * float64(d.Q[i][b*in+c])
				}
				d.dQ[i][a*in+c] += float32(w * s)
			}
		}
		for o := 0; o < out; o++ { // dP += w·P·(PᵀP − I)
			for b := 0; b < r; b++ {
				var s float64
				for a := 0; a < r; a++ {
					s += float64(d.P[i][o*r+a]) * gp[a*r+b]
				}
				d.dP[i][o*r+b] += float32(w * s)
			}
		}
	}
	return nil
}

// budget returns the total rank at step t and whether this step masks (PEFT's schedule).
func (d *adalora) budget(t int) (int, bool) {
	n := len(d.a.Pairs)
	initB, targetB := d.o.InitR*n, d.o.TargetR*n
	T := d.o.TotalSteps
	switch {
	case t <= d.o.TInit:
		return initB, false
	case t > T-d.o.TFinal:
		return targetB, true
	default:
		c := 1 - float64(t-d.o.TInit)/float64(T-d.o.TFinal-d.o.TInit)
		return int(float64(initB-targetB)*c*c*c) + targetB, t%d.o.DeltaT == 0
	}
}

// AfterStep updates the importance scores and masks λ to the budget.
func (d *adalora) AfterStep(t int, lr float64) {
	b1, b2 := float32(d.o.Beta1), float32(d.o.Beta2)
	T := d.o.TotalSteps
	if t > d.o.TInit && t <= T-d.o.TFinal && !d.final {
		for pi, p := range d.params {
			ib, ub := d.iBar[pi], d.uBar[pi]
			for j, w := range p.Data {
				ipt := w * p.Grad[j]
				if ipt < 0 {
					ipt = -ipt
				}
				ib[j] = b1*ib[j] + (1-b1)*ipt
				u := ipt - ib[j]
				if u < 0 {
					u = -u
				}
				ub[j] = b2*ub[j] + (1-b2)*u
			}
		}
	}
	budget, doMask := d.budget(t)
	d.LastBudg = float64(budget)
	if d.final {
		d.applyMask()
		return
	}
	if !doMask {
		return
	}
	type triplet struct {
		pair, k int
		score   float64
	}
	var all []triplet
	for i, p := range d.a.Pairs {
		r, in, out := d.a.RankOf(p), p.Module.In, p.Module.Out
		iq, ie, ip := 3*i, 3*i+1, 3*i+2 // params order: Q, E, P
		for k := 0; k < r; k++ {
			s := float64(d.iBar[ie][k] * d.uBar[ie][k])
			var sq, sp float64
			for c := 0; c < in; c++ {
				sq += float64(d.iBar[iq][k*in+c] * d.uBar[iq][k*in+c])
			}
			for o := 0; o < out; o++ {
				sp += float64(d.iBar[ip][o*r+k] * d.uBar[ip][o*r+k])
			}
			all = append(all, triplet{i, k, s + sq/float64(in) + sp/float64(out)})
		}
	}
	sort.SliceStable(all, func(x, y int) bool { return all[x].score > all[y].score })
	for _, m := range d.mask {
		clear(m)
	}
	for j, tr := range all {
		if j < budget {
			d.mask[tr.pair][tr.k] = true
		}
	}
	d.applyMask()
	if t > T-d.o.TFinal {
		d.final = true
	}
}

func (d *adalora) applyMask() {
	for i, m := range d.mask {
		for k, keep := range m {
			if !keep {
				d.E[i][k] = 0
			}
		}
	}
	d.Compose()
}

func (d *adalora) State() map[string][]float32 {
	extra := map[string][]float32{}
	for pi, p := range d.params {
		extra[p.Name+".ipt_ema"], extra[p.Name+".unc_ema"] = d.iBar[pi], d.uBar[pi]
	}
	return stateOf(d.params, extra)
}

func (d *adalora) SetState(st map[string][]float32) error {
	if err := setState(st, d.State()); err != nil {
		return err
	}
	// The mask is what the restored λ say: a pruned triplet has λ = 0.
	for i := range d.mask {
		for k := range d.mask[i] {
			d.mask[i][k] = d.E[i][k] != 0
		}
	}
	d.Compose()
	return nil
}

// Ranks returns the kept ranks per pair.
func (d *adalora) Ranks() []int {
	out := make([]int, len(d.mask))
	for i, m := range d.mask {
		for k, keep := range m {
			if keep && d.E[i][k] != 0 {
				out[i]++
			}
		}
	}
	return out
}

// Final keeps the triplets with λ ≠ 0 (folded: A = diag(λ)·Q) as a LoRA adapter whose
// per-module ranks are PEFT's rank_pattern.
func (d *adalora) Final() *lora.Adapter {
	keep := make([][]bool, len(d.E))
	scale := make([]float64, len(d.E))
	for i := range d.E {
		keep[i] = make([]bool, len(d.E[i]))
		for k, e := range d.E[i] {
			keep[i][k] = d.mask[i][k] && e != 0
		}
		scale[i] = d.s
	}
	out, _ := pruned(d.a, keep, scale)
	out.Config.RSLoRA = false
	return out
}

func (d *adalora) Describe() string {
	var b strings.Builder
	fmt.Fprintf(&b, "adalora: P·diag(λ)·Q per module, init_r %d → target_r %d (budget %d → %d over %d modules), cubic schedule with tinit %d, tfinal %d, delta_t %d; importance EMA β1 %g, β2 %g; orthogonality weight %g",
		d.o.InitR, d.o.TargetR, d.o.InitR*len(d.a.Pairs), d.o.TargetR*len(d.a.Pairs), len(d.a.Pairs), d.o.TInit, d.o.TFinal, d.o.DeltaT, d.o.Beta1, d.o.Beta2, d.o.OrthWeight)
	return b.String()
}
