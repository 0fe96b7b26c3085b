package engine

import (
	"fmt"
	"math"
	"math/rand/v2"
	"slices"
	"strings"
	"testing"

	"github.com/loractl/loractl/internal/backend"
	"github.com/loractl/loractl/internal/backend/cpu"
	"github.com/loractl/loractl/internal/model"
	"github.com/loractl/loractl/internal/refdata"
)

// refLossSum is the summed cross-entropy of logits (T, V) against targets, in float64.
func refLossSum(logits []float32, targets []int, V int) (float64, int) {
	sum, n := 0.0, 0
	for t, y := range targets {
		if y == backend.IgnoreIndex {
			continue
		}
		row := logits[t*V : (t+1)*V] // (V)
		mx := math.Inf(-1)
		for _, v := range row {
			mx = max(mx, float64(v))
		}
		z := 0.0
		for _, v := range row {
			z += math.Exp(float64(v) - mx)
		}
		sum += mx + math.Log(z) - float64(row[y])
		n++
	}
	return sum, n
}

// checkLossVsForwardAll compares the engine's loss on one row with the cross-entropy of the
// inference forward's logits.
func checkLossVsForwardAll(t *testing.T, m *model.Model, e *Engine, b Batch) {
	t.Helper()
	logits, err := m.ForwardAll(b.Tokens)
	if err != nil {
		t.Fatal(err)
	}
	want, wantN := refLossSum(logits, b.Targets, m.Config().VocabSize)
	got, n, err := e.Loss(b)
	if err != nil {
		t.Fatal(err)
	}
	if n != wantN || math.Abs(got-want) > 1e-5*math.Abs(want) {
		t.Fatalf("Loss = %.9g over %d targets, ForwardAll's cross-entropy = %.9g over %d (rel %.2g)",
			got, n, want, wantN, math.Abs(got-want)/math.Abs(want))
	}
	t.Logf("loss %.7f vs ForwardAll %.7f (rel %.1e)", got, want, math.Abs(got-want)/math.Abs(want))
}

// TestZeroBLossMatchesInference: with B = 0 the training forward equals the golden-tested
// inference forward.
func TestZeroBLossMatchesInference(t *testing.T) {
	for _, ts := range []tinySpec{tinyLlama, tinyQwen3} {
		t.Run(ts.name, func(t *testing.T) {
			m := ts.load(t)
			e := newEngine(t, m, newAdapter(t, m.Config(), 4, 8, 0, 3), Options{Method: MethodLoRA, Dropout: 0.3})
			checkLossVsForwardAll(t, m, e, randomBatch(rand.New(rand.NewPCG(5, 5)), ts.V, 1, 13))
		})
	}
	t.Run("stories260K", func(t *testing.T) {
		m, err := model.Load(refdata.Stories260K(t), cpu.New())
		if err != nil {
			t.Fatal(err)
		}
		defer m.Close()
		e := newEngine(t, m, newAdapter(t, m.Config(), 8, 16, 0, 3), Options{Method: MethodLoRA})
		checkLossVsForwardAll(t, m, e, randomBatch(rand.New(rand.NewPCG(6, 6)), m.Config().VocabSize, 1, 64))
	})
}

// gcRow is one line of the gradient-check table.
type gcRow struct {
	name           string
	n              int
	maxRel, maxAbs float64
}

