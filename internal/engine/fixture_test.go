package engine

import (
	"encoding/json"
	"fmt"
	"math"
	"math/rand/v2"
	"os"
	"path/filepath"
	"slices"
	"testing"

	"github.com/loractl/loractl/internal/backend"
	"github.com/loractl/loractl/internal/backend/cpu"
	"github.com/loractl/loractl/internal/lora"
	"github.com/loractl/loractl/internal/model"
	"github.com/loractl/loractl/internal/safetensors"
)

// tinySpec describes a synthetic checkpoint written to t.TempDir().
type tinySpec struct {
	name                    string
	modelType               string
	C, F, L, NH, NKV, D, V  int
	tied, attnBias, mlpBias bool
	seed                    uint64
}

// The tiny configs of the tests: a plain llama (untied, MLP biases) and a qwen3 (q/k norms,
// attention biases, tied embeddings).
var (
	tinyLlama = tinySpec{name: "llama", modelType: "llama", C: 16, F: 24, L: 2, NH: 4, NKV: 2, D: 4, V: 19, mlpBias: true, seed: 1}
	tinyQwen3 = tinySpec{name: "qwen3", modelType: "qwen3", C: 16, F: 24, L: 2, NH: 4, NKV: 2, D: 4, V: 19, tied: true, attnBias: true, seed: 2}
)

// write writes config.json and model.safetensors with seeded random weights and returns the dir.
func (ts tinySpec) write(t *testing.T) string {
	t.Helper()
	dir := t.TempDir()
	cfg := map[string]any{
		"model_type": ts.modelType, "hidden_size": ts.C, "intermediate_size": ts.F,
		"num_hidden_layers": ts.L, "num_attention_heads": ts.NH, "num_key_value_heads": ts.NKV,
		"head_dim": ts.D, "vocab_size": ts.V, "rms_norm_eps": 1e-6, "rope_theta": 10000.0,
		"max_position_embeddings": 64, "tie_word_embeddings": ts.tied, "attention_bias": ts.attnBias,
		"mlp_bias": ts.mlpBias, "hidden_act": "silu", "bos_token_id": 1, "eos_token_id": 2, "torch_dtype": "float32",
	}
	js, err := json.Marshal(cfg)
	if err != nil {
		t.Fatal(err)
	}
	if err := os.WriteFile(filepath.Join(dir, "config.json"), js, 0o644); err != nil {
		t.Fatal(err)
	}
	r := rand.New(rand.NewPCG(ts.seed, 7))
	var tensors []safetensors.Tensor
	add := func(name string, scale, offset float64, shape ...int) {
		n := 1
		for _, d := range shape {
			n *= d
		}
		v := make([]float32, n) // shape
		for i := range v {
			v[i] = float32(offset + scale*r.NormFloat64())
		}
		raw, err := safetensors.EncodeFloat32(safetensors.F32, v)
		if err != nil {
			t.Fatal(err)
		}
		tensors = append(tensors, safetensors.Tensor{Name: name, DType: safetensors.F32, Shape: shape, Data: raw})
	}
	C, F, Q, KV := ts.C, ts.F, ts.NH*ts.D, ts.NKV*ts.D
	add("model.embed_tokens.weight", 1, 0, ts.V, C)
	for l := 0; l < ts.L; l++ {
		p := fmt.Sprintf("model.layers.%d.", l)
		add(p+"input_layernorm.weight", 0.1, 1, C)
		add(p+"post_attention_layernorm.weight", 0.1, 1, C)
		add(p+"self_attn.q_proj.weight", 1/math.Sqrt(float64(C)), 0, Q, C)
		add(p+"self_attn.k_proj.weight", 1/math.Sqrt(float64(C)), 0, KV, C)
		add(p+"self_attn.v_proj.weight", 1/math.Sqrt(float64(C)), 0, KV, C)
		add(p+"self_attn.o_proj.weight", 1/math.Sqrt(float64(Q)), 0, C, Q)
		add(p+"mlp.gate_proj.weight", 1/math.Sqrt(float64(C)), 0, F, C)
		add(p+"mlp.up_proj.weight", 1/math.Sqrt(float64(C)), 0, F, C)
		add(p+"mlp.down_proj.weight", 1/math.Sqrt(float64(F)), 0, C, F)
		if ts.attnBias {
			add(p+"self_attn.q_proj.bias", 0.3, 0, Q)
			add(p+"self_attn.k_proj.bias", 0.3, 0, KV)
			add(p+"self_attn.v_proj.bias", 0.3, 0, KV)
			add(p+"self_attn.o_proj.bias", 0.3, 0, C)
		}
		if ts.modelType == "qwen3" {
			add(p+"self_attn.q_norm.weight", 0.2, 1, ts.D)
			add(p+"self_attn.k_norm.weight", 0.2, 1, ts.D)
		}
		if ts.mlpBias {
			add(p+"mlp.gate_proj.bias", 0.3, 0, F)
			add(p+"mlp.up_proj.bias", 0.3, 0, F)
			add(p+"mlp.down_proj.bias", 0.3, 0, C)
		}
	}
	add("model.norm.weight", 0.1, 1, C)
	if !ts.tied {
		add("lm_head.weight", 1/math.Sqrt(float64(C)), 0, ts.V, C)
	}
	if err := safetensors.Write(filepath.Join(dir, "model.safetensors"), tensors, map[string]string{"format": "pt"}); err != nil {
		t.Fatal(err)
	}
	return dir
}

