package engine

import (
	"fmt"
	"math"
	"math/rand/v2"
	"strings"
	"testing"

	"github.com/loractl/loractl/internal/variant"
)

// composedMethods builds every composed LoRA variant over a fresh all-linear adapter of rank 3.
func composedMethods(t *testing.T, ts tinySpec) map[string]func() variant.Method {
	mk := func(name string) func() variant.Method {
		return func() variant.Method {
			m := ts.load(t)
			a := newAdapter(t, m.Config(), 3, 6, 0, 31)
			o := variant.Options{Seed: 5, NolaK: 4, SoraLambda: 0.1, InitR: 3, TargetR: 2, TInit: 1, TFinal: 1, DeltaT: 1, TotalSteps: 10}
			var v variant.Method
			var err error
			switch name {
			case "vera":
				v, err = variant.NewVeRA(a, o)
			case "tied":
				v, err = variant.NewTied(a, o)
			case "nola":
				v, err = variant.NewNOLA(a, o)
			case "sora":
				v, err = variant.NewSoRA(a, o)
			case "adalora":
				v, err = variant.NewAdaLoRA(a, o) // OrthWeight 0: the regulariser is checked in package variant
			}
			if err != nil {
				t.Fatal(err)
			}
			_ = m
			return v
		}
	}
	out := map[string]func() variant.Method{}
	for _, n := range []string{"vera", "tied", "nola", "sora", "adalora"} {
		out[n] = mk(n)
	}
	return out
}

// TestGradCheckComposed checks the gradients of every composed variant's own parameters
// (through the engine's dA', dB' and the variant's chain rule) against central finite
// differences of the float64 reference model fed with the composed factors.
func TestGradCheckComposed(t *testing.T) {
	var sb strings.Builder
	sb.WriteString("composed variants: parameter gradients vs float64 fourth-order differences (h 3e-3)\n")
	sb.WriteString("method     entries  max rel err  max abs err\n")
	for _, ts := range []tinySpec{tinyLlama, tinyQwen3} {
		for _, name := range []string{"vera", "tied", "nola", "sora", "adalora"} {
			v := composedMethods(t, ts)[name]()
			mm := ts.load(t)
			rng := rand.New(rand.NewPCG(77, 3))
			// Move every parameter off its start (b = 0, β = 0, λ = 0 would hide gradients).
			for _, p := range v.Params() {
				for i := range p.Data {
					p.Data[i] += float32(0.1 * rng.NormFloat64())
				}
			}
			v.Compose()
			e := newEngine(t, mm, v.Adapter(), Options{Composer: v})
			b := randomBatch(rng, ts.V, 2, 6)
			_, g := grads(t, e, b)
			refLoss := func() float64 {
				v.Compose()
				return newRef64(t, mm, v.Adapter()).loss(b)
			}
			row := gcRow{name: ts.name + " " + name}
			// The factors are composed in float32, so the step is large (h = 3e-3) and the
			// difference is the fourth-order one: truncation O(h⁴), float32 rounding / h.
			const h = 3e-3
			for pi, p := range e.Params() {
				for range 2 {
					i := rng.IntN(len(p.Data))
					orig := p.Data[i]
					at := func(x float32) float64 { p.Data[i] = x; return refLoss() }
					fd := (8*(at(orig+h)-at(orig-h)) - (at(orig+2*h) - at(orig-2*h))) / (12 * h)
					p.Data[i] = orig
					an := float64(g[pi][i])
					d, scale := math.Abs(an-fd), max(math.Abs(an), math.Abs(fd))
					if d > 1e-3*scale+1e-5 {
						t.Errorf("%s: %s[%d]: analytic %.7g, float64 finite difference %.7g", row.name, p.Name, i, an, fd)
					}
					row.n++
					row.maxAbs = max(row.maxAbs, d)
					if scale > 1e-3 {
						row.maxRel = max(row.maxRel, d/scale)
					}
				}
			}
			v.Compose()
			fmt.Fprintf(&sb, "%-18s %5d  %11.2e  %11.2e\n", row.name, row.n, row.maxRel, row.maxAbs)
		}
	}
	t.Log("\n" + sb.String())
}

// TestComposedStartsAtBase: VeRA (b = 0), Tied (B = 0), NOLA (β = 0), SoRA (B = 0) and
// AdaLoRA (λ = 0) leave the model exactly equal to the base at the start.
func TestComposedStartsAtBase(t *testing.T) {
	for name, mk := range composedMethods(t, tinyLlama) {
		v := mk()
		mm := tinyLlama.load(t)
		e := newEngine(t, mm, v.Adapter(), Options{Composer: v})
		b := randomBatch(rand.New(rand.NewPCG(2, 2)), tinyLlama.V, 1, 8)
		checkLossVsForwardAll(t, mm, e, b)
		for _, p := range v.Adapter().Pairs {
			for _, x := range p.B {
				if x != 0 && name != "adalora" {
					t.Fatalf("%s: B' is not zero at the start", name)
				}
			}
			if name == "adalora" {
				for _, x := range p.A {
					if x != 0 {
						t.Fatalf("adalora: A' = diag(λ)Q is not zero at the start")
					}
				}
			}
		}
	}
}
