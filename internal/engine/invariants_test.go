package engine

import (
	"math"
	"math/rand/v2"
	"slices"
	"strings"
	"testing"

	"github.com/loractl/loractl/internal/backend"
	"github.com/loractl/loractl/internal/backend/cpu"
	"github.com/loractl/loractl/internal/lora"
	"github.com/loractl/loractl/internal/model"
	"github.com/loractl/loractl/internal/optim"
)

// bitsEqual reports whether two gradient sets are bitwise identical.
func bitsEqual(a, b [][]float32) bool {
	if len(a) != len(b) {
		return false
	}
	for i := range a {
		if len(a[i]) != len(b[i]) {
			return false
		}
		for j := range a[i] {
			if math.Float32bits(a[i][j]) != math.Float32bits(b[i][j]) {
				return false
			}
		}
	}
	return true
}

// TestPackedEqualsUnpacked: two samples packed in one row (segments, restarted positions)
// give the same loss sum and gradients as the two samples in separate rows.
func TestPackedEqualsUnpacked(t *testing.T) {
	for _, method := range []string{MethodLoRA, MethodFull} {
		t.Run(method, func(t *testing.T) {
			m := tinyQwen3.load(t)
			var a *lora.Adapter
			if method == MethodLoRA {
				a = newAdapter(t, m.Config(), 3, 6, 0.2, 8)
			}
			e := newEngine(t, m, a, Options{Method: method})
			packed, unpacked := packedBatch(rand.New(rand.NewPCG(9, 9)), tinyQwen3.V, 7, 11)
			lp, gp := grads(t, e, packed)
			lu, gu := grads(t, e, unpacked)
			if math.Abs(lp-lu) > 1e-5*math.Abs(lu) {
				t.Errorf("packed loss sum %.9g, unpacked %.9g", lp, lu)
			}
			d, s := maxDiff(gp, gu)
			if d > 1e-5*s {
				t.Errorf("packed and unpacked gradients differ by %.3g (largest gradient %.3g)", d, s)
			}
			t.Logf("loss sum packed %.7f unpacked %.7f (rel %.1e); grads max diff %.1e of %.1e", lp, lu, math.Abs(lp-lu)/lu, d, s)
		})
	}
}

// TestCheckpointingSameGrads: gradient checkpointing recomputes each block and gives bitwise
// the same loss and gradients, with and without dropout, LoRA and full.
func TestCheckpointingSameGrads(t *testing.T) {
	for _, c := range []struct {
		name    string
		method  string
		dropout float64
	}{{"lora", MethodLoRA, 0}, {"lora dropout", MethodLoRA, 0.2}, {"full", MethodFull, 0}} {
		t.Run(c.name, func(t *testing.T) {
			m := tinyLlama.load(t)
			var a *lora.Adapter
			if c.method == MethodLoRA {
				a = newAdapter(t, m.Config(), 2, 4, 0.2, 4)
			}
			b := randomBatch(rand.New(rand.NewPCG(3, 3)), tinyLlama.V, 3, 9)
			var losses []float64
			var gs [][][]float32
			for _, ckpt := range []bool{false, true} {
				var ac *lora.Adapter
				if a != nil {
					ac = cloneAdapter(a)
				}
				e := newEngine(t, m, ac, Options{Method: c.method, Dropout: c.dropout, Seed: 77, GradCheckpointing: ckpt})
				l, g := grads(t, e, b)
				losses, gs = append(losses, l), append(gs, g)
			}
			if losses[0] != losses[1] || !bitsEqual(gs[0], gs[1]) {
				d, s := maxDiff(gs[0], gs[1])
				t.Fatalf("checkpointing changed the result: loss %.9g vs %.9g, grads differ by %.3g of %.3g", losses[0], losses[1], d, s)
			}
		})
	}
}

