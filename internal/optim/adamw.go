// Package optim holds the optimizer side of training, over plain float32 slices: AdamW as
// torch.optim.AdamW computes it, the learning-rate schedules of transformers
// (constant, linear and cosine, each with linear warmup), global-norm gradient clipping as
// torch.nn.utils.clip_grad_norm_, and small helpers for gradient accumulation.
//
// Everything here is serial and visits tensors in the order the caller gave them, so the same
// inputs always give bitwise-identical outputs.
//
// One AdamW step on a parameter p with gradient g, at step t (1 for the first update), group
// learning rate lr = scheduled lr × group LRScale, in float32 like torch's single-tensor path:
//
//	p  = p · (1 − lr·wd)                 decoupled weight decay, before the Adam update
//	m  = m + (1−β1)·(g − m)              torch: exp_avg.lerp_(grad, 1−β1)
//	v  = β2·v + (1−β2)·g·g               torch: exp_avg_sq.mul_(β2).addcmul_(grad, grad, 1−β2)
//	d  = sqrt(v) / sqrt(1−β2^t) + eps    bias-corrected second moment, eps outside the sqrt
//	p  = p − (lr/(1−β1^t)) · m / d       bias-corrected first moment
//
// Scalars that depend only on t and lr (1−β1^t, lr/(1−β1^t), …) are computed in float64, as
// Python does in torch, and rounded to float32 once.
package optim

import (
	"fmt"
	"math"
)

// AdamWConfig holds the AdamW hyperparameters other than the learning rate, which comes from
// the schedule at every step.
type AdamWConfig struct {
	Beta1       float64 // first-moment decay; default 0.9
	Beta2       float64 // second-moment decay; default 0.999
	Eps         float64 // added to sqrt(v̂); default 1e-8
	WeightDecay float64 // decoupled weight decay; default 0
}

// DefaultAdamW returns betas (0.9, 0.999), eps 1e-8 and weight decay 0. These are the defaults
// of transformers' Trainer (TrainingArguments.weight_decay = 0); note that torch.optim.AdamW
// itself defaults to weight_decay 0.01.
func DefaultAdamW() AdamWConfig {
	return AdamWConfig{Beta1: 0.9, Beta2: 0.999, Eps: 1e-8, WeightDecay: 0}
}

// Param is one trainable tensor: its values, updated in place by Step, and its gradient, read
// by Step. Both slices must keep their backing arrays for the optimizer's lifetime.
type Param struct {
	Name string    // unique across all groups; names the moments in State
	Data []float32 // the parameter, updated in place
	Grad []float32 // its gradient, same length as Data
}

// Group is a set of parameters that share a learning-rate multiplier, as a torch param group
// with lr = scheduled lr × LRScale. LoRA+ puts the B matrices in a group with a larger LRScale.
type Group struct {
	Params  []Param
	LRScale float64 // multiplies the scheduled lr; must be > 0 (1 for plain AdamW)
	NoDecay bool    // true: no weight decay for this group (biases, norms)
}

// AdamW is the optimizer state: the hyperparameters, the groups, and for every parameter the
// first and second moments (exp_avg and exp_avg_sq in torch), plus the number of steps done.
type AdamW struct {
	cfg    AdamWConfig
	groups []Group
	m, v   [][]float32 // per parameter, in group order then parameter order
	step   int
}

// NewAdamW checks the hyperparameters and the groups and returns an optimizer with zero
// moments at step 0.
func NewAdamW(cfg AdamWConfig, groups []Group) (*AdamW, error) {
	switch {
	case !(cfg.Beta1 >= 0 && cfg.Beta1 < 1):
		return nil, fmt.Errorf("adamw: beta1 = %g, want 0 ≤ beta1 < 1 (default 0.9)", cfg.Beta1)
	case !(cfg.Beta2 >= 0 && cfg.Beta2 < 1):
		return nil, fmt.Errorf("adamw: beta2 = %g, want 0 ≤ beta2 < 1 (default 0.999)", cfg.Beta2)
	case !(cfg.Eps > 0) || math.IsInf(cfg.Eps, 0):
		return nil, fmt.Errorf("adamw: eps = %g, want a small positive number (default 1e-8)", cfg.Eps)
	case !(cfg.WeightDecay >= 0) || math.IsInf(cfg.WeightDecay, 0):
		return nil, fmt.Errorf("adamw: weight_decay = %g, want ≥ 0 (default 0)", cfg.WeightDecay)
	}
	o := &AdamW{cfg: cfg}
	seen := map[string]bool{}
	for gi, g := range groups {
		if !(g.LRScale > 0) || math.IsInf(g.LRScale, 0) {
			return nil, fmt.Errorf("adamw: group %d has lr scale %g, want > 0 (1 for the plain learning rate)", gi, g.LRScale)
		}
		for _, p := range g.Params {
			if p.Name == "" {
				return nil, fmt.Errorf("adamw: group %d has a parameter without a name; every parameter needs a unique name for the optimizer state", gi)
			}
			if seen[p.Name] {
				return nil, fmt.Errorf("adamw: parameter %q appears twice; each parameter must be in exactly one group", p.Name)
			}
			seen[p.Name] = true
			if len(p.Grad) != len(p.Data) {
				return nil, fmt.Errorf("adamw: parameter %q has %d values but a gradient of %d", p.Name, len(p.Data), len(p.Grad))
			}
			o.m = append(o.m, make([]float32, len(p.Data)))
			o.v = append(o.v, make([]float32, len(p.Data)))
		}
	}
	o.groups = groups
	return o, nil
}

