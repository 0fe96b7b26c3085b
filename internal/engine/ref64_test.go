package engine

import (
	"fmt"
	"math"
	"math/rand/v2"
	"strings"
	"testing"

	"github.com/loractl/loractl/internal/backend"
	"github.com/loractl/loractl/internal/lora"
	"github.com/loractl/loractl/internal/model"
)

// ref64 is an independent, naive float64 forward of the adapted Llama-family model over a
// packed batch (HF semantics: q_norm/k_norm, biases, rotate_half RoPE, causal GQA restricted to
// each segment, y = W0·x + b + s·B·A·x). Finite differences of its loss are exact enough to
// check the engine's float32 gradients at 1e-3.
type ref64 struct {
	cfg *model.Config
	w   map[string][]float64    // checkpoint tensors
	ab  map[string][2][]float64 // module path → (A (r, in), B (out, r))
	rs  map[string]refRank      // module path → its rank and scale
	m   map[string][]float64    // module path → DoRA magnitude (out)
	n   map[string][]float64    // module path → DoRA row norms ‖W0 + s·BA‖ at construction (held constant)
	inv []float64               // (D/2) RoPE inverse frequencies (the model's float32 values)
}

// refRank is one adapted module's rank and scale in the reference.
type refRank struct {
	r int
	s float64
}

// newRef64 copies the model's weights and the adapter into float64.
func newRef64(t *testing.T, m *model.Model, a *lora.Adapter) *ref64 {
	t.Helper()
	r := &ref64{cfg: m.Config(), w: map[string][]float64{}, ab: map[string][2][]float64{}, rs: map[string]refRank{},
		m: map[string][]float64{}, n: map[string][]float64{}}
	for _, name := range m.TensorNames() {
		buf, _, _ := m.Tensor(name)
		v := make([]float32, buf.Len())
		if err := m.Backend().Download(v, buf); err != nil {
			t.Fatal(err)
		}
		r.w[name] = to64(v)
	}
	for _, p := range adapterPairs(a) {
		r.ab[p.Module.Path] = [2][]float64{to64(p.A), to64(p.B)}
		r.rs[p.Module.Path] = refRank{r: a.RankOf(p), s: float64(a.ScaleOf(p))}
	}
	for _, p := range adapterPairs(a) {
		if p.M == nil {
			continue
		}
		path, in, out := p.Module.Path, p.Module.In, p.Module.Out
		W, ab, rr := r.w[path+".weight"], r.ab[path], r.rs[path]
		n := make([]float64, out)
		for o := range out {
			var ss float64
			for i := range in {
				w := W[o*in+i]
				for k := range rr.r {
					w += rr.s * ab[1][o*rr.r+k] * ab[0][k*in+i]
				}
				ss += w * w
			}
			n[o] = math.Sqrt(ss)
		}
		r.m[path], r.n[path] = to64(p.M), n
	}
	for _, f := range r.cfg.RoPEInvFreq() {
		r.inv = append(r.inv, float64(f))
	}
	return r
}

// adapterPairs returns a's pairs, none for a nil adapter (full fine-tuning).
func adapterPairs(a *lora.Adapter) []*lora.Pair {
	if a == nil {
		return nil
	}
	return a.Pairs
}

// to64 widens a float32 slice.
func to64(v []float32) []float64 {
	out := make([]float64, len(v))
	for i, x := range v {
		out[i] = float64(x)
	}
	return out
}

