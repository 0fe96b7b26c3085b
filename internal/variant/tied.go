package variant

import (
	"fmt"
	"math"
	"math/rand/v2"
	"slices"

	"github.com/loractl/loractl/internal/lora"
	"github.com/loractl/loractl/internal/optim"
)

// tied is Tied-LoRA and VeRA: A (r, maxIn) and B (maxOut, r) shared across layers, each module
// using the leading in columns of A and out rows of B, scaled per module by d (r) and b (out):
// ΔW = s·diag(b)·B[:out]·diag(d)·A[:, :in].
//
// VeRA (Kopiczko et al. 2024) shares one frozen random pair across every module, starts from
// b = 0 and d = d_initial, and has s = 1; Tied-LoRA (Renduchintala et al. 2024) shares one
// trainable pair per module kind (every q_proj, every v_proj, ...), starts from B = 0 and
// b = d = 1, and keeps LoRA's s = alpha/r.
type tied struct {
	name      string
	a         *lora.Adapter
	trainable bool      // the shared A and B train (Tied) or stay frozen (VeRA)
	groups    []*shared // shared factors
	group     []int     // pair → group
	b, d      [][]float32
	params    []optim.Param
	// The parameters' gradients, aliased by params: db[i] (out), dd[i] (r), groups' dA, dB.
	db, dd   [][]float32
	dInitial float64 // VeRA's d_initial
	prngKey  uint64  // VeRA's projection_prng_key (train.seed)
	saveProj bool    // VeRA: store the projections when saving
}

// shared is one shared pair of factors.
type shared struct {
	key           string
	A, B          []float32 // (r, maxIn), (maxOut, r)
	dA, dB        []float32 // gradients (trainable only)
	maxIn, maxOut int
}

// NewVeRA makes a VeRA method over a's modules (a gives the modules, r and the dropout; its
// A and B are replaced by the effective factors). The shared projections come from seed.
func NewVeRA(a *lora.Adapter, o Options) (Method, error) {
	if o.DInitial == 0 {
		o.DInitial = 0.1
	}
	return newTied("vera", a, o, false)
}

// NewTied makes a Tied-LoRA method over a's modules.
func NewTied(a *lora.Adapter, o Options) (Method, error) {
	return newTied("tied", a, o, true)
}

func newTied(name string, a *lora.Adapter, o Options, trainable bool) (*tied, error) {
	t := &tied{name: name, a: a, trainable: trainable, dInitial: o.DInitial, prngKey: o.Seed, saveProj: o.SaveProjection}
	byKey := map[string]int{}
	for _, p := range a.Pairs {
		key := "" // VeRA: one pair for every module (PEFT's vera_A, vera_B)
		if trainable {
			key = p.Module.Name // Tied: one pair per module kind
		}
		gi, ok := byKey[key]
		if !ok {
			gi = len(t.groups)
			byKey[key] = gi
			t.groups = append(t.groups, &shared{key: key})
		}
		g := t.groups[gi]
		g.maxIn, g.maxOut = max(g.maxIn, p.Module.In), max(g.maxOut, p.Module.Out)
		t.group = append(t.group, gi)
	}
	r := a.Config.R
	if !trainable {
		a.Config.Alpha = float64(r) // VeRA has no scaling: s = alpha/r = 1
	}
	rng := rand.New(rand.NewPCG(o.Seed, 0x7e7a))
	for _, g := range t.groups {
		g.A, g.B = make([]float32, r*g.maxIn), make([]float32, g.maxOut*r)
		if trainable {
			// LoRA's start: A as PEFT's default init, B = 0.
			bound := 1 / math.Sqrt(float64(g.maxIn))
			for i := range g.A {
				g.A[i] = float32((2*rng.Float64() - 1) * bound)
			}
			g.dA, g.dB = make([]float32, len(g.A)), make([]float32, len(g.B))
			t.params = append(t.params,
				optim.Param{Name: "tied." + g.key + ".lora_A", Data: g.A, Grad: g.dA},
				optim.Param{Name: "tied." + g.key + ".lora_B", Data: g.B, Grad: g.dB})
		} else {
			// PEFT's draw for projection_prng_key = train.seed, bit for bit.
			g.A, g.B = lora.VeRAProjections(o.Seed, r, g.maxIn, g.maxOut)
		}
	}
	for _, p := range a.Pairs {
		if a.RankOf(p) != r {
			return nil, fmt.Errorf("lora.method %s shares one rank across modules, but %s has rank %d", name, p.Module.Path, a.RankOf(p))
		}
		b, d := make([]float32, p.Module.Out), make([]float32, r)
		fill(d, 1)
		if trainable {
			fill(b, 1)
		} else {
			fill(d, float32(o.DInitial))
		}
		t.b, t.d = append(t.b, b), append(t.d, d)
		pb, pd := paramOf(p.Module.Path+"."+name+"_lambda_b", b), paramOf(p.Module.Path+"."+name+"_lambda_d", d)
		t.db, t.dd = append(t.db, pb.Grad), append(t.dd, pd.Grad)
		t.params = append(t.params, pb, pd)
	}
	t.Compose()
	return t, nil
}

