package variant

import (
	"math"
	"math/rand/v2"
	"slices"
	"testing"

	"github.com/loractl/loractl/internal/lora"
)

// testAdapter is an adapter over two synthetic layers of q_proj (8→8) and down_proj (12→8).
func testAdapter(t *testing.T, r int) *lora.Adapter {
	t.Helper()
	var mods []lora.Module
	for l := 0; l < 2; l++ {
		mods = append(mods,
			lora.Module{Path: "model.layers." + string(rune('0'+l)) + ".self_attn.q_proj", Layer: l, Name: "q_proj", In: 8, Out: 8},
			lora.Module{Path: "model.layers." + string(rune('0'+l)) + ".mlp.down_proj", Layer: l, Name: "down_proj", In: 12, Out: 8})
	}
	a, err := lora.New(lora.Config{R: r, Alpha: 2 * float64(r)}, mods, lora.InitDefault, rand.New(rand.NewPCG(1, 2)))
	if err != nil {
		t.Fatal(err)
	}
	return a
}

// dense returns Σ over pairs of their deltas, for comparing adapters.
func deltas(a *lora.Adapter) map[string][]float32 {
	out := map[string][]float32{}
	for _, p := range a.Pairs {
		out[p.Module.Path] = a.Delta(p)
	}
	return out
}

// TestAdaLoRAOrthogonalityGradient: the regulariser's gradient against float64 central
// differences of the regulariser itself (computed by Backward as OrthLoss).
func TestAdaLoRAOrthogonalityGradient(t *testing.T) {
	a := testAdapter(t, 3)
	m, err := NewAdaLoRA(a, Options{Seed: 1, InitR: 3, TargetR: 1, TInit: 1, TFinal: 1, DeltaT: 1, TotalSteps: 10, OrthWeight: 0.5})
	if err != nil {
		t.Fatal(err)
	}
	d := m.(*adalora)
	rng := rand.New(rand.NewPCG(3, 3))
	for _, p := range d.params {
		for i := range p.Data {
			p.Data[i] += float32(0.3 * rng.NormFloat64())
		}
	}
	zeroA, zeroB := make([][]float32, len(a.Pairs)), make([][]float32, len(a.Pairs))
	for i, p := range a.Pairs {
		zeroA[i], zeroB[i] = make([]float32, len(p.A)), make([]float32, len(p.B))
	}
	reg := func() float64 {
		for _, p := range d.params {
			clear(p.Grad)
		}
		if err := d.Backward(zeroA, zeroB); err != nil {
			t.Fatal(err)
		}
		return d.OrthLoss
	}
	reg()
	grads := [][]float32{}
	for _, p := range d.params {
		grads = append(grads, slices.Clone(p.Grad))
	}
	const eps = 1e-3
	checked := 0
	for pi, p := range d.params {
		if pi%3 == 1 {
			continue // λ: the regulariser does not involve it
		}
		for i := range p.Data {
			orig := p.Data[i]
			p.Data[i] = orig + eps
			lp := reg()
			p.Data[i] = orig - eps
			lm := reg()
			p.Data[i] = orig
			fd := (lp - lm) / (2 * eps)
			an := float64(grads[pi][i])
			if math.Abs(an-fd) > 1e-3*max(math.Abs(an), math.Abs(fd))+1e-5 {
				t.Fatalf("%s[%d]: analytic %.7g, finite difference %.7g", p.Name, i, an, fd)
			}
			checked++
		}
	}
	t.Logf("orthogonality gradient: %d entries within 1e-3", checked)
}

// TestAdaLoRABudget: the cubic budget falls from init to target between tinit and T − tfinal,
// the masking keeps exactly the budget, and the final adapter has those ranks and the same
// update as the effective factors.
func TestAdaLoRABudget(t *testing.T) {
	a := testAdapter(t, 4)
	o := Options{Seed: 1, InitR: 4, TargetR: 2, TInit: 2, TFinal: 3, DeltaT: 2, TotalSteps: 15}
	m, err := NewAdaLoRA(a, o)
	if err != nil {
		t.Fatal(err)
	}
	d := m.(*adalora)
	prev := 1 << 30
	for step := 1; step <= 15; step++ {
		b, _ := d.budget(step)
		if b > prev || (step <= 2 && b != 16) || (step > 12 && b != 8) {
			t.Fatalf("step %d: budget %d (previous %d)", step, b, prev)
		}
		prev = b
	}
	rng := rand.New(rand.NewPCG(9, 9))
	for step := 1; step <= 15; step++ {
		for _, p := range d.params {
			for i := range p.Data {
				p.Data[i] += float32(0.05 * rng.NormFloat64())
				p.Grad[i] = float32(rng.NormFloat64())
			}
		}
		d.AfterStep(step, 1e-3)
	}
	total := 0
	for _, r := range d.Ranks() {
		total += r
	}
	if total != 8 {
		t.Fatalf("ranks %v sum to %d, want the target budget 8", d.Ranks(), total)
	}
	f := d.Final()
	want := deltas(d.a)
	got := deltas(f)
	for path, w := range want {
		g, ok := got[path]
		if !ok {
			for _, x := range w {
				if x != 0 {
					t.Fatalf("%s was dropped but its update is not zero", path)
				}
			}
			continue
		}
		for i := range w {
			if math.Abs(float64(w[i]-g[i])) > 1e-6*(1+math.Abs(float64(w[i]))) {
				t.Fatalf("%s: final update differs at %d: %g vs %g", path, i, g[i], w[i])
			}
		}
	}
}