// loss returns the summed cross-entropy of the batch.
func (r *ref64) loss(b Batch) float64 {
	cfg := r.cfg
	C, F, V, NH, NKV, D := cfg.HiddenSize, cfg.IntermediateSize, cfg.VocabSize, cfg.NumAttentionHeads, cfg.NumKeyValueHeads, cfg.HeadDim
	Q, KV, N := NH*D, NKV*D, b.B*b.T
	eps := cfg.RMSNormEps
	rms := func(x, g []float64) []float64 {
		ss := 0.0
		for _, v := range x {
			ss += v * v
		}
		k := 1 / math.Sqrt(ss/float64(len(x))+eps)
		out := make([]float64, len(x))
		for i := range x {
			out[i] = x[i] * k * g[i]
		}
		return out
	}
	lin := func(x []float64, path string, in, out int) []float64 {
		W, bias := r.w[path+".weight"], r.w[path+".bias"]
		y := make([]float64, out) // (out)
		for o := range out {
			for i := range in {
				y[o] += W[o*in+i] * x[i]
			}
		}
		defer func() { // DoRA: y = z·m/n (n held constant, as detached); then the bias
			if m := r.m[path]; m != nil {
				for o := range out {
					y[o] *= m[o] / r.n[path][o]
				}
			}
			if bias != nil {
				for o := range out {
					y[o] += bias[o]
				}
			}
		}()
		if ab, ok := r.ab[path]; ok {
			rk, s := r.rs[path].r, r.rs[path].s
			u := make([]float64, rk) // (r)
			for k := range rk {
				for i := range in {
					u[k] += ab[0][k*in+i] * x[i]
				}
			}
			for o := range out {
				for k := range rk {
					y[o] += s * ab[1][o*rk+k] * u[k]
				}
			}
		}
		return y
	}
	rope := func(x []float64, pos int) { // one head (D), rotate_half
		for i := 0; i < D/2; i++ {
			th := float64(float32(pos) * float32(r.inv[i]))
			a, c := x[i], x[i+D/2]
			x[i] = a*math.Cos(th) - c*math.Sin(th)
			x[i+D/2] = c*math.Cos(th) + a*math.Sin(th)
		}
	}
	posOf := func(n int) int {
		if b.Positions != nil {
			return b.Positions[n]
		}
		return n % b.T
	}
	segOf := func(n int) int {
		if b.Segments != nil {
			return b.Segments[n]
		}
		return 0
	}
	x := make([][]float64, N) // (N, C)
	for n, id := range b.Tokens {
		x[n] = append([]float64(nil), r.w["model.embed_tokens.weight"][id*C:(id+1)*C]...)
	}
	for l := 0; l < cfg.NumHiddenLayers; l++ {
		p := fmt.Sprintf("model.layers.%d.", l)
		q, k, v := make([][]float64, N), make([][]float64, N), make([][]float64, N) // (N, Q), (N, KV) ×2
		for n := range N {
			h := rms(x[n], r.w[p+"input_layernorm.weight"])
			q[n], k[n], v[n] = lin(h, p+"self_attn.q_proj", C, Q), lin(h, p+"self_attn.k_proj", C, KV), lin(h, p+"self_attn.v_proj", C, KV)
			for hh := range NH {
				if g := r.w[p+"self_attn.q_norm.weight"]; g != nil {
					copy(q[n][hh*D:], rms(q[n][hh*D:(hh+1)*D], g))
				}
				rope(q[n][hh*D:(hh+1)*D], posOf(n))
			}
			for hh := range NKV {
				if g := r.w[p+"self_attn.k_norm.weight"]; g != nil {
					copy(k[n][hh*D:], rms(k[n][hh*D:(hh+1)*D], g))
				}
				rope(k[n][hh*D:(hh+1)*D], posOf(n))
			}
		}
		for n := range N {
			bi, t := n/b.T, n%b.T
			att := make([]float64, Q) // (NH·D)
			for hh := range NH {
				kh := hh / (NH / NKV)
				var sc []float64
				var idx []int
				mx := math.Inf(-1)
				for s := 0; s <= t; s++ {
					m := bi*b.T + s
					if segOf(m) != segOf(n) {
						continue
					}
					d := 0.0
					for i := range D {
						d += q[n][hh*D+i] * k[m][kh*D+i]
					}
					d /= math.Sqrt(float64(D))
					sc, idx = append(sc, d), append(idx, m)
					mx = max(mx, d)
				}
				z := 0.0
				for i := range sc {
					sc[i] = math.Exp(sc[i] - mx)
					z += sc[i]
				}
				for i, m := range idx {
					for j := range D {
						att[hh*D+j] += sc[i] / z * v[m][kh*D+j]
					}
				}
			}
			o := lin(att, p+"self_attn.o_proj", Q, C)
			for c := range C {
				x[n][c] += o[c]
			}
		}
		for n := range N {
			h := rms(x[n], r.w[p+"post_attention_layernorm.weight"])
			g, u := lin(h, p+"mlp.gate_proj", C, F), lin(h, p+"mlp.up_proj", C, F)
			for i := range g {
				g[i] = g[i] / (1 + math.Exp(-g[i])) * u[i]
			}
			d := lin(g, p+"mlp.down_proj", F, C)
			for c := range C {
				x[n][c] += d[c]
			}
		}
	}
	head := r.w["lm_head.weight"]
	if head == nil {
		head = r.w["model.embed_tokens.weight"]
	}
	sum := 0.0
	for n, y := range b.Targets {
		if y == backend.IgnoreIndex {
			continue
		}
		h := rms(x[n], r.w["model.norm.weight"])
		logits := make([]float64, V) // (V)
		mx := math.Inf(-1)
		for vv := range V {
			for c := range C {
				logits[vv] += head[vv*C+c] * h[c]
			}
			mx = max(mx, logits[vv])
		}
		z := 0.0
		for _, lg := range logits {
			z += math.Exp(lg - mx)
		}
		sum += mx + math.Log(z) - logits[y]
	}
	return sum
}

