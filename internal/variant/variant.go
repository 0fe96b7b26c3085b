// Package variant holds the LoRA variants of the survey "Low-Rank Adaptation for Foundation
// Models" (arXiv 2501.00365) whose update is a function of parameters of their own: VeRA,
// Tied-LoRA, NOLA, SoRA and AdaLoRA.
//
// Each one is a Method: its trainable parameters θ map, on the host, to effective LoRA factors
// A' (r, in) and B' (out, r) of every adapted module, so that ΔW = s·B'A' and the engine runs
// them through the plain LoRA path on any backend. After backward the engine hands back
// ∂L/∂A' and ∂L/∂B', and the Method applies the chain rule into θ:
//
//	VeRA, Tied:  A' = diag(d)·A,  B' = diag(b)·B      dd_k = Σ_i dA'_ki A_ki,  db_o = Σ_k dB'_ok B_ok
//	             (Tied also trains the shared A, B:  dA += diag(d)·dA',  dB += diag(b)·dB')
//	NOLA:        A' = Σ_j α_j A_j,  B' = Σ_j β_j B_j   dα_j = ⟨dA', A_j⟩,  dβ_j = ⟨dB', B_j⟩
//	SoRA:        A' = diag(g)·A,  B' = B              dg_k = Σ_i dA'_ki A_ki,  dA = diag(g)·dA'
//	AdaLoRA:     A' = diag(λ)·Q,  B' = P              dλ_k = Σ_i dA'_ki Q_ki,  dQ = diag(λ)·dA'
//
// The composition costs O(r·(in+out)) per module and step, small next to the O(N·r·(in+out))
// products of the pass itself. The effective adapter is a plain PEFT LoRA adapter, so every
// variant's result loads wherever LoRA does (and merges exactly); VeRA is also written in
// PEFT's own VeRA format.
package variant

import (
	"fmt"

	"github.com/loractl/loractl/internal/lora"
	"github.com/loractl/loractl/internal/optim"
)

// Method is a LoRA variant that composes effective factors from parameters of its own.
type Method interface {
	// Name is the lora.method value.
	Name() string
	// Adapter is the effective adapter: its pairs' A and B hold A' and B' after Compose.
	Adapter() *lora.Adapter
	// Params are the parameters AdamW trains, with their gradient buffers.
	Params() []optim.Param
	// Compose writes A' and B' of every pair from the parameters.
	Compose()
	// Backward adds the gradients of the parameters given dA[i], dB[i] (the gradients of
	// pair i's A' and B'). The caller zeroes the parameter gradients.
	Backward(dA, dB [][]float32) error
	// AfterStep runs after each optimizer step (step counts from 1) at learning rate lr:
	// SoRA's proximal gate update, AdaLoRA's importance and budget masking.
	AfterStep(step int, lr float64)
	// State returns every tensor a resumed run needs (parameters and internal state) by name;
	// SetState restores them.
	State() map[string][]float32
	SetState(map[string][]float32) error
	// Final returns the adapter to save: the effective factors, with zeroed ranks removed
	// where the method prunes (SoRA, AdaLoRA). It may differ from Adapter().
	Final() *lora.Adapter
	// Describe says what is trained, for --dry-run and the log.
	Describe() string
}

// Options are the variant hyperparameters (config lora.*).
type Options struct {
	Seed                     uint64
	DInitial                 float64 // VeRA: the initial value of d (PEFT's d_initial, 0.1)
	SaveProjection           bool    // VeRA: store the shared projections in the saved adapter
	NolaK                    int     // NOLA: random bases per factor
	SoraLambda               float64 // SoRA: L1 strength of the gate's proximal step
	InitR, TargetR           int     // AdaLoRA: initial and target rank per module
	TInit, TFinal, DeltaT    int     // AdaLoRA: warm-up steps, final steps, steps between maskings
	TotalSteps               int     // AdaLoRA: train.max_steps
	Beta1, Beta2, OrthWeight float64 // AdaLoRA: EMA of sensitivity and uncertainty; orthogonality weight
}

// paramOf makes an optim.Param over data with a fresh gradient.
func paramOf(name string, data []float32) optim.Param {
	return optim.Param{Name: name, Data: data, Grad: make([]float32, len(data))}
}

// stateOf collects params into a name → values map.
func stateOf(ps []optim.Param, extra map[string][]float32) map[string][]float32 {
	st := map[string][]float32{}
	for _, p := range ps {
		st[p.Name] = p.Data
	}
	for k, v := range extra {
		st[k] = v
	}
	return st
}

// setState copies st into the named buffers, checking names and sizes.
func setState(st map[string][]float32, bufs map[string][]float32) error {
	for name, dst := range bufs {
		v, ok := st[name]
		if !ok || len(v) != len(dst) {
			return fmt.Errorf("variant state: tensor %s is missing or has another size (%d, want %d)", name, len(v), len(dst))
		}
		copy(dst, v)
	}
	return nil
}

// checkGrads verifies that dA, dB match the adapter's pairs.
func checkGrads(a *lora.Adapter, dA, dB [][]float32) error {
	if len(dA) != len(a.Pairs) || len(dB) != len(a.Pairs) {
		return fmt.Errorf("variant: %d/%d gradients for %d pairs", len(dA), len(dB), len(a.Pairs))
	}
	for i, p := range a.Pairs {
		if len(dA[i]) != len(p.A) || len(dB[i]) != len(p.B) {
			return fmt.Errorf("variant: gradient sizes of %s do not match its factors", p.Module.Path)
		}
	}
	return nil
}
