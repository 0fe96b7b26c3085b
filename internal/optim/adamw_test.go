package optim

import (
	"math"
	"math/rand/v2"
	"strings"
	"testing"
)

// refAdamW is a float64 implementation of torch.optim.AdamW written straight from the
// formulas (decoupled decay, bias correction, eps outside the sqrt), to check the float32 one.
type refAdamW struct {
	cfg     AdamWConfig
	scales  []float64
	noDecay []bool
	p, m, v [][]float64
	step    int
}

func (r *refAdamW) step64(lr float64, grads [][]float64) {
	r.step++
	t := float64(r.step)
	for k := range r.p {
		glr := lr * r.scales[k]
		wd := r.cfg.WeightDecay
		if r.noDecay[k] {
			wd = 0
		}
		for i := range r.p[k] {
			g := grads[k][i]
			r.p[k][i] *= 1 - glr*wd
			r.m[k][i] = r.cfg.Beta1*r.m[k][i] + (1-r.cfg.Beta1)*g
			r.v[k][i] = r.cfg.Beta2*r.v[k][i] + (1-r.cfg.Beta2)*g*g
			mhat := r.m[k][i] / (1 - math.Pow(r.cfg.Beta1, t))
			vhat := r.v[k][i] / (1 - math.Pow(r.cfg.Beta2, t))
			r.p[k][i] -= glr * mhat / (math.Sqrt(vhat) + r.cfg.Eps)
		}
	}
}

// fixture builds three parameters in two groups (scale 1 with decay, scale 4 without) with
// random values, and the float64 reference with the same start.
func fixture(t *testing.T, cfg AdamWConfig, seed uint64) (*AdamW, []Group, *refAdamW) {
	t.Helper()
	rng := rand.New(rand.NewPCG(seed, 1))
	sizes := []int{7, 33, 5}
	var params []Param
	ref := &refAdamW{cfg: cfg}
	for i, n := range sizes {
		p := Param{Name: []string{"a", "b", "c"}[i], Data: make([]float32, n), Grad: make([]float32, n)}
		ref64 := make([]float64, n)
		for j := range p.Data {
			p.Data[j] = float32(rng.NormFloat64())
			ref64[j] = float64(p.Data[j])
		}
		params = append(params, p)
		ref.p = append(ref.p, ref64)
		ref.m = append(ref.m, make([]float64, n))
		ref.v = append(ref.v, make([]float64, n))
	}
	groups := []Group{
		{Params: params[:2], LRScale: 1},
		{Params: params[2:], LRScale: 4, NoDecay: true},
	}
	ref.scales = []float64{1, 1, 4}
	ref.noDecay = []bool{false, false, true}
	o, err := NewAdamW(cfg, groups)
	if err != nil {
		t.Fatal(err)
	}
	return o, groups, ref
}

// fillGrads puts fresh random gradients (of varied scale) into groups and returns them in
// float64 for the reference.
func fillGrads(rng *rand.Rand, groups []Group) [][]float64 {
	var out [][]float64
	for _, g := range Grads(groups) {
		g64 := make([]float64, len(g))
		for i := range g {
			g[i] = float32(rng.NormFloat64() * math.Exp(2*rng.NormFloat64()))
			g64[i] = float64(g[i])
		}
		out = append(out, g64)
	}
	return out
}

func params(groups []Group) [][]float32 {
	var out [][]float32
	for _, g := range groups {
		for _, p := range g.Params {
			out = append(out, p.Data)
		}
	}
	return out
}

func TestAdamWMatchesFloat64Reference(t *testing.T) {
	for _, tc := range []struct {
		name string
		cfg  AdamWConfig
	}{
		{"defaults", DefaultAdamW()},
		{"weight decay", AdamWConfig{Beta1: 0.9, Beta2: 0.999, Eps: 1e-8, WeightDecay: 0.1}},
		{"beta1 0.3 (lerp weight ≥ 0.5)", AdamWConfig{Beta1: 0.3, Beta2: 0.95, Eps: 1e-6, WeightDecay: 0.01}},
	} {
		t.Run(tc.name, func(t *testing.T) {
			o, groups, ref := fixture(t, tc.cfg, 7)
			rng := rand.New(rand.NewPCG(99, 2))
			worst := 0.0
			for step := 0; step < 20; step++ {
				lr := 1e-2 * (1 + 0.1*float64(step%3))
				g64 := fillGrads(rng, groups)
				o.Step(lr)
				ref.step64(lr, g64)
				for k, p := range params(groups) {
					for i := range p {
						d := math.Abs(float64(p[i])-ref.p[k][i]) / (1 + math.Abs(ref.p[k][i]))
						worst = max(worst, d)
					}
				}
			}
			if worst > 2e-6 {
				t.Errorf("max relative difference from the float64 reference after 20 steps: %.3g, want ≤ 2e-6", worst)
			}
			// The moments match too.
			st := o.State()
			for k := range ref.m {
				for i := range ref.m[k] {
					m, v := float64(st.Tensors[2*k].Data[i]), float64(st.Tensors[2*k+1].Data[i])
					if math.Abs(m-ref.m[k][i]) > 1e-5*(1+math.Abs(ref.m[k][i])) ||
						math.Abs(v-ref.v[k][i]) > 1e-5*(1+math.Abs(ref.v[k][i])) {
						t.Fatalf("param %d[%d]: m,v = %g,%g, reference %g,%g", k, i, m, v, ref.m[k][i], ref.v[k][i])
					}
				}
			}
			t.Logf("max relative difference from float64 after 20 steps: %.3g", worst)
		})
	}
}