// TestGradCheckFloat64 checks sampled whole-model gradients (LoRA A/B; for full fine-tuning
// every tensor, embeddings, norms, biases and lm_head included) against central finite
// differences of the float64 reference (eps 1e-5): max rel error ≤ 1e-3.
func TestGradCheckFloat64(t *testing.T) {
	var sb strings.Builder
	sb.WriteString("gradients vs float64 central differences (eps 1e-5)\n")
	sb.WriteString("case                  entries  max rel err  max abs err\n")
	for _, c := range []struct {
		name    string
		ts      tinySpec
		method  string
		packed  bool
		pattern bool // per-module ranks and alphas (rank_pattern, alpha_pattern, rank_schedule)
		freezeA bool // LoRA-FA
		dora    bool // DoRA magnitudes (initialised to the norm, then moved off it)
		dropout float64
	}{
		{name: "lora llama", ts: tinyLlama, method: MethodLoRA}, {name: "lora qwen3", ts: tinyQwen3, method: MethodLoRA},
		{name: "lora qwen3 packed", ts: tinyQwen3, method: MethodLoRA, packed: true},
		{name: "rank_pattern llama", ts: tinyLlama, method: MethodLoRA, pattern: true},
		{name: "freeze_a llama", ts: tinyLlama, method: MethodLoRA, freezeA: true},
		{name: "freeze_a qwen3 pattern", ts: tinyQwen3, method: MethodLoRA, freezeA: true, pattern: true},
		{name: "dora llama", ts: tinyLlama, method: MethodLoRA, dora: true},
		{name: "dora qwen3 pattern", ts: tinyQwen3, method: MethodLoRA, dora: true, pattern: true},
		{name: "dora qwen3 freeze_a", ts: tinyQwen3, method: MethodLoRA, dora: true, freezeA: true},
		{name: "full llama", ts: tinyLlama, method: MethodFull}, {name: "full qwen3 packed", ts: tinyQwen3, method: MethodFull, packed: true},
	} {
		m := c.ts.load(t)
		var a *lora.Adapter
		if c.method == MethodLoRA {
			a = newAdapter(t, m.Config(), 3, 6, 0.2, 21)
			if c.pattern {
				a = patternAdapter(t, m.Config(), 21)
			}
			if c.dora {
				doraInit(t, m, a, 0.3)
			}
		}
		e := newEngine(t, m, a, Options{Method: c.method, FreezeA: c.freezeA})
		rng := rand.New(rand.NewPCG(51, 1))
		b := randomBatch(rng, c.ts.V, 2, 8)
		if c.packed {
			b, _ = packedBatch(rng, c.ts.V, 6, 9)
		}
		ref := newRef64(t, m, a)
		eng, g := grads(t, e, b)
		if want := ref.loss(b); math.Abs(eng-want) > 1e-5*math.Abs(want) {
			t.Errorf("%s: engine loss %.9g, float64 reference %.9g", c.name, eng, want)
		}
		row := gcRow{name: c.name}
		const eps = 1e-5
		for pi, p := range e.Params() {
			vals := ref.w[p.Name] // full: the checkpoint tensor
			if a != nil {
				mod := strings.TrimSuffix(strings.TrimSuffix(p.Name, ".lora_A.weight"), ".lora_B.weight")
				which := 0
				if strings.HasSuffix(p.Name, "lora_B.weight") {
					which = 1
				}
				vals = ref.ab[mod][which]
				if m, ok := strings.CutSuffix(p.Name, ".lora_magnitude_vector"); ok {
					vals = ref.m[m]
				}
			}
			for range 3 {
				i := rng.IntN(len(vals))
				orig := vals[i]
				vals[i] = orig + eps
				lp := ref.loss(b)
				vals[i] = orig - eps
				lm := ref.loss(b)
				vals[i] = orig
				fd := (lp - lm) / (2 * eps)
				an := float64(g[pi][i])
				d, scale := math.Abs(an-fd), max(math.Abs(an), math.Abs(fd))
				if d > 1e-3*scale+1e-5 {
					t.Errorf("%s: %s[%d]: analytic %.7g, float64 finite difference %.7g", c.name, p.Name, i, an, fd)
				}
				row.n++
				row.maxAbs = max(row.maxAbs, d)
				if scale > 1e-3 {
					row.maxRel = max(row.maxRel, d/scale)
				}
			}
		}
		fmt.Fprintf(&sb, "%-20s %8d  %11.2e  %11.2e\n", row.name, row.n, row.maxRel, row.maxAbs)
	}
	t.Log("\n" + sb.String())
}

