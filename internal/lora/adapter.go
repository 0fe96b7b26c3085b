package lora

import (
	"fmt"
	"math"
	"math/rand/v2"
	"sort"

	"github.com/loractl/loractl/internal/model"
)

// Config is what defines an adapter's shape and scale.
type Config struct {
	R       int
	Alpha   float64
	Dropout float64
	RSLoRA  bool
	Layers  []int  // layers_to_transform; empty: all
	Base    string // base_model_name_or_path
	// Fingerprint is the base model's Fingerprint, stored in the safetensors header metadata
	// under FingerprintKey; empty when unknown (PEFT adapters).
	Fingerprint string
}

// Scale returns s in y = W0·x + s·B·A·x: alpha/r, or alpha/√r with rsLoRA.
func (c Config) Scale() float32 {
	if c.RSLoRA {
		return float32(c.Alpha / math.Sqrt(float64(c.R)))
	}
	return float32(c.Alpha / float64(c.R))
}

// Pair is the low-rank update of one module.
type Pair struct {
	Module Module
	A      []float32 // (r, in)
	B      []float32 // (out, r)
}

// Adapter is a set of low-rank updates, one per adapted module, in module order.
type Adapter struct {
	Config Config
	Pairs  []*Pair
}

// Init names an initialisation of A (B always starts at zero, so the adapted model starts
// equal to the base).
type Init string

// Initialisations.
const (
	InitDefault  Init = "default"  // PEFT's default: Kaiming-uniform(a=√5) on A, bound 1/√in
	InitGaussian Init = "gaussian" // PEFT's "gaussian": normal with std 1/r on A
)

// New makes an adapter over mods with A initialised from the seeded rng and B = 0.
func New(cfg Config, mods []Module, init Init, rng *rand.Rand) (*Adapter, error) {
	if cfg.R < 1 {
		return nil, fmt.Errorf("lora: r must be at least 1, got %d", cfg.R)
	}
	a := &Adapter{Config: cfg}
	for _, m := range mods {
		if cfg.R > min(m.In, m.Out) {
			return nil, fmt.Errorf("lora.r %d is larger than min(in, out) = %d of %s (%d×%d); choose r ≤ %d",
				cfg.R, min(m.In, m.Out), m.Path, m.Out, m.In, min(m.In, m.Out))
		}
		p := &Pair{Module: m, A: make([]float32, cfg.R*m.In), B: make([]float32, m.Out*cfg.R)}
		switch init {
		case InitDefault, "":
			// kaiming_uniform_(a=√5): gain √(2/(1+5)), bound = gain·√(3/fan_in) = 1/√fan_in.
			bound := 1 / math.Sqrt(float64(m.In))
			for i := range p.A {
				p.A[i] = float32((2*rng.Float64() - 1) * bound)
			}
		case InitGaussian:
			std := 1 / float64(cfg.R)
			for i := range p.A {
				p.A[i] = float32(rng.NormFloat64() * std)
			}
		default:
			return nil, fmt.Errorf("lora: unknown init %q (want default or gaussian)", init)
		}
		a.Pairs = append(a.Pairs, p)
	}
	return a, nil
}

// Delta returns s·B·A for one pair, laid out like the module's weight (out, in).
func (a *Adapter) Delta(p *Pair) []float32 {
	r, in, out := a.Config.R, p.Module.In, p.Module.Out
	s := a.Config.Scale()
	d := make([]float32, out*in) // (out, in)
	for o := 0; o < out; o++ {
		row := d[o*in : (o+1)*in]
		for k := 0; k < r; k++ {
			b := s * p.B[o*r+k]
			if b == 0 {
				continue
			}
			ak := p.A[k*in : (k+1)*in]
			for i, av := range ak {
				row[i] += b * av
			}
		}
	}
	return d
}

// CheckBase verifies that the adapter fits a base model: every module exists with the same
// in/out features. The error names the adapter folder's first mismatch and the fix.
func (a *Adapter) CheckBase(c *model.Config, where string) error {
	byPath := map[string]Module{}
	for _, m := range Modules(c) {
		byPath[m.Path] = m
	}
	for _, p := range a.Pairs {
		m, ok := byPath[p.Module.Path]
		if !ok {
			return fmt.Errorf("%s: the adapter adapts %s, which this base model (%s, %d layers) does not have; the adapter was trained for another base model",
				where, p.Module.Path, c.ModelType, c.NumHiddenLayers)
		}
		if m.In != p.Module.In || m.Out != p.Module.Out {
			return fmt.Errorf("%s: %s is %d×%d in the adapter but %d×%d in the base model; the adapter was trained for another base model",
				where, p.Module.Path, p.Module.Out, p.Module.In, m.Out, m.In)
		}
	}
	return nil
}

// MergeInto adds s·B·A to each adapted weight of m, for inference with the adapter.
func (a *Adapter) MergeInto(m *model.Model) error {
	for _, p := range a.Pairs {
		if err := m.AddToWeight(p.Module.Weight(), a.Delta(p)); err != nil {
			return err
		}
	}
	return nil
}

// sortPairs orders pairs by layer, then by block order of the module names.
func (a *Adapter) sortPairs() {
	rank := map[string]int{}
	for i, n := range LinearNames {
		rank[n] = i
	}
	sort.SliceStable(a.Pairs, func(i, j int) bool {
		mi, mj := a.Pairs[i].Module, a.Pairs[j].Module
		if mi.Layer != mj.Layer {
			return mi.Layer < mj.Layer
		}
		return rank[mi.Name] < rank[mj.Name]
	})
}
