package lora

import (
	"fmt"
	"math"
	"math/rand/v2"
	"sort"

	"github.com/loractl/loractl/internal/linalg"
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
	// RankPattern gives some modules (by path) another rank than R: PEFT's rank_pattern. New
	// reads it; a loaded adapter has each pair's rank in Pair.R.
	RankPattern map[string]int
	// Method is the LoRA variant that trained the adapter ("" or "lora" for plain LoRA,
	// "dylora", ...), kept in the safetensors metadata under MethodKey.
	Method string
	// RMin is DyLoRA's smallest trained rank (method dylora only).
	RMin int
	// NumLayers is the base model's decoder layer count (0: unknown). Save writes short names
	// in target_modules only when the adapted modules are the same in every layer it covers;
	// otherwise (a selection by layer or regex, or modules that SoRA or AdaLoRA pruned away)
	// it names them exactly, so that PEFT adds no empty LoRA layers.
	NumLayers int
}

// Scale returns s in y = W0·x + s·B·A·x: alpha/r, or alpha/√r with rsLoRA.
func (c Config) Scale() float32 { return c.ScaleAt(c.Alpha, c.R) }

// ScaleAt returns the scale of a module of rank r with the given alpha (PEFT's per-module
// scaling under rank_pattern and alpha_pattern).
func (c Config) ScaleAt(alpha float64, r int) float32 {
	if c.RSLoRA {
		return float32(alpha / math.Sqrt(float64(r)))
	}
	return float32(alpha / float64(r))
}

// Pair is the low-rank update of one module.
type Pair struct {
	Module Module
	A      []float32 // (r, in)
	B      []float32 // (out, r)
	R      int       // this pair's rank; 0 means Config.R
	Alpha  float64   // this pair's alpha (PEFT's alpha_pattern); 0 means Config.Alpha
	// M is DoRA's magnitude (out): W' = diag(M/‖W0 + s·BA‖_row)·(W0 + s·BA); nil for LoRA.
	M []float32
}

// RankOf returns the rank of pair p.
func (a *Adapter) RankOf(p *Pair) int {
	if p.R > 0 {
		return p.R
	}
	return a.Config.R
}

// AlphaOf returns the alpha of pair p.
func (a *Adapter) AlphaOf(p *Pair) float64 {
	if p.Alpha > 0 {
		return p.Alpha
	}
	return a.Config.Alpha
}

// ScaleOf returns the scale s of pair p: alpha/r of its own rank and alpha (alpha/√r with
// rsLoRA), as PEFT computes it per module.
func (a *Adapter) ScaleOf(p *Pair) float32 { return a.Config.ScaleAt(a.AlphaOf(p), a.RankOf(p)) }

// MaxRank returns the largest rank of any pair.
func (a *Adapter) MaxRank() int {
	r := 0
	for _, p := range a.Pairs {
		r = max(r, a.RankOf(p))
	}
	return r
}

// Truncate keeps the leading k ranks of every pair (the first k rows of A and columns of B),
// with the scale of rank k: DyLoRA's nested sub-adapters, and `--rank k` of eval and merge.
// Pairs of rank ≤ k are unchanged. The adapter is modified in place.
func (a *Adapter) Truncate(k int) error {
	if k < 1 {
		return fmt.Errorf("rank %d: want at least 1", k)
	}
	if mr := a.MaxRank(); k > mr {
		return fmt.Errorf("rank %d is larger than the adapter's rank %d; choose --rank ≤ %d", k, mr, mr)
	}
	for _, p := range a.Pairs {
		r := a.RankOf(p)
		if r <= k {
			p.R = r
			continue
		}
		out := p.Module.Out
		b := make([]float32, out*k) // (out, k)
		for o := 0; o < out; o++ {
			copy(b[o*k:(o+1)*k], p.B[o*r:o*r+k])
		}
		p.A, p.B, p.R = p.A[:k*p.Module.In], b, k
	}
	if a.Config.R > k {
		a.Config.R = k
	}
	return nil
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
	// InitOrthogonal gives A orthonormal rows (a random orthogonal projection, QR of a Gaussian
	// matrix): LoRA-FA with it is the asymmetric variant of Zhu et al. (2024).
	InitOrthogonal Init = "orthogonal"
)