// TestDropout: p > 0 changes the gradients, the same seed reproduces them bitwise, a restored
// RNG state continues the same stream, and Loss (evaluation) ignores dropout.
func TestDropout(t *testing.T) {
	m := tinyLlama.load(t)
	a := newAdapter(t, m.Config(), 2, 4, 0.2, 4)
	b := randomBatch(rand.New(rand.NewPCG(12, 3)), tinyLlama.V, 2, 8)
	run := func(p float64, seed uint64, calls int) (*Engine, [][]float32) {
		e := newEngine(t, m, cloneAdapter(a), Options{Method: MethodLoRA, Dropout: p, Seed: seed})
		var g [][]float32
		for range calls {
			_, g = grads(t, e, b)
		}
		return e, g
	}
	_, g0 := run(0, 1, 1)
	e1, g1 := run(0.3, 1, 1)
	_, g1b := run(0.3, 1, 1)
	_, g2 := run(0.3, 2, 1)
	if bitsEqual(g0, g1) {
		t.Error("dropout 0.3 gave the same gradients as dropout 0")
	}
	if !bitsEqual(g1, g1b) {
		t.Error("the same seed gave different gradients")
	}
	if bitsEqual(g1, g2) {
		t.Error("different seeds gave the same gradients")
	}
	// Resume: an engine restored to e1's state after one call reproduces e1's second call.
	state := e1.RNGState()
	_, want := grads(t, e1, b)
	e3, _ := run(0.3, 1, 0)
	if err := e3.SetRNGState(state); err != nil {
		t.Fatal(err)
	}
	if _, got := grads(t, e3, b); !bitsEqual(got, want) {
		t.Error("a restored RNG state did not continue the dropout stream")
	}
	if _, second := run(0.3, 1, 2); !bitsEqual(second, want) {
		t.Error("two calls on a fresh engine differ from one call + restored state + one call")
	}
	e4, _ := run(0.3, 2, 0)
	if err := e4.SetRNGState(state); err == nil || !strings.Contains(err.Error(), "seed") {
		t.Errorf("a state from another seed: err = %v, want a seed mismatch", err)
	}
	if err := e4.SetRNGState([]byte("junk")); err == nil {
		t.Error("a junk RNG state was accepted")
	}
	// Evaluation has no dropout: the loss equals that of the dropout-free engine.
	e0, _ := run(0, 1, 0)
	l0, _, _ := e0.Loss(b)
	l1, _, _ := e1.Loss(b)
	if l0 != l1 {
		t.Errorf("Loss with dropout configured %.9g, without %.9g", l1, l0)
	}
}

// TestDeterministicAndAccumulating: the same batch gives bitwise-identical gradients, and
// ForwardBackward adds gradScale·∇ into the buffers.
func TestDeterministicAndAccumulating(t *testing.T) {
	m := tinyQwen3.load(t)
	e := newEngine(t, m, newAdapter(t, m.Config(), 2, 4, 0.2, 5), Options{Method: MethodLoRA})
	b := randomBatch(rand.New(rand.NewPCG(13, 3)), tinyQwen3.V, 2, 8)
	_, g1 := grads(t, e, b)
	_, g2 := grads(t, e, b)
	if !bitsEqual(g1, g2) {
		t.Fatal("the same batch gave different gradients")
	}
	e.ZeroGrads()
	for range 2 {
		if _, _, err := e.ForwardBackward(b, 0.25); err != nil {
			t.Fatal(err)
		}
	}
	if err := e.SyncGrads(); err != nil {
		t.Fatal(err)
	}
	// Not bitwise: the second call adds onto non-zero buffers, which rounds differently.
	for i, p := range e.Params() {
		_, scale := maxDiff([][]float32{g1[i]}, [][]float32{g1[i]})
		for j, g := range p.Grad {
			if want := 0.5 * g1[i][j]; math.Abs(float64(g-want)) > 1e-5*scale {
				t.Fatalf("%s[%d]: two calls with scale 0.25 gave %g, want 0.5·∇ = %g", p.Name, j, g, want)
			}
		}
	}
}