// Config returns the hyperparameters.
func (o *AdamW) Config() AdamWConfig { return o.cfg }

// Steps returns the number of updates done so far (torch's state["step"]).
func (o *AdamW) Steps() int { return o.step }

// Step does one AdamW update of every parameter with learning rate lr (before the group
// multipliers), reading the gradients as they are now.
func (o *AdamW) Step(lr float64) {
	o.step++
	t := float64(o.step)
	b1, b2 := o.cfg.Beta1, o.cfg.Beta2
	bc1 := 1 - math.Pow(b1, t)
	bc2Sqrt := math.Sqrt(1 - math.Pow(b2, t))

	// float32 scalars, rounded once from float64 as torch does with Python floats.
	w1 := float32(1 - b1) // lerp weight
	w1c := 1 - w1         // torch's lerp uses end − (end−start)·(1−w) when w ≥ 0.5
	beta2 := float32(b2)
	w2 := float32(1 - b2)
	eps := float32(o.cfg.Eps)
	sqrtBC2 := float32(bc2Sqrt)

	k := 0
	for _, g := range o.groups {
		glr := lr * g.LRScale
		decay := float32(1)
		if !g.NoDecay && o.cfg.WeightDecay != 0 {
			decay = float32(1 - glr*o.cfg.WeightDecay)
		}
		negStep := float32(-(glr / bc1))
		for _, p := range g.Params {
			m, v := o.m[k], o.v[k]
			k++
			data, grad := p.Data, p.Grad[:len(p.Data)]
			for i, gr := range grad {
				// The explicit float32 conversions forbid fused multiply-add (even across
				// statements), so every architecture rounds after each operation and gives
				// the same bits.
				x := data[i]
				if decay != 1 {
					x = float32(x * decay)
				}
				var mi float32
				if w1 < 0.5 {
					mi = m[i] + float32(w1*(gr-m[i]))
				} else {
					mi = gr - float32((gr-m[i])*w1c)
				}
				vi := float32(v[i]*beta2) + float32(float32(w2*gr)*gr)
				den := float32(float32(math.Sqrt(float64(vi)))/sqrtBC2) + eps
				x += float32(float32(negStep*mi) / den)
				m[i], v[i], data[i] = mi, vi, x
			}
		}
	}
}

// Tensor is a named float32 tensor of the optimizer state.
type Tensor struct {
	Name string
	Data []float32
}

// State is everything needed to continue AdamW exactly: the number of steps done and, for
// every parameter P, the tensors "P.exp_avg" (first moment) and "P.exp_avg_sq" (second
// moment), in group and parameter order.
type State struct {
	Step    int
	Tensors []Tensor
}

// State returns a copy of the optimizer state, for a checkpoint.
func (o *AdamW) State() State {
	s := State{Step: o.step}
	k := 0
	for _, g := range o.groups {
		for _, p := range g.Params {
			s.Tensors = append(s.Tensors,
				Tensor{Name: p.Name + ".exp_avg", Data: append([]float32(nil), o.m[k]...)},
				Tensor{Name: p.Name + ".exp_avg_sq", Data: append([]float32(nil), o.v[k]...)})
			k++
		}
	}
	return s
}

// SetState restores a state returned by State (tensors in any order). It checks that every
// moment is present with the right length and that there are no extra tensors, and changes
// nothing when the state does not fit.
func (o *AdamW) SetState(s State) error {
	if s.Step < 0 {
		return fmt.Errorf("adamw state: step %d is negative; the checkpoint is corrupt", s.Step)
	}
	byName := make(map[string][]float32, len(s.Tensors))
	for _, t := range s.Tensors {
		if _, dup := byName[t.Name]; dup {
			return fmt.Errorf("adamw state: tensor %q appears twice; the checkpoint is corrupt", t.Name)
		}
		byName[t.Name] = t.Data
	}
	want := 0
	for _, g := range o.groups {
		for _, p := range g.Params {
			for _, suffix := range []string{".exp_avg", ".exp_avg_sq"} {
				name := p.Name + suffix
				d, ok := byName[name]
				if !ok {
					return fmt.Errorf("adamw state: missing %q; the checkpoint was written for other trainable parameters (another LoRA config?)", name)
				}
				if len(d) != len(p.Data) {
					return fmt.Errorf("adamw state: %q has %d values, the parameter has %d; the checkpoint was written for another config", name, len(d), len(p.Data))
				}
				want++
			}
		}
	}
	if len(byName) != want {
		for _, t := range s.Tensors {
			if !o.hasMoment(t.Name) {
				return fmt.Errorf("adamw state: unexpected tensor %q; the checkpoint was written for other trainable parameters (another LoRA config?)", t.Name)
			}
		}
	}
	k := 0
	for _, g := range o.groups {
		for _, p := range g.Params {
			copy(o.m[k], byName[p.Name+".exp_avg"])
			copy(o.v[k], byName[p.Name+".exp_avg_sq"])
			k++
		}
	}
	o.step = s.Step
	return nil
}

func (o *AdamW) hasMoment(name string) bool {
	for _, g := range o.groups {
		for _, p := range g.Params {
			if name == p.Name+".exp_avg" || name == p.Name+".exp_avg_sq" {
				return true
			}
		}
	}
	return false
}
