package variant

import (
	"fmt"
	"math"
	"math/rand/v2"

	"github.com/loractl/loractl/internal/lora"
	"github.com/loractl/loractl/internal/optim"
)

// nola is NOLA (Koohpayegani et al. 2024): per module, A and B are linear combinations of k
// frozen random bases, A' = Σ_j α_j·A_j and B' = Σ_j β_j·B_j; only α (k) and β (k) train.
// The bases come from the seed and the module path, so they are regenerated, never stored.
// β starts at 0 (ΔW = 0 at the start), α at N(0, 1/k).
type nola struct {
	a       *lora.Adapter
	k       int
	bA, bB  [][]float32 // per pair: k bases (k, r, in) and (k, out, r)
	al, be  [][]float32 // per pair: α (k), β (k)
	dal, db [][]float32
	params  []optim.Param
}

// NewNOLA makes a NOLA method with o.NolaK bases per factor.
func NewNOLA(a *lora.Adapter, o Options) (Method, error) {
	if o.NolaK < 1 {
		return nil, fmt.Errorf("lora.nola_k must be at least 1, got %d", o.NolaK)
	}
	n := &nola{a: a, k: o.NolaK}
	for _, p := range a.Pairs {
		r, in, out := a.RankOf(p), p.Module.In, p.Module.Out
		rng := rand.New(rand.NewPCG(o.Seed, seedOf(p.Module.Path)))
		bA, bB := make([]float32, n.k*r*in), make([]float32, n.k*out*r)
		sa, sb := 1/math.Sqrt(float64(in)), 1/math.Sqrt(float64(r))
		for i := range bA {
			bA[i] = float32(rng.NormFloat64() * sa)
		}
		for i := range bB {
			bB[i] = float32(rng.NormFloat64() * sb)
		}
		al, be := make([]float32, n.k), make([]float32, n.k)
		for j := range al {
			al[j] = float32(rng.NormFloat64() / math.Sqrt(float64(n.k)))
		}
		pa, pb := paramOf(p.Module.Path+".nola_alpha", al), paramOf(p.Module.Path+".nola_beta", be)
		n.bA, n.bB, n.al, n.be = append(n.bA, bA), append(n.bB, bB), append(n.al, al), append(n.be, be)
		n.dal, n.db = append(n.dal, pa.Grad), append(n.db, pb.Grad)
		n.params = append(n.params, pa, pb)
	}
	n.Compose()
	return n, nil
}

// seedOf hashes a module path (FNV-1a) into an RNG stream.
func seedOf(s string) uint64 {
	h := uint64(14695981039346656037)
	for i := 0; i < len(s); i++ {
		h = (h ^ uint64(s[i])) * 1099511628211
	}
	return h
}

func (n *nola) Name() string           { return "nola" }
func (n *nola) Adapter() *lora.Adapter { return n.a }
func (n *nola) Params() []optim.Param  { return n.params }
func (n *nola) AfterStep(int, float64) {}
func (n *nola) Final() *lora.Adapter   { return n.a }

// combine writes dst = Σ_j c_j·bases[j] (bases (k, len(dst))).
func combine(dst, bases, c []float32) {
	clear(dst)
	m := len(dst)
	for j, cj := range c {
		if cj == 0 {
			continue
		}
		for i, v := range bases[j*m : (j+1)*m] {
			dst[i] += cj * v
		}
	}
}

// project adds ⟨g, bases[j]⟩ to d[j].
func project(d, bases, g []float32) {
	m := len(g)
	for j := range d {
		var s float64
		for i, v := range bases[j*m : (j+1)*m] {
			s += float64(v) * float64(g[i])
		}
		d[j] += float32(s)
	}
}

func (n *nola) Compose() {
	for i, p := range n.a.Pairs {
		combine(p.A, n.bA[i], n.al[i])
		combine(p.B, n.bB[i], n.be[i])
	}
}

func (n *nola) Backward(dA, dB [][]float32) error {
	if err := checkGrads(n.a, dA, dB); err != nil {
		return err
	}
	for i := range n.a.Pairs {
		project(n.dal[i], n.bA[i], dA[i])
		project(n.db[i], n.bB[i], dB[i])
	}
	return nil
}

func (n *nola) State() map[string][]float32 { return stateOf(n.params, nil) }

func (n *nola) SetState(st map[string][]float32) error {
	if err := setState(st, n.State()); err != nil {
		return err
	}
	n.Compose()
	return nil
}

func (n *nola) Describe() string {
	var basis int64
	for i := range n.bA {
		basis += int64(len(n.bA[i]) + len(n.bB[i]))
	}
	return fmt.Sprintf("nola: A and B of each module are combinations of %d frozen random bases each (regenerated from train.seed, %.1f MiB on the host); trains the 2×%d coefficients per module", n.k, float64(4*basis)/(1<<20), n.k)
}
