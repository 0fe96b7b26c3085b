package variant

import (
	"fmt"
	"math"
	"math/rand/v2"

	"github.com/loractl/loractl/internal/lora"
	"github.com/loractl/loractl/internal/optim"
)

// sora is SoRA (Ding et al. 2023): a gate g (r) between A and B, ΔW = s·B·diag(g)·A. A and B
// train with AdamW; g by a proximal step with L1 strength λ after every optimizer step,
// g ← sign(g')·max(|g'| − η·λ, 0), with η the step's learning rate and g' an Adam step on the
// gate's own gradient (the gates' own optim.AdamW without weight decay, as the SoRA authors'
// sparse AdamW does: a plain
// gradient step at LoRA learning rates barely moves the gates, and the L1 term alone then
// shrinks them all alike). Ranks whose gate reaches zero drop out (and are removed at save).
type sora struct {
	a      *lora.Adapter
	A, B   [][]float32 // per pair: (r, in), (out, r)
	g, dg  [][]float32 // per pair: gate (r) and its gradient
	dA, dB [][]float32
	params []optim.Param
	gates  *optim.AdamW // the gates' own Adam (the proximal step follows it)
	lambda float64
}

// soraGateSteps names the gates' Adam step count in the variant state.
const soraGateSteps = "sora.gate_adam_steps"

// NewSoRA makes a SoRA method from a freshly initialised adapter a (its A and B are the
// starting A and B). The gates start standard normal, seeded per module from o.Seed, as in the
// SoRA authors' code: their spread is what lets the L1 step prune some ranks before others
// (with B = 0 the model still starts at the base).
func NewSoRA(a *lora.Adapter, o Options) (Method, error) {
	if o.SoraLambda < 0 {
		return nil, fmt.Errorf("lora.sora_lambda must not be negative, got %g", o.SoraLambda)
	}
	s := &sora{a: a, lambda: o.SoraLambda}
	var gates []optim.Param
	for _, p := range a.Pairs {
		A, B := append([]float32(nil), p.A...), append([]float32(nil), p.B...)
		g := make([]float32, a.RankOf(p))
		rng := rand.New(rand.NewPCG(o.Seed, seedOf(p.Module.Path)^0x50ba))
		for k := range g {
			g[k] = float32(rng.NormFloat64())
		}
		pa, pb := paramOf(p.Module.Path+".lora_A.weight", A), paramOf(p.Module.Path+".lora_B.weight", B)
		s.A, s.B, s.g = append(s.A, A), append(s.B, B), append(s.g, g)
		pg := paramOf(p.Module.Path+".sora_gate", g)
		s.dA, s.dB, s.dg = append(s.dA, pa.Grad), append(s.dB, pb.Grad), append(s.dg, pg.Grad)
		s.params = append(s.params, pa, pb)
		gates = append(gates, pg)
	}
	var err error
	if s.gates, err = optim.NewAdamW(optim.DefaultAdamW(), []optim.Group{{Params: gates, LRScale: 1, NoDecay: true}}); err != nil {
		return nil, err
	}
	s.Compose()
	return s, nil
}

func (s *sora) Name() string           { return "sora" }
func (s *sora) Adapter() *lora.Adapter { return s.a }
func (s *sora) Params() []optim.Param  { return s.params }

// Gates returns the gate vectors, per pair.
func (s *sora) Gates() [][]float32 { return s.g }

// Compose: A' = diag(g)·A, B' = B.
func (s *sora) Compose() {
	for i, p := range s.a.Pairs {
		in := p.Module.In
		for k, gk := range s.g[i] {
			src, dst := s.A[i][k*in:(k+1)*in], p.A[k*in:(k+1)*in]
			for c, v := range src {
				dst[c] = gk * v
			}
		}
		copy(p.B, s.B[i])
	}
}

// Backward: dA = diag(g)·dA', dg_k = Σ_c dA'_kc·A_kc, dB = dB'.
func (s *sora) Backward(dA, dB [][]float32) error {
	if err := checkGrads(s.a, dA, dB); err != nil {
		return err
	}
	for i, p := range s.a.Pairs {
		in := p.Module.In
		clear(s.dg[i])
		for k, gk := range s.g[i] {
			a, da, out := s.A[i][k*in:(k+1)*in], dA[i][k*in:(k+1)*in], s.dA[i][k*in:(k+1)*in]
			var sum float64
			for c, v := range da {
				sum += float64(v) * float64(a[c])
				out[c] += gk * v
			}
			s.dg[i][k] += float32(sum)
		}
		for j, v := range dB[i] {
			s.dB[i][j] += v
		}
	}
	return nil
}

// AfterStep is the gates' step: Adam on their gradients, then the proximal L1 threshold.
func (s *sora) AfterStep(step int, lr float64) {
	s.gates.Step(lr)
	t := lr * s.lambda
	for i := range s.g {
		for k, g := range s.g[i] {
			s.g[i][k] = float32(math.Copysign(math.Max(math.Abs(float64(g))-t, 0), float64(g)))
		}
	}
}

func (s *sora) State() map[string][]float32 {
	extra := map[string][]float32{}
	for i, p := range s.a.Pairs {
		extra[p.Module.Path+".sora_gate"] = s.g[i]
	}
	st := s.gates.State()
	for _, t := range st.Tensors {
		extra[t.Name] = t.Data
	}
	extra[soraGateSteps] = []float32{float32(st.Step)}
	return stateOf(s.params, extra)
}

func (s *sora) SetState(st map[string][]float32) error {
	if err := setState(st, s.State()); err != nil { // checks every tensor; copies A, B and g
		return err
	}
	gs := optim.State{Step: int(st[soraGateSteps][0])}
	for _, t := range s.gates.State().Tensors {
		gs.Tensors = append(gs.Tensors, optim.Tensor{Name: t.Name, Data: st[t.Name]})
	}
	if err := s.gates.SetState(gs); err != nil {
		return fmt.Errorf("variant state: SoRA gates: %w", err)
	}
	s.Compose()
	return nil
}

// Final removes the ranks whose gate is zero; the gate stays folded into A.
func (s *sora) Final() *lora.Adapter {
	keep := make([][]bool, len(s.g))
	scale := make([]float64, len(s.g))
	for i, p := range s.a.Pairs {
		keep[i] = make([]bool, len(s.g[i]))
		for k, g := range s.g[i] {
			keep[i][k] = g != 0
		}
		scale[i] = float64(s.a.ScaleOf(p))
	}
	out, _ := pruned(s.a, keep, scale)
	return out
}

// EffectiveRanks returns the number of non-zero gates per pair.
func (s *sora) EffectiveRanks() []int {
	out := make([]int, len(s.g))
	for i := range s.g {
		for _, g := range s.g[i] {
			if g != 0 {
				out[i]++
			}
		}
	}
	return out
}

func (s *sora) Describe() string {
	return fmt.Sprintf("sora: LoRA A, B (AdamW) with a gate g (r) per module between them, updated by an Adam step and a proximal L1 step (threshold η·λ, λ = %g, η = lr) after each optimizer step; zero gates are removed at save", s.lambda)
}