// New makes an adapter over mods with A initialised from the seeded rng and B = 0.
func New(cfg Config, mods []Module, init Init, rng *rand.Rand) (*Adapter, error) {
	if cfg.R < 1 {
		return nil, fmt.Errorf("lora: r must be at least 1, got %d", cfg.R)
	}
	a := &Adapter{Config: cfg}
	for _, m := range mods {
		r, key := cfg.R, "lora.r"
		if pr, ok := cfg.RankPattern[m.Path]; ok {
			r, key = pr, "lora.rank_pattern"
		}
		if r < 1 {
			return nil, fmt.Errorf("%s: rank %d of %s; want at least 1", key, r, m.Path)
		}
		if r > min(m.In, m.Out) && cfg.Method != "vera" { // VeRA's shared random projections may be wider (PEFT's default r is 256)
			return nil, fmt.Errorf("%s %d is larger than min(in, out) = %d of %s (%d×%d); choose r ≤ %d",
				key, r, min(m.In, m.Out), m.Path, m.Out, m.In, min(m.In, m.Out))
		}
		p := &Pair{Module: m, A: make([]float32, r*m.In), B: make([]float32, m.Out*r), R: r}
		switch init {
		case InitDefault, "":
			// kaiming_uniform_(a=√5): gain √(2/(1+5)), bound = gain·√(3/fan_in) = 1/√fan_in.
			bound := 1 / math.Sqrt(float64(m.In))
			for i := range p.A {
				p.A[i] = float32((2*rng.Float64() - 1) * bound)
			}
		case InitGaussian:
			std := 1 / float64(r)
			for i := range p.A {
				p.A[i] = float32(rng.NormFloat64() * std)
			}
		case InitOrthogonal:
			orthogonalRows(p.A, r, m.In, rng)
		default:
			return nil, fmt.Errorf("lora: unknown init %q (want default, gaussian or orthogonal)", init)
		}
		a.Pairs = append(a.Pairs, p)
	}
	return a, nil
}

// Delta returns s·B·A for one pair, laid out like the module's weight (out, in).
func (a *Adapter) Delta(p *Pair) []float32 {
	r, in, out := a.RankOf(p), p.Module.In, p.Module.Out
	s := a.ScaleOf(p)
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

// MergeInto adds s·B·A to each adapted weight of m, for inference with the adapter; a DoRA
// pair replaces W0 by diag(M/‖W0 + s·BA‖_row)·(W0 + s·BA).
func (a *Adapter) MergeInto(m *model.Model) error {
	for _, p := range a.Pairs {
		d := a.Delta(p)
		if p.M != nil {
			buf, _, ok := m.Tensor(p.Module.Weight())
			if !ok {
				return fmt.Errorf("model: no weight %q", p.Module.Weight())
			}
			w0 := make([]float32, buf.Len()) // (out, in)
			if err := m.Backend().Download(w0, buf); err != nil {
				return err
			}
			DoRADelta(d, w0, p.M, p.Module.Out, p.Module.In)
		}
		if err := m.AddToWeight(p.Module.Weight(), d); err != nil {
			return err
		}
	}
	return nil
}

// InitDoRA gives every pair its DoRA magnitude as PEFT initialises it: the row norms of
// W0 + s·BA (‖W0‖ when B = 0, so that the adapted model starts equal to the base).
func (a *Adapter) InitDoRA(m *model.Model) error {
	for _, p := range a.Pairs {
		buf, _, ok := m.Tensor(p.Module.Weight())
		if !ok {
			return fmt.Errorf("model: no weight %q", p.Module.Weight())
		}
		w0 := make([]float32, buf.Len()) // (out, in)
		if err := m.Backend().Download(w0, buf); err != nil {
			return err
		}
		d := a.Delta(p)
		in := p.Module.In
		p.M = make([]float32, p.Module.Out)
		for o := range p.M {
			var ss float64
			for i := 0; i < in; i++ {
				v := float64(w0[o*in+i]) + float64(d[o*in+i])
				ss += v * v
			}
			p.M[o] = float32(math.Sqrt(ss))
		}
	}
	return nil
}

// DoRADelta turns the LoRA delta d = s·BA (out, in) into DoRA's: W' − W0 with
// W' = diag(m/‖W0 + d‖_row)·(W0 + d), each row's norm in float64.
func DoRADelta(d, w0, m []float32, out, in int) {
	for o := 0; o < out; o++ {
		row, w := d[o*in:(o+1)*in], w0[o*in:(o+1)*in]
		var n2 float64
		for i, v := range row {
			x := float64(w[i]) + float64(v)
			n2 += x * x
		}
		c := float64(m[o]) / math.Sqrt(n2)
		for i, v := range row {
			row[i] = float32(c*(float64(w[i])+float64(v)) - float64(w[i]))
		}
	}
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

// orthogonalRows fills a (r, in), r ≤ in, with orthonormal rows: the Q factor of a Gaussian
// (in, r) matrix, with the signs fixed by R's diagonal so that the distribution is uniform
// (Haar) over such frames.
func orthogonalRows(a []float32, r, in int, rng *rand.Rand) {
	g := make([]float64, in*r) // (in, r)
	for i := range g {
		g[i] = rng.NormFloat64()
	}
	q, rr, _ := linalg.QR(g, in, r) // q (in, r), rr (r, r)
	for k := 0; k < r; k++ {
		sign := 1.0
		if rr[k*r+k] < 0 {
			sign = -1
		}
		for i := 0; i < in; i++ {
			a[k*in+i] = float32(sign * q[i*r+k])
		}
	}
}