// patternAdapter returns an all-linear adapter whose ranks grow with the layer and differ by
// module (1 to 4), with an alpha_pattern on the MLP, and B ~ N(0, 0.2²).
func patternAdapter(t testing.TB, c *model.Config, seed uint64) *lora.Adapter {
	t.Helper()
	rng := rand.New(rand.NewPCG(seed, 12))
	mods := lora.Modules(c)
	pat := map[string]int{}
	for i, md := range mods {
		pat[md.Path] = 1 + (i+md.Layer)%4
	}
	a, err := lora.New(lora.Config{R: 2, Alpha: 6, RankPattern: pat}, mods, lora.InitDefault, rng)
	if err != nil {
		t.Fatal(err)
	}
	for _, p := range a.Pairs {
		if p.Module.Name == "up_proj" || p.Module.Name == "down_proj" {
			p.Alpha = 3
		}
		for i := range p.B {
			p.B[i] = float32(0.2 * rng.NormFloat64())
		}
	}
	return a
}

// doraInit gives every pair of a a DoRA magnitude: the row norms of W0 + s·BA (as PEFT
// initialises it), times 1 + N(0, jitter²) so that the magnitude is not trivially the norm.
func doraInit(t testing.TB, m *model.Model, a *lora.Adapter, jitter float64) {
	t.Helper()
	rng := rand.New(rand.NewPCG(13, 13))
	for _, p := range a.Pairs {
		buf, _, _ := m.Tensor(p.Module.Weight())
		w0 := make([]float32, buf.Len())
		if err := m.Backend().Download(w0, buf); err != nil {
			t.Fatal(err)
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
			p.M[o] = float32(math.Sqrt(ss) * (1 + jitter*rng.NormFloat64()))
		}
	}
}