// The first step has a closed form: m̂ = g and v̂ = g², so p₁ = p₀(1−lr·wd) − lr·g/(|g|+eps).
func TestAdamWFirstStepClosedForm(t *testing.T) {
	cfg := AdamWConfig{Beta1: 0.9, Beta2: 0.999, Eps: 1e-8, WeightDecay: 0.5}
	p := []float32{1, -2, 0.5, 3, 0}
	g := []float32{0.25, -4, 1e-3, 0, 7}
	p0 := append([]float32(nil), p...)
	o, err := NewAdamW(cfg, []Group{{Params: []Param{{Name: "w", Data: p, Grad: g}}, LRScale: 2}})
	if err != nil {
		t.Fatal(err)
	}
	lr := 0.05 // group lr 0.1
	o.Step(lr)
	for i := range p {
		glr := lr * 2
		want := float64(p0[i])*(1-glr*cfg.WeightDecay) - glr*float64(g[i])/(math.Abs(float64(g[i]))+cfg.Eps)
		if math.Abs(float64(p[i])-want) > 1e-6 {
			t.Errorf("p[%d] = %.9g, want %.9g", i, p[i], want)
		}
	}
	if o.Steps() != 1 {
		t.Errorf("Steps() = %d, want 1", o.Steps())
	}
}

func runSteps(o *AdamW, groups []Group, rng *rand.Rand, from, n int) {
	for s := from; s < from+n; s++ {
		fillGrads(rng, groups)
		o.Step(1e-3 * float64(1+s%5))
	}
}

func bitsEqual(a, b [][]float32) bool {
	for k := range a {
		for i := range a[k] {
			if math.Float32bits(a[k][i]) != math.Float32bits(b[k][i]) {
				return false
			}
		}
	}
	return true
}

func TestAdamWDeterministic(t *testing.T) {
	cfg := AdamWConfig{Beta1: 0.9, Beta2: 0.999, Eps: 1e-8, WeightDecay: 0.01}
	o1, g1, _ := fixture(t, cfg, 3)
	o2, g2, _ := fixture(t, cfg, 3)
	runSteps(o1, g1, rand.New(rand.NewPCG(5, 5)), 0, 15)
	runSteps(o2, g2, rand.New(rand.NewPCG(5, 5)), 0, 15)
	if !bitsEqual(params(g1), params(g2)) {
		t.Fatal("two identical runs gave different parameters")
	}
}

// Saving the state after N steps and restoring it into a fresh optimizer continues exactly:
// 2N straight steps and N + restore + N give the same bits.
func TestAdamWStateRoundTripContinuesBitwise(t *testing.T) {
	cfg := AdamWConfig{Beta1: 0.9, Beta2: 0.999, Eps: 1e-8, WeightDecay: 0.01}
	const n = 6
	straight, gs, _ := fixture(t, cfg, 11)
	rng := rand.New(rand.NewPCG(8, 8))
	runSteps(straight, gs, rng, 0, 2*n)

	first, gf, _ := fixture(t, cfg, 11)
	rng = rand.New(rand.NewPCG(8, 8))
	runSteps(first, gf, rng, 0, n)
	saved := first.State()
	// What a checkpoint holds besides the moments: the parameter values.
	resumedGroups := cloneGroups(gf)
	// The saved state is a copy: a further step on first must not change it.
	before := saved.Tensors[0].Data[0]
	first.Step(1)
	if saved.Tensors[0].Data[0] != before {
		t.Fatal("State() shares memory with the optimizer")
	}

	// A fresh optimizer, with the tensors handed over in reverse order.
	resumed, err := NewAdamW(cfg, resumedGroups)
	if err != nil {
		t.Fatal(err)
	}
	rev := State{Step: saved.Step}
	for i := len(saved.Tensors) - 1; i >= 0; i-- {
		rev.Tensors = append(rev.Tensors, saved.Tensors[i])
	}
	if err := resumed.SetState(rev); err != nil {
		t.Fatal(err)
	}
	if resumed.Steps() != n {
		t.Fatalf("Steps() after SetState = %d, want %d", resumed.Steps(), n)
	}
	runSteps(resumed, resumedGroups, rng, n, n)
	if !bitsEqual(params(gs), params(resumedGroups)) {
		t.Fatal("N steps + restore + N steps differ from 2N straight steps")
	}
	a, b := straight.State(), resumed.State()
	if a.Step != b.Step {
		t.Fatalf("steps %d and %d differ after resume", a.Step, b.Step)
	}
	for i := range a.Tensors {
		if a.Tensors[i].Name != b.Tensors[i].Name || !bitsEqual([][]float32{a.Tensors[i].Data}, [][]float32{b.Tensors[i].Data}) {
			t.Fatalf("moment %s differs after resume", a.Tensors[i].Name)
		}
	}
}

