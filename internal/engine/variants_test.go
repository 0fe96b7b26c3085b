package engine

import (
	"math"
	"math/rand/v2"
	"strings"
	"testing"
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