// TestParamsAndSync: names, counts, and SyncParams feeding the forward (LoRA and full).
func TestParamsAndSync(t *testing.T) {
	m := tinyLlama.load(t)
	a := newAdapter(t, m.Config(), 2, 4, 0, 5)
	e := newEngine(t, m, a, Options{})
	ps := e.Params()
	if len(ps) != 2*len(a.Pairs) || ps[0].Name != "model.layers.0.self_attn.q_proj.lora_A.weight" ||
		ps[1].Name != "model.layers.0.self_attn.q_proj.lora_B.weight" {
		t.Fatalf("params: %d, first %q %q", len(ps), ps[0].Name, ps[1].Name)
	}
	var n int64
	for _, p := range a.Pairs {
		n += int64(len(p.A) + len(p.B))
	}
	if e.NumTrainable() != n || e.Adapter() != a {
		t.Fatalf("NumTrainable %d, want %d", e.NumTrainable(), n)
	}
	// Changing B on the host and syncing changes the loss; the adapter sees the same values.
	b := randomBatch(rand.New(rand.NewPCG(14, 3)), tinyLlama.V, 1, 10)
	before, _, _ := e.Loss(b)
	ps[1].Data[0] = 0.5
	if a.Pairs[0].B[0] != 0.5 {
		t.Fatal("Params()[1].Data is not the adapter's B")
	}
	sync(t, e)
	if after, _, _ := e.Loss(b); after == before {
		t.Fatal("SyncParams did not reach the device")
	}

	// Full: every tensor is a parameter and SyncParams updates the model itself.
	m2 := tinyQwen3.load(t)
	f := newEngine(t, m2, nil, Options{Method: MethodFull})
	if got, want := f.NumTrainable(), m2.Config().NumParams(); got != want {
		t.Fatalf("full NumTrainable %d, want %d", got, want)
	}
	if !slices.Equal(names(f.Params()), m2.TensorNames()) {
		t.Fatal("full params are not the model's tensors in checkpoint order")
	}
	for _, p := range f.Params() {
		for i := range p.Data {
			p.Data[i] *= 1.01
		}
	}
	sync(t, f)
	checkLossVsForwardAll(t, m2, f, randomBatch(rand.New(rand.NewPCG(15, 3)), tinyQwen3.V, 1, 12))
}

// names lists the parameter names.
func names(ps []optim.Param) []string {
	var s []string
	for _, p := range ps {
		s = append(s, p.Name)
	}
	return s
}

// TestMemoryPlan: the plan counts what training allocates, and checkpointing saves memory.
func TestMemoryPlan(t *testing.T) {
	m := tinyLlama.load(t)
	for _, ckpt := range []bool{false, true} {
		e := newEngine(t, m, newAdapter(t, m.Config(), 2, 4, 0, 5), Options{Dropout: 0.1, GradCheckpointing: ckpt})
		B, T := 2, 16
		plan := e.MemoryPlan(B, T)
		if _, _, err := e.ForwardBackward(randomBatch(rand.New(rand.NewPCG(1, 1)), tinyLlama.V, B, T), 1); err != nil {
			t.Fatal(err)
		}
		var n int64
		for _, b := range e.act.all {
			n += 4 * int64(b.Len())
		}
		if plan.Activations != n {
			t.Errorf("ckpt=%v: plan says %d activation bytes, training allocated %d", ckpt, plan.Activations, n)
		}
		if ckpt && plan.Activations >= plan.ActivationsNoCheckpointing {
			t.Errorf("checkpointing saves nothing: %d vs %d", plan.Activations, plan.ActivationsNoCheckpointing)
		}
		if plan.Trainable != 4*e.NumTrainable() || plan.Optimizer != 2*plan.Trainable || plan.Weights != 4*m.Config().NumParams() {
			t.Errorf("plan %+v", plan)
		}
		t.Logf("ckpt=%v B=%d T=%d: %+v", ckpt, B, T, plan)
	}
}

// trainless is a backend without the Trainer capability.
type trainless struct{ backend.Backend }