// TestSoRAProximal: the gate step is an Adam step then soft thresholding, zero gates are removed at save with
// the update unchanged.
func TestSoRAProximal(t *testing.T) {
	a := testAdapter(t, 4)
	m, err := NewSoRA(a, Options{SoraLambda: 10})
	if err != nil {
		t.Fatal(err)
	}
	s := m.(*sora)
	rng := rand.New(rand.NewPCG(4, 4))
	for _, b := range s.B {
		for i := range b {
			b[i] = float32(rng.NormFloat64())
		}
	}
	copy(s.g[0], []float32{1, 0.0005, -0.002, 0.5}) // in place: the gates' optimizer holds them
	copy(s.dg[0], []float32{0, 0, 0, 100})
	s.AfterStep(1, 1e-4) // threshold 1e-3; Adam's first step moves by lr·sign(dg)
	want := []float32{1 - 1e-3, 0, -0.001, 0.5 - 1e-4 - 1e-3}
	for k, w := range want {
		if math.Abs(float64(s.g[0][k]-w)) > 1e-6 {
			t.Fatalf("gate %v, want %v", s.g[0], want)
		}
	}
	s.Compose()
	if r := s.EffectiveRanks()[0]; r != 3 {
		t.Fatalf("effective rank %d, want 3", r)
	}
	f := s.Final()
	if f.RankOf(f.Pairs[0]) != 3 {
		t.Fatalf("saved rank %d", f.RankOf(f.Pairs[0]))
	}
	w, g := deltas(s.a), deltas(f)
	for path := range w {
		for i := range w[path] {
			if math.Abs(float64(w[path][i]-g[path][i])) > 1e-6 {
				t.Fatalf("%s: pruned update differs", path)
			}
		}
	}
}

// TestStateRoundTrip: State and SetState restore every method exactly.
func TestStateRoundTrip(t *testing.T) {
	o := Options{Seed: 3, NolaK: 3, SoraLambda: 0.1, InitR: 2, TargetR: 1, TInit: 1, TFinal: 1, DeltaT: 1, TotalSteps: 5}
	for name, mk := range map[string]func(*lora.Adapter, Options) (Method, error){
		"vera": NewVeRA, "tied": NewTied, "nola": NewNOLA, "sora": NewSoRA, "adalora": NewAdaLoRA,
	} {
		m1, err := mk(testAdapter(t, 2), o)
		if err != nil {
			t.Fatal(err)
		}
		rng := rand.New(rand.NewPCG(8, 1))
		for _, v := range m1.State() {
			for i := range v {
				v[i] += float32(rng.NormFloat64())
			}
		}
		m1.Compose()
		m2, _ := mk(testAdapter(t, 2), o)
		if err := m2.SetState(m1.State()); err != nil {
			t.Fatal(err)
		}
		for i, p := range m1.Adapter().Pairs {
			q := m2.Adapter().Pairs[i]
			if !slices.Equal(p.A, q.A) || !slices.Equal(p.B, q.B) {
				t.Fatalf("%s: %s differs after SetState", name, p.Module.Path)
			}
		}
		if err := m2.SetState(map[string][]float32{}); err == nil {
			t.Fatalf("%s: an empty state was accepted", name)
		}
	}
}

// TestSoRAGateStateResumes: the gates' Adam moments and step count travel in the state, so a
// restored SoRA takes the same next gate step as the one that kept running.
func TestSoRAGateStateResumes(t *testing.T) {
	o := Options{Seed: 5, SoraLambda: 0.5}
	grads := func(m Method, k int) {
		s := m.(*sora)
		rng := rand.New(rand.NewPCG(uint64(k), 9))
		for _, dg := range s.dg {
			for i := range dg {
				dg[i] = float32(rng.NormFloat64())
			}
		}
	}
	m1, err := NewSoRA(testAdapter(t, 3), o)
	if err != nil {
		t.Fatal(err)
	}
	for k := 1; k <= 3; k++ {
		grads(m1, k)
		m1.AfterStep(k, 1e-2)
	}
	m2, _ := NewSoRA(testAdapter(t, 3), o)
	if err := m2.SetState(m1.State()); err != nil {
		t.Fatal(err)
	}
	for _, m := range []Method{m1, m2} {
		grads(m, 4)
		m.AfterStep(4, 1e-2)
	}
	g1, g2 := m1.(*sora).g, m2.(*sora).g
	for i := range g1 {
		if !slices.Equal(g1[i], g2[i]) {
			t.Fatalf("pair %d: gates after the resumed step %v, uninterrupted %v", i, g2[i], g1[i])
		}
	}
}
