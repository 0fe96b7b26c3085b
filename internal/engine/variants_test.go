package engine

import (
	"math"
	"math/rand/v2"
	"slices"
	"strings"
	"testing"

	"github.com/loractl/loractl/internal/lora"
)

// TestFreezeA (LoRA-FA): with A frozen, A is not a parameter, B's gradients are bitwise those
// of the unfrozen engine (with dropout and with checkpointing too), and the Linear inputs that
// only dA read are not kept: the activation plan shrinks.
func TestFreezeA(t *testing.T) {
	m := tinyLlama.load(t)
	b := randomBatch(rand.New(rand.NewPCG(4, 4)), tinyLlama.V, 2, 9)
	for _, c := range []struct {
		name    string
		dropout float64
		ckpt    bool
	}{{"plain", 0, false}, {"dropout", 0.2, false}, {"dropout ckpt", 0.2, true}} {
		t.Run(c.name, func(t *testing.T) {
			a := newAdapter(t, m.Config(), 2, 4, 0.2, 6)
			full := newEngine(t, m, cloneAdapter(a), Options{Dropout: c.dropout, GradCheckpointing: c.ckpt, Seed: 3})
			fa := newEngine(t, m, cloneAdapter(a), Options{Dropout: c.dropout, GradCheckpointing: c.ckpt, Seed: 3, FreezeA: true})
			lf, gf := grads(t, full, b)
			la, ga := grads(t, fa, b)
			if lf != la {
				t.Errorf("loss %v with A trainable, %v with A frozen", lf, la)
			}
			var bGrads [][]float32
			for i, p := range full.Params() {
				if strings.HasSuffix(p.Name, "lora_B.weight") {
					bGrads = append(bGrads, gf[i])
				}
			}
			for _, p := range fa.Params() {
				if strings.HasSuffix(p.Name, "lora_A.weight") {
					t.Fatalf("frozen A is a parameter: %s", p.Name)
				}
			}
			if !bitsEqual(bGrads, ga) {
				d, s := maxDiff(bGrads, ga)
				t.Errorf("B gradients differ with A frozen: %.3g of %.3g", d, s)
			}
			var nB int64
			for _, p := range a.Pairs {
				nB += int64(len(p.B))
			}
			if fa.NumTrainable() != nB {
				t.Errorf("%d trainable values with A frozen, want the %d of the B matrices", fa.NumTrainable(), nB)
			}
			pf, pa := full.MemoryPlan(2, 9), fa.MemoryPlan(2, 9)
			if !c.ckpt && pa.Activations >= pf.Activations {
				t.Errorf("activations %d with A frozen, %d without: the A inputs are still kept", pa.Activations, pf.Activations)
			}
			t.Logf("activations: %d bytes with A trainable, %d with A frozen", pf.Activations, pa.Activations)
		})
	}
}

// TestRankLimit (DyLoRA's truncation): with the rank limited to k the loss and the leading
// gradients equal those of the adapter truncated to rank k (at the scale of rank k), the
// gradients beyond rank k are exactly zero, and removing the limit restores the full model.
func TestRankLimit(t *testing.T) {
	m := tinyQwen3.load(t)
	b := randomBatch(rand.New(rand.NewPCG(8, 4)), tinyQwen3.V, 2, 7)
	a := newAdapter(t, m.Config(), 4, 8, 0.2, 9)
	e := newEngine(t, m, a, Options{})
	lFull, _ := grads(t, e, b)
	for _, k := range []int{1, 2, 3} {
		tr := cloneAdapter(a)
		if err := tr.Truncate(k); err != nil {
			t.Fatal(err)
		}
		if got, want := tr.ScaleOf(tr.Pairs[0]), float32(8)/float32(k); got != want {
			t.Fatalf("truncated scale %v, want %v", got, want)
		}
		et := newEngine(t, m, tr, Options{})
		lt, gt := grads(t, et, b)
		if err := e.SetRankLimit(k); err != nil {
			t.Fatal(err)
		}
		ll, gl := grads(t, e, b)
		if math.Abs(ll-lt) > 1e-6*math.Abs(lt) {
			t.Errorf("k=%d: loss %v limited, %v truncated", k, ll, lt)
		}
		var worst, scale float64
		for i, p := range e.Params() {
			md := a.Pairs[i/2].Module
			r := 4
			for j, g := range gl[i] {
				var lead bool
				var tj int
				if strings.HasSuffix(p.Name, "lora_A.weight") { // (r, in)
					lead, tj = j/md.In < k, j
				} else { // (out, r)
					o, c := j/r, j%r
					lead, tj = c < k, o*k+c
				}
				if !lead {
					if g != 0 {
						t.Fatalf("k=%d: %s[%d] = %v beyond the active rank", k, p.Name, j, g)
					}
					continue
				}
				worst = max(worst, math.Abs(float64(g)-float64(gt[i][tj])))
				scale = max(scale, math.Abs(float64(gt[i][tj])))
			}
		}
		if worst > 1e-5*scale {
			t.Errorf("k=%d: leading gradients differ from the truncated adapter's by %.3g (of %.3g)", k, worst, scale)
		}
	}
	if err := e.SetRankLimit(0); err != nil {
		t.Fatal(err)
	}
	if l, _ := grads(t, e, b); l != lFull {
		t.Errorf("after removing the limit the loss is %v, was %v", l, lFull)
	}
	if err := cloneAdapter(a).Truncate(5); err == nil || !strings.Contains(err.Error(), "larger than the adapter's rank 4") {
		t.Errorf("Truncate(5) of a rank-4 adapter: %v", err)
	}
	if err := e.SetRankLimit(-1); err == nil {
		t.Error("a negative rank limit is accepted")
	}
}