// TestErrors: bad options and batches are errors, not panics.
func TestErrors(t *testing.T) {
	dir := tinyLlama.write(t)
	m0, err := model.Load(dir, trainless{cpu.New()})
	if err != nil {
		t.Fatal(err)
	}
	if _, err := New(m0, nil, Options{Method: MethodFull}); err == nil || !strings.Contains(err.Error(), "Trainer") {
		t.Errorf("a backend without Trainer: err = %v", err)
	}
	m := tinyLlama.load(t)
	a := newAdapter(t, m.Config(), 2, 4, 0, 5)
	for _, c := range []struct {
		opt Options
		a   bool
		msg string
	}{
		{Options{Method: "qlora"}, true, "unknown method"},
		{Options{Method: MethodLoRA}, false, "needs an adapter"},
		{Options{Method: MethodFull}, true, "takes no adapter"},
		{Options{Method: MethodLoRA, Dropout: 1}, true, "dropout"},
	} {
		ad := a
		if !c.a {
			ad = nil
		}
		if _, err := New(m, ad, c.opt); err == nil || !strings.Contains(err.Error(), c.msg) {
			t.Errorf("%+v: err = %v, want %q", c.opt, err, c.msg)
		}
	}
	e := newEngine(t, m, a, Options{})
	good := randomBatch(rand.New(rand.NewPCG(2, 2)), tinyLlama.V, 2, 4)
	bad := func(f func(*Batch)) Batch {
		b := good
		b.Tokens, b.Targets = slices.Clone(good.Tokens), slices.Clone(good.Targets)
		f(&b)
		return b
	}
	for _, c := range []struct {
		b   Batch
		msg string
	}{
		{bad(func(b *Batch) { b.B = 0 }), "at least 1"},
		{bad(func(b *Batch) { b.Tokens = b.Tokens[:3] }), "tokens"},
		{bad(func(b *Batch) { b.Tokens[2] = tinyLlama.V }), "vocabulary"},
		{bad(func(b *Batch) { b.Targets[1] = -5 }), "target"},
		{bad(func(b *Batch) { b.Positions = []int{0, 1} }), "positions"},
		{bad(func(b *Batch) { b.Positions = []int{0, 1, 2, 99, 0, 1, 2, 3} }), "position 99"},
		{bad(func(b *Batch) { b.Segments = []int{0} }), "segments"},
		{Batch{B: 1, T: 65, Tokens: make([]int, 65), Targets: make([]int, 65)}, "max_position_embeddings"},
	} {
		if _, _, err := e.ForwardBackward(c.b, 1); err == nil || !strings.Contains(err.Error(), c.msg) {
			t.Errorf("ForwardBackward: err = %v, want %q", err, c.msg)
		}
		if _, _, err := e.Loss(c.b); err == nil {
			t.Errorf("Loss accepted a bad batch (%s)", c.msg)
		}
	}
}

// TestLMHeadChunks: running the lm_head and the loss over chunks of rows (what a large
// vocabulary or batch does) gives the same loss and gradients as one pass: bitwise for LoRA
// (every logit and every row of ∂L/∂hf is computed the same way), within rounding for full
// fine-tuning (the lm_head's weight gradient sums its rows in chunks). Evaluation agrees too.
func TestLMHeadChunks(t *testing.T) {
	for _, method := range []string{MethodLoRA, MethodFull} {
		t.Run(method, func(t *testing.T) {
			m := tinyLlama.load(t)
			var a *lora.Adapter
			if method == MethodLoRA {
				a = newAdapter(t, m.Config(), 2, 4, 0.2, 4)
			}
			b := randomBatch(rand.New(rand.NewPCG(5, 5)), tinyLlama.V, 3, 9) // N = 27 rows
			var losses, evals []float64
			var gs [][][]float32
			for _, budget := range []int{1 << 23, 16 * tinyLlama.V} { // one chunk; chunks of 16 rows
				prev := lmLogitsBudget
				lmLogitsBudget = budget
				var ac *lora.Adapter
				if a != nil {
					ac = cloneAdapter(a)
				}
				e := newEngine(t, m, ac, Options{Method: method, Seed: 7})
				l, g := grads(t, e, b)
				ev, _, err := e.Loss(b)
				if err != nil {
					t.Fatal(err)
				}
				if want := map[bool]int{true: 27, false: 16}[budget == 1<<23]; e.act.ch != want {
					t.Fatalf("budget %d: chunks of %d rows, want %d", budget, e.act.ch, want)
				}
				lmLogitsBudget = prev
				losses, evals, gs = append(losses, l), append(evals, ev), append(gs, g)
			}
			if losses[0] != losses[1] || evals[0] != evals[1] {
				t.Fatalf("chunking changed the loss: %.9g vs %.9g (eval %.9g vs %.9g)", losses[0], losses[1], evals[0], evals[1])
			}
			d, s := maxDiff(gs[0], gs[1])
			if method == MethodLoRA && !bitsEqual(gs[0], gs[1]) {
				t.Fatalf("chunking changed the LoRA gradients by %.3g of %.3g", d, s)
			}
			if d > 1e-5*s {
				t.Fatalf("chunking changed the gradients by %.3g of %.3g", d, s)
			}
		})
	}
}