// cloneGroups copies the parameter values of groups into new slices, with new gradients.
func cloneGroups(groups []Group) []Group {
	out := make([]Group, len(groups))
	for i, g := range groups {
		out[i] = Group{LRScale: g.LRScale, NoDecay: g.NoDecay}
		for _, p := range g.Params {
			out[i].Params = append(out[i].Params, Param{Name: p.Name, Data: append([]float32(nil), p.Data...), Grad: make([]float32, len(p.Grad))})
		}
	}
	return out
}

func TestAdamWSetStateRejectsMismatch(t *testing.T) {
	o, _, _ := fixture(t, DefaultAdamW(), 1)
	good := o.State()
	good.Step = 3
	for _, tc := range []struct {
		name string
		edit func(s *State)
		want string
	}{
		{"missing", func(s *State) { s.Tensors = s.Tensors[1:] }, `missing "a.exp_avg"`},
		{"wrong length", func(s *State) { s.Tensors[2].Data = s.Tensors[2].Data[:3] }, `"b.exp_avg" has 3 values`},
		{"extra", func(s *State) { s.Tensors = append(s.Tensors, Tensor{"z.exp_avg", nil}) }, `unexpected tensor "z.exp_avg"`},
		{"duplicate", func(s *State) { s.Tensors = append(s.Tensors, s.Tensors[0]) }, "appears twice"},
		{"negative step", func(s *State) { s.Step = -1 }, "negative"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			s := State{Step: good.Step, Tensors: append([]Tensor(nil), good.Tensors...)}
			tc.edit(&s)
			err := o.SetState(s)
			if err == nil || !strings.Contains(err.Error(), tc.want) {
				t.Fatalf("SetState error = %v, want one containing %q", err, tc.want)
			}
			if o.Steps() != 0 {
				t.Fatalf("a rejected SetState changed the step to %d", o.Steps())
			}
		})
	}
}

func TestNewAdamWRejectsBadInput(t *testing.T) {
	ok := func() []Group {
		return []Group{{Params: []Param{{Name: "w", Data: make([]float32, 3), Grad: make([]float32, 3)}}, LRScale: 1}}
	}
	for _, tc := range []struct {
		name   string
		cfg    AdamWConfig
		groups []Group
		want   string
	}{
		{"beta1 = 1", AdamWConfig{Beta1: 1, Beta2: 0.999, Eps: 1e-8}, ok(), "beta1"},
		{"beta2 NaN", AdamWConfig{Beta1: 0.9, Beta2: math.NaN(), Eps: 1e-8}, ok(), "beta2"},
		{"eps 0", AdamWConfig{Beta1: 0.9, Beta2: 0.999}, ok(), "eps"},
		{"negative decay", AdamWConfig{Beta1: 0.9, Beta2: 0.999, Eps: 1e-8, WeightDecay: -1}, ok(), "weight_decay"},
		{"lr scale 0", DefaultAdamW(), []Group{{Params: ok()[0].Params}}, "lr scale 0"},
		{"no name", DefaultAdamW(), []Group{{Params: []Param{{Data: []float32{1}, Grad: []float32{1}}}, LRScale: 1}}, "without a name"},
		{"duplicate", DefaultAdamW(), append(ok(), ok()...), `"w" appears twice`},
		{"grad length", DefaultAdamW(), []Group{{Params: []Param{{Name: "w", Data: make([]float32, 3), Grad: make([]float32, 2)}}, LRScale: 1}}, "gradient of 2"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			_, err := NewAdamW(tc.cfg, tc.groups)
			if err == nil || !strings.Contains(err.Error(), tc.want) {
				t.Fatalf("NewAdamW error = %v, want one containing %q", err, tc.want)
			}
		})
	}
}

// With zero gradients only the decoupled decay moves the parameters: p·(1−lr·wd) exactly.
func TestAdamWZeroGradOnlyDecays(t *testing.T) {
	p := []float32{1, -3, 0.25}
	g := make([]float32, 3)
	o, err := NewAdamW(AdamWConfig{Beta1: 0.9, Beta2: 0.999, Eps: 1e-8, WeightDecay: 0.1},
		[]Group{{Params: []Param{{Name: "w", Data: p, Grad: g}}, LRScale: 1}})
	if err != nil {
		t.Fatal(err)
	}
	o.Step(0.5)
	for i, want := range []float32{1 * 0.95, -3 * 0.95, 0.25 * 0.95} {
		if p[i] != want {
			t.Errorf("p[%d] = %g, want %g", i, p[i], want)
		}
	}
}