func fill(v []float32, x float32) {
	for i := range v {
		v[i] = x
	}
}

func (t *tied) Name() string                { return t.name }
func (t *tied) Adapter() *lora.Adapter      { return t.a }
func (t *tied) Params() []optim.Param       { return t.params }
func (t *tied) AfterStep(int, float64)      {}
func (t *tied) Final() *lora.Adapter        { return t.a }
func (t *tied) Shared() []*shared           { return t.groups }
func (t *tied) Lambdas() (b, d [][]float32) { return t.b, t.d }

// Compose writes A' = diag(d)·A[:, :in] and B' = diag(b)·B[:out] of every pair.
func (t *tied) Compose() {
	r := t.a.Config.R
	for i, p := range t.a.Pairs {
		g := t.groups[t.group[i]]
		in, out := p.Module.In, p.Module.Out
		for k := 0; k < r; k++ {
			dk := t.d[i][k]
			src, dst := g.A[k*g.maxIn:k*g.maxIn+in], p.A[k*in:(k+1)*in]
			for c, v := range src {
				dst[c] = dk * v
			}
		}
		for o := 0; o < out; o++ {
			bo := t.b[i][o]
			src, dst := g.B[o*r:(o+1)*r], p.B[o*r:(o+1)*r]
			for k, v := range src {
				dst[k] = bo * v
			}
		}
	}
}

// Backward: dd_k += Σ_c dA'_kc·A_kc, db_o += Σ_k dB'_ok·B_ok; trainable shared factors get
// dA_kc += d_k·dA'_kc and dB_ok += b_o·dB'_ok, summed over the modules that share them.
func (t *tied) Backward(dA, dB [][]float32) error {
	if err := checkGrads(t.a, dA, dB); err != nil {
		return err
	}
	r := t.a.Config.R
	for i, p := range t.a.Pairs {
		g := t.groups[t.group[i]]
		in, out := p.Module.In, p.Module.Out
		for k := 0; k < r; k++ {
			a, da := g.A[k*g.maxIn:k*g.maxIn+in], dA[i][k*in:(k+1)*in]
			var s float64
			for c, v := range da {
				s += float64(v) * float64(a[c])
			}
			t.dd[i][k] += float32(s)
			if t.trainable {
				dk, gdA := t.d[i][k], g.dA[k*g.maxIn:k*g.maxIn+in]
				for c, v := range da {
					gdA[c] += dk * v
				}
			}
		}
		for o := 0; o < out; o++ {
			b, db := g.B[o*r:(o+1)*r], dB[i][o*r:(o+1)*r]
			var s float64
			for k, v := range db {
				s += float64(v) * float64(b[k])
			}
			t.db[i][o] += float32(s)
			if t.trainable {
				bo, gdB := t.b[i][o], g.dB[o*r:(o+1)*r]
				for k, v := range db {
					gdB[k] += bo * v
				}
			}
		}
	}
	return nil
}

// State holds the parameters and, for VeRA, the frozen projections.
func (t *tied) State() map[string][]float32 {
	extra := map[string][]float32{}
	if !t.trainable {
		for _, g := range t.groups {
			extra["vera_A"], extra["vera_B"] = g.A, g.B
		}
	}
	return stateOf(t.params, extra)
}

func (t *tied) SetState(st map[string][]float32) error {
	bufs := map[string][]float32{}
	for k, v := range t.State() {
		bufs[k] = v
	}
	if err := setState(st, bufs); err != nil {
		return err
	}
	t.Compose()
	return nil
}

func (t *tied) Describe() string {
	r := t.a.Config.R
	if !t.trainable {
		g := t.groups[0]
		return fmt.Sprintf("vera: frozen random A (%d×%d) and B (%d×%d) shared by all %d modules (seed %s); trains b (out) and d (r=%d) per module; s = 1",
			r, g.maxIn, g.maxOut, r, len(t.a.Pairs), "train.seed", r)
	}
	var kinds []string
	for _, g := range t.groups {
		kinds = append(kinds, g.key)
	}
	slices.Sort(kinds)
	return fmt.Sprintf("tied: one trainable A and B per module kind (%v), shared across layers; trains them and b (out), d (r=%d) per module; s = alpha/r", kinds, r)
}

// SavePEFT writes a VeRA method in PEFT's own VeRA format (Tied-LoRA has none: it is saved as
// the composed LoRA factors).
func (t *tied) SavePEFT(dir string) error {
	if t.trainable {
		return t.a.Save(dir)
	}
	g := t.groups[0]
	v := &lora.VeRA{Config: t.a.Config, A: g.A, B: g.B, MaxIn: g.maxIn, MaxOut: g.maxOut, DInitial: t.dInitial, PRNGKey: t.prngKey, SaveProjection: t.saveProj}
	for i, p := range t.a.Pairs {
		v.Pairs = append(v.Pairs, lora.VeRAPair{Module: p.Module, LambdaB: t.b[i], LambdaD: t.d[i]})
	}
	return lora.SaveVeRA(dir, v)
}