// gradCheck compares the analytic gradients of the engine with central finite differences of
// Loss for perParam random entries of each parameter whose name contains one of the filters.
// The forward is float32, so the step is large (eps = 4e-2, Richardson-extrapolated with eps/2) and the
// tolerance is |g−fd| ≤ 1e-2·max(|g|,|fd|) + 3e-4.
func gradCheck(t *testing.T, name string, e *Engine, b Batch, perParam int, filters []string, seed uint64) gcRow {
	t.Helper()
	const eps = 4e-2
	rng := rand.New(rand.NewPCG(seed, 13))
	_, g := grads(t, e, b)
	row := gcRow{name: name}
	loss := func() float64 {
		l, _, err := e.Loss(b)
		if err != nil {
			t.Fatal(err)
		}
		return l
	}
	for pi, p := range e.Params() {
		if !slices.ContainsFunc(filters, func(f string) bool { return strings.Contains(p.Name, f) }) {
			continue
		}
		for range perParam {
			i := rng.IntN(len(p.Data))
			orig := p.Data[i]
			central := func(h float32) float64 {
				p.Data[i] = orig + h
				sync(t, e)
				lp := loss()
				p.Data[i] = orig - h
				sync(t, e)
				lm := loss()
				p.Data[i] = orig
				sync(t, e)
				return (lp - lm) / (float64(orig+h) - float64(orig-h))
			}
			// Richardson extrapolation cancels the h² term of the central difference.
			fd := (4*central(eps/2) - central(eps)) / 3
			an := float64(g[pi][i])
			d := math.Abs(an - fd)
			scale := max(math.Abs(an), math.Abs(fd))
			if d > 1e-2*scale+3e-4 {
				t.Errorf("%s: %s[%d]: analytic %.6g, finite difference %.6g", name, p.Name, i, an, fd)
			}
			row.n++
			row.maxAbs = max(row.maxAbs, d)
			if scale > 1e-2 {
				row.maxRel = max(row.maxRel, d/scale)
			}
		}
	}
	if row.n == 0 {
		t.Fatalf("%s: no parameter matched %v", name, filters)
	}
	return row
}

// sync uploads the host parameters.
func sync(t *testing.T, e *Engine) {
	t.Helper()
	if err := e.SyncParams(); err != nil {
		t.Fatal(err)
	}
}

// TestGradCheck checks whole-model gradients, LoRA and full, against finite differences.
func TestGradCheck(t *testing.T) {
	var table []gcRow
	allLoRA := []string{"lora_A", "lora_B"}
	for _, c := range []struct {
		name   string
		ts     tinySpec
		packed bool
	}{{"lora llama", tinyLlama, false}, {"lora qwen3", tinyQwen3, false}, {"lora qwen3 packed", tinyQwen3, true}} {
		m := c.ts.load(t)
		a := newAdapter(t, m.Config(), 3, 6, 0.2, 21)
		for _, ckpt := range []bool{false, true} {
			e := newEngine(t, m, cloneAdapter(a), Options{Method: MethodLoRA, GradCheckpointing: ckpt})
			rng := rand.New(rand.NewPCG(31, 1))
			b := randomBatch(rng, c.ts.V, 2, 8)
			if c.packed {
				b, _ = packedBatch(rng, c.ts.V, 6, 9)
			}
			name := c.name
			if ckpt {
				name += " ckpt"
			}
			table = append(table, gradCheck(t, name, e, b, 2, allLoRA, 41))
		}
	}
	full := []string{"embed", "layernorm", "q_norm", "k_norm", "model.norm", "proj.weight", "proj.bias", "lm_head"}
	for _, ts := range []tinySpec{tinyLlama, tinyQwen3} {
		m := ts.load(t)
		e := newEngine(t, m, nil, Options{Method: MethodFull})
		b := randomBatch(rand.New(rand.NewPCG(32, 1)), ts.V, 2, 8)
		table = append(table, gradCheck(t, "full "+ts.name, e, b, 2, full, 42))
	}
	var sb strings.Builder
	sb.WriteString("gradient check (central differences, Richardson eps 4e-2 and 2e-2, float32 forward)\n")
	sb.WriteString("case                      entries  max rel err  max abs err\n")
	for _, r := range table {
		fmt.Fprintf(&sb, "%-24s %8d  %11.2e  %11.2e\n", r.name, r.n, r.maxRel, r.maxAbs)
	}
	t.Log("\n" + sb.String())
}