// load writes ts and loads it on a fresh CPU backend.
func (ts tinySpec) load(t *testing.T) *model.Model {
	t.Helper()
	m, err := model.Load(ts.write(t), cpu.New())
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(m.Close)
	return m
}

// newAdapter returns an all-linear adapter of rank r with A from PEFT's init and, when bStd > 0,
// B drawn from N(0, bStd²) so that A's gradients are not trivially zero.
func newAdapter(t testing.TB, c *model.Config, r int, alpha, bStd float64, seed uint64) *lora.Adapter {
	t.Helper()
	rng := rand.New(rand.NewPCG(seed, 11))
	a, err := lora.New(lora.Config{R: r, Alpha: alpha}, lora.Modules(c), lora.InitDefault, rng)
	if err != nil {
		t.Fatal(err)
	}
	if bStd > 0 {
		for _, p := range a.Pairs {
			for i := range p.B {
				p.B[i] = float32(bStd * rng.NormFloat64())
			}
		}
	}
	return a
}

// cloneAdapter deep-copies a so that two engines do not share host parameters.
func cloneAdapter(a *lora.Adapter) *lora.Adapter {
	c := &lora.Adapter{Config: a.Config}
	for _, p := range a.Pairs {
		c.Pairs = append(c.Pairs, &lora.Pair{Module: p.Module, A: slices.Clone(p.A), B: slices.Clone(p.B), R: p.R, Alpha: p.Alpha})
	}
	return c
}

// newEngine builds an engine and closes it at the end of the test.
func newEngine(t *testing.T, m *model.Model, a *lora.Adapter, opt Options) *Engine {
	t.Helper()
	e, err := New(m, a, opt)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(e.Close)
	return e
}

// randomBatch returns B rows of T random tokens with next-token targets (the last target of
// each row and about one in eight others ignored).
func randomBatch(rng *rand.Rand, V, B, T int) Batch {
	b := Batch{B: B, T: T, Tokens: make([]int, B*T), Targets: make([]int, B*T)}
	for i := range b.Tokens {
		b.Tokens[i] = rng.IntN(V)
	}
	for i := range b.Targets {
		switch {
		case i%T == T-1 || rng.IntN(8) == 0:
			b.Targets[i] = backend.IgnoreIndex
		default:
			b.Targets[i] = b.Tokens[i+1]
		}
	}
	return b
}

// packedBatch puts two samples of lengths n1 and n2 into one row with segment ids and
// restarted positions (B = 1, T = n1+n2), and returns it with the same samples as two
// right-padded rows (B = 2, T = max(n1, n2)), the padding ignored.
func packedBatch(rng *rand.Rand, V, n1, n2 int) (packed, unpacked Batch) {
	s1, s2 := randomBatch(rng, V, 1, n1), randomBatch(rng, V, 1, n2)
	T := n1 + n2
	packed = Batch{B: 1, T: T,
		Tokens: slices.Concat(s1.Tokens, s2.Tokens), Targets: slices.Concat(s1.Targets, s2.Targets),
		Positions: make([]int, T), Segments: make([]int, T)}
	for i := range T {
		if i < n1 {
			packed.Positions[i] = i
		} else {
			packed.Positions[i], packed.Segments[i] = i-n1, 1
		}
	}
	W := max(n1, n2)
	unpacked = Batch{B: 2, T: W, Tokens: make([]int, 2*W), Targets: make([]int, 2*W)}
	for row, s := range []Batch{s1, s2} {
		for i := range W {
			if i < s.T {
				unpacked.Tokens[row*W+i], unpacked.Targets[row*W+i] = s.Tokens[i], s.Targets[i]
			} else {
				unpacked.Tokens[row*W+i], unpacked.Targets[row*W+i] = 0, backend.IgnoreIndex
			}
		}
	}
	return packed, unpacked
}

// grads runs one zeroed ForwardBackward with scale 1 and returns a copy of every gradient.
func grads(t *testing.T, e *Engine, b Batch) (float64, [][]float32) {
	t.Helper()
	e.ZeroGrads()
	loss, _, err := e.ForwardBackward(b, 1)
	if err != nil {
		t.Fatal(err)
	}
	if err := e.SyncGrads(); err != nil {
		t.Fatal(err)
	}
	var g [][]float32
	for _, p := range e.Params() {
		g = append(g, slices.Clone(p.Grad))
	}
	return loss, g
}

// maxDiff returns the largest |a−b| over two gradient sets and the largest |a|.
func maxDiff(a, b [][]float32) (diff, scale float64) {
	for i := range a {
		for j := range a[i] {
			diff = max(diff, math.Abs(float64(a[i][j])-float64(b[i][j])))
			scale = max(scale, math.Abs(float64(a[i][j])))
		}
	}
	return diff, scale
}
