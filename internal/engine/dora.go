package engine

import (
	"fmt"
	"math"

	"github.com/loractl/loractl/internal/backend"
	"github.com/loractl/loractl/internal/optim"
)

// DoRA (Liu et al. 2024, survey eq. 5–6) on one adapted Linear:
//
//	z (N, out) = x·W0ᵀ + s·(drop(x)·Aᵀ)·Bᵀ        the LoRA output without the bias
//	n (out)    = ‖W0 + s·B·A‖ per output row     detached: a constant in backward
//	y          = z·diag(m/n) + bias
//
// backward, given dy:  dm_o = Σ_n dy_no·z_no / n_o,  dz = dy·diag(m/n), then the LoRA
// backward of dz. Treating n as a constant is the DoRA paper's memory-saving form (its
// section 4.3); PEFT does the same (the norm is .detach()ed). The norm is computed without
// forming W0 + s·BA: ‖W0_o‖² (once) + 2s·Σ_k B_ok·G_ko + s²·B_o·(A·Aᵀ)·B_oᵀ with
// G (r, out) = A·W0ᵀ, one device product per step.
//
// The column scaling with the bias, and its reduction Σ_n dy·z, run on the device
// (ColScaleForward, ColScaleBackward); the host computes n and m/n once per step (O(r·out))
// and turns the reduction into dm at SyncGrads.
type doraLinear struct {
	m      optim.Param    // the magnitude (out) and its gradient, host only
	w0n2   []float64      // (out) ‖W0_o‖²
	n      []float32      // (out) the current norms
	c      []float32      // (out) m/n
	cDev   backend.Buffer // (out) m/n on the device
	dcDev  backend.Buffer // (out) Σ_n dy·z since ZeroGrads
	hostDC []float32      // (out)
	g      backend.Buffer // (r, out) A·W0ᵀ
	hostG  []float32      // (r·out)
}

// setupDoRA prepares the DoRA state of an adapted Linear: W0's row norms and the magnitude
// parameter (PEFT's lora_magnitude_vector).
func (e *Engine) setupDoRA(lin *linear, ll *loraLinear) error {
	p := ll.pair
	in, out := lin.in, lin.out
	if len(p.M) != out {
		return fmt.Errorf("engine: %s has a DoRA magnitude of %d values, want %d", p.Module.Path, len(p.M), out)
	}
	w0 := make([]float32, in*out) // (out, in)
	if err := e.be.Download(w0, lin.w); err != nil {
		return fmt.Errorf("engine: DoRA: read %s: %w", p.Module.Weight(), err)
	}
	d := &doraLinear{w0n2: make([]float64, out), n: make([]float32, out), c: make([]float32, out),
		cDev: e.alloc(out), dcDev: e.alloc(out), hostDC: make([]float32, out),
		g: e.alloc(ll.r * out), hostG: make([]float32, ll.r*out)}
	for o := 0; o < out; o++ {
		var s float64
		for _, v := range w0[o*in : (o+1)*in] {
			s += float64(v) * float64(v)
		}
		d.w0n2[o] = s
	}
	d.m = optim.Param{Name: p.Module.Path + ".lora_magnitude_vector", Data: p.M, Grad: make([]float32, out)}
	ll.dora = d
	return nil
}

// doraNorms recomputes n = ‖W0 + s·BA‖_row and c = m/n of every DoRA Linear from the current
// A and B (on the device: G = A·W0ᵀ; on the host: the r×r Gram matrix of A).
func (e *Engine) doraNorms() error {
	for _, bl := range e.blocks {
		for i := range bl.lin {
			lin := &bl.lin[i]
			ll := lin.lora
			if ll == nil || ll.dora == nil {
				continue
			}
			d, p := ll.dora, ll.pair
			r, in, out := ll.r, lin.in, lin.out
			e.be.MatMulForward(d.g, ll.a, lin.w, nil, r, in, out) // G (r, out) = A·W0ᵀ
			if err := e.be.Download(d.hostG, d.g); err != nil {
				return fmt.Errorf("engine: DoRA: %w", err)
			}
			gram := make([]float64, r*r) // (r, r) A·Aᵀ
			for k := 0; k < r; k++ {
				for l := k; l < r; l++ {
					var s float64
					ak, al := p.A[k*in:(k+1)*in], p.A[l*in:(l+1)*in]
					for c, v := range ak {
						s += float64(v) * float64(al[c])
					}
					gram[k*r+l], gram[l*r+k] = s, s
				}
			}
			s := float64(ll.s)
			for o := 0; o < out; o++ {
				b := p.B[o*r : (o+1)*r]
				var cross, quad float64
				for k, bk := range b {
					cross += float64(bk) * float64(d.hostG[k*out+o])
					var t float64
					for l, bl := range b {
						t += gram[k*r+l] * float64(bl)
					}
					quad += float64(bk) * t
				}
				n := float32(math.Sqrt(max(d.w0n2[o]+2*s*cross+s*s*quad, 0)))
				d.n[o] = n
				d.c[o] = p.M[o] / n
			}
			if err := e.be.Upload(d.cDev, d.c); err != nil {
				return fmt.Errorf("engine: DoRA: %w", err)
			}
		}
	}
	return nil
}

// doraForward turns y (N, out), holding z = x·W0ᵀ + s·B·A·drop(x) without the bias, into
// y = z·diag(m/n) + bias, keeping z in zsave (N, out).
func (e *Engine) doraForward(y, zsave backend.Buffer, lin *linear, N int) {
	e.be.Copy(zsave, 0, y, 0, N*lin.out)
	e.be.ColScaleForward(y, y, lin.lora.dora.cDev, lin.b, N, lin.out)
}

// doraBackward writes dz = dy·diag(m/n) into dz and adds Σ_n dy·z to the device reduction
// that doraGrads turns into dm.
func (e *Engine) doraBackward(dz, dy, z backend.Buffer, lin *linear, N int) {
	d := lin.lora.dora
	e.be.ColScaleBackward(dz, d.dcDev, dy, z, d.cDev, N, lin.out)
}

// doraGrads sets every magnitude's gradient, dm_o = (Σ_n dy·z)_o / n_o, from the reductions
// accumulated since ZeroGrads.
func (e *Engine) doraGrads() error {
	for _, ll := range e.lls {
		d := ll.dora
		if d == nil {
			continue
		}
		if err := e.be.Download(d.hostDC, d.dcDev); err != nil {
			return fmt.Errorf("engine: DoRA: download the magnitude gradient of %s: %w", ll.pair.Module.Path, err)
		}
		for o, v := range d.hostDC {
			d.m.Grad[o] = v / d.n[o]
		}
	}
	return nil
}

// doraZero clears the device reductions (ZeroGrads).
func (e *Engine) doraZero() {
	for _, ll := range e.lls {
		if d := ll.dora; d != nil {
			e.be.Zero(d.dcDev, len(d.hostDC))
		}
	}
}