// TestDoRAStartsAtBase: with B = 0 and the magnitude at its PEFT start (‖W0‖ per row) every
// scale m/n is exactly 1, so DoRA's loss is bitwise that of LoRA with B = 0 (itself the base's).
func TestDoRAStartsAtBase(t *testing.T) {
	for _, ts := range []tinySpec{tinyLlama, tinyQwen3} {
		m := ts.load(t)
		b := randomBatch(rand.New(rand.NewPCG(5, 6)), ts.V, 2, 9)
		plain := newAdapter(t, m.Config(), 3, 6, 0, 3)
		dora := cloneAdapter(plain)
		if err := dora.InitDoRA(m); err != nil {
			t.Fatal(err)
		}
		lp, _, _ := newEngine(t, m, plain, Options{}).Loss(b)
		ld, _, _ := newEngine(t, m, dora, Options{}).Loss(b)
		if lp != ld {
			t.Errorf("%s: DoRA at its start has loss %v, LoRA with B = 0 %v", ts.name, ld, lp)
		}
	}
}

// TestDoRACheckpointingAndMerge: DoRA's gradients are bitwise the same with checkpointing, and
// the merged weights diag(m/n)·(W0 + s·BA) give the unmerged model's loss.
func TestDoRACheckpointingAndMerge(t *testing.T) {
	ts := tinyQwen3
	m := ts.load(t)
	a := newAdapter(t, m.Config(), 3, 6, 0.3, 8)
	doraInit(t, m, a, 0.2)
	b := randomBatch(rand.New(rand.NewPCG(7, 7)), ts.V, 2, 8)
	l1, g1 := grads(t, newEngine(t, m, cloneDoRA(a), Options{}), b)
	l2, g2 := grads(t, newEngine(t, m, cloneDoRA(a), Options{GradCheckpointing: true}), b)
	if l1 != l2 || !bitsEqual(g1, g2) {
		t.Errorf("checkpointing changes DoRA: loss %v vs %v", l1, l2)
	}
	m2 := ts.load(t)
	if err := a.MergeInto(m2); err != nil {
		t.Fatal(err)
	}
	e := newEngine(t, m, cloneDoRA(a), Options{})
	lu, _, _ := e.Loss(b)
	// The merged model with a zero adapter is the merged model itself.
	zero := newAdapter(t, m2.Config(), 1, 1, 0, 1)
	lm, _, _ := newEngine(t, m2, zero, Options{}).Loss(b)
	if math.Abs(lm-lu) > 2e-6*math.Abs(lu) {
		t.Errorf("merged DoRA loss %v, unmerged %v", lm, lu)
	}
	t.Logf("unmerged %.9g merged %.9g (rel %.1e)", lu, lm, math.Abs(lm-lu)/lu)
}

// cloneDoRA deep-copies a, magnitudes included.
func cloneDoRA(a *lora.Adapter) *lora.Adapter {
	c := cloneAdapter(a)
	for i, p := range a.Pairs {
		c.Pairs[i].M = slices.Clone(p.M)
	}
	return c
}
