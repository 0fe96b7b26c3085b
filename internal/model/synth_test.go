package model

import (
	"encoding/json"
	"fmt"
	"math"
	"math/rand/v2"
	"os"
	"path/filepath"
	"slices"
	"testing"

	"github.com/loractl/loractl/internal/backend/cpu"
	"github.com/loractl/loractl/internal/safetensors"
)

// tiny describes a synthetic checkpoint for tests.
type tiny struct {
	modelType               string
	C, F, L, NH, NKV, D, V  int
	tied, attnBias, mlpBias bool
	theta                   float64
	ropeScaling             map[string]any // nil: none
	dtype                   safetensors.DType
	seed                    uint64
}

// configJSON returns the config.json object for tc.
func (tc tiny) configJSON() map[string]any {
	c := map[string]any{
		"model_type":              tc.modelType,
		"hidden_size":             tc.C,
		"intermediate_size":       tc.F,
		"num_hidden_layers":       tc.L,
		"num_attention_heads":     tc.NH,
		"num_key_value_heads":     tc.NKV,
		"head_dim":                tc.D,
		"vocab_size":              tc.V,
		"rms_norm_eps":            1e-6,
		"rope_theta":              tc.theta,
		"rope_scaling":            tc.ropeScaling,
		"max_position_embeddings": 64,
		"tie_word_embeddings":     tc.tied,
		"attention_bias":          tc.attnBias,
		"hidden_act":              "silu",
		"bos_token_id":            1,
		"eos_token_id":            []int{2, 3},
		"torch_dtype":             "float32",
	}
	if tc.mlpBias {
		c["mlp_bias"] = true
	}
	return c
}

// tensors returns random weights for tc under their checkpoint names, already rounded to
// tc.dtype, so they are exactly what a loader must produce.
func (tc tiny) tensors(t *testing.T) (map[string][]float32, map[string][]int) {
	r := rand.New(rand.NewPCG(tc.seed, 99))
	w := map[string][]float32{}
	shapes := map[string][]int{}
	add := func(name string, scale, offset float64, shape ...int) {
		n := 1
		for _, d := range shape {
			n *= d
		}
		v := make([]float32, n) // shape
		for i := range v {
			v[i] = float32(offset + scale*r.NormFloat64())
		}
		if tc.dtype != "" && tc.dtype != safetensors.F32 {
			raw, err := safetensors.EncodeFloat32(tc.dtype, v)
			if err != nil {
				t.Fatal(err)
			}
			if v, err = safetensors.DecodeFloat32(tc.dtype, raw); err != nil {
				t.Fatal(err)
			}
		}
		w[name], shapes[name] = v, shape
	}
	Q, KV := tc.NH*tc.D, tc.NKV*tc.D
	add("model.embed_tokens.weight", 1, 0, tc.V, tc.C)
	for l := 0; l < tc.L; l++ {
		p := fmt.Sprintf("model.layers.%d.", l)
		add(p+"input_layernorm.weight", 0.1, 1, tc.C)
		add(p+"post_attention_layernorm.weight", 0.1, 1, tc.C)
		add(p+"self_attn.q_proj.weight", 1/math.Sqrt(float64(tc.C)), 0, Q, tc.C)
		add(p+"self_attn.k_proj.weight", 1/math.Sqrt(float64(tc.C)), 0, KV, tc.C)
		add(p+"self_attn.v_proj.weight", 1/math.Sqrt(float64(tc.C)), 0, KV, tc.C)
		add(p+"self_attn.o_proj.weight", 1/math.Sqrt(float64(Q)), 0, tc.C, Q)
		add(p+"mlp.gate_proj.weight", 1/math.Sqrt(float64(tc.C)), 0, tc.F, tc.C)
		add(p+"mlp.up_proj.weight", 1/math.Sqrt(float64(tc.C)), 0, tc.F, tc.C)
		add(p+"mlp.down_proj.weight", 1/math.Sqrt(float64(tc.F)), 0, tc.C, tc.F)
		if tc.modelType == "qwen2" || (tc.attnBias && tc.modelType != "mistral") {
			add(p+"self_attn.q_proj.bias", 0.3, 0, Q)
			add(p+"self_attn.k_proj.bias", 0.3, 0, KV)
			add(p+"self_attn.v_proj.bias", 0.3, 0, KV)
		}
		if tc.attnBias && (tc.modelType == "llama" || tc.modelType == "qwen3") {
			add(p+"self_attn.o_proj.bias", 0.3, 0, tc.C)
		}
		if tc.modelType == "qwen3" {
			add(p+"self_attn.q_norm.weight", 0.2, 1, tc.D)
			add(p+"self_attn.k_norm.weight", 0.2, 1, tc.D)
		}
		if tc.mlpBias {
			add(p+"mlp.gate_proj.bias", 0.3, 0, tc.F)
			add(p+"mlp.up_proj.bias", 0.3, 0, tc.F)
			add(p+"mlp.down_proj.bias", 0.3, 0, tc.C)
		}
	}
	add("model.norm.weight", 0.1, 1, tc.C)
	if !tc.tied {
		add("lm_head.weight", 1/math.Sqrt(float64(tc.C)), 0, tc.V, tc.C)
	}
	return w, shapes
}

// writeModel writes config.json and model.safetensors for cfg and weights into dir.
func writeModel(t *testing.T, dir string, cfg map[string]any, w map[string][]float32, shapes map[string][]int, dt safetensors.DType) {
	t.Helper()
	js, err := json.MarshalIndent(cfg, "", "  ")
	if err != nil {
		t.Fatal(err)
	}
	if err := os.WriteFile(filepath.Join(dir, "config.json"), js, 0o644); err != nil {
		t.Fatal(err)
	}
	if dt == "" {
		dt = safetensors.F32
	}
	var ts []safetensors.Tensor
	for name, v := range w {
		raw, err := safetensors.EncodeFloat32(dt, v)
		if err != nil {
			t.Fatal(err)
		}
		ts = append(ts, safetensors.Tensor{Name: name, DType: dt, Shape: shapes[name], Data: raw})
	}
	if err := safetensors.Write(filepath.Join(dir, "model.safetensors"), ts, map[string]string{"format": "pt"}); err != nil {
		t.Fatal(err)
	}
}

// build writes tc to a temp dir and returns the dir and the (rounded) weights.
func (tc tiny) build(t *testing.T) (string, map[string][]float32) {
	t.Helper()
	dir := t.TempDir()
	w, shapes := tc.tensors(t)
	writeModel(t, dir, tc.configJSON(), w, shapes, tc.dtype)
	return dir, w
}

// refInvFreq64 is an independent float64 transcription of transformers' inverse frequencies
// (default, "linear", and Meta's llama3 apply_scaling).
func refInvFreq64(D int, theta float64, rs map[string]any) []float64 {
	f := make([]float64, D/2) // (D/2,)
	for i := range f {
		f[i] = math.Pow(theta, -float64(2*i)/float64(D))
	}
	if rs == nil {
		return f
	}
	num := func(k string) float64 { return rs[k].(float64) }
	typ := rs["rope_type"]
	if typ == nil {
		typ = rs["type"] // legacy key
	}
	switch typ {
	case "linear":
		for i := range f {
			f[i] /= num("factor")
		}
	case "llama3":
		factor, lo, hi, old := num("factor"), num("low_freq_factor"), num("high_freq_factor"), num("original_max_position_embeddings")
		for i, freq := range f {
			wl := 2 * math.Pi / freq
			if wl < old/hi {
				continue // high frequency: unchanged
			}
			if wl > old/lo {
				f[i] = freq / factor // low frequency: interpolated positions
				continue
			}
			a := (old/wl - lo) / (hi - lo)
			f[i] = (1-a)*freq/factor + a*freq
		}
	}
	return f
}

// refForward is an independent, naive float64 forward of the Hugging Face Llama/Mistral/
// Qwen2/Qwen3 architecture over the full sequence (no cache). It returns (T, V) logits.
func refForward(tc tiny, w map[string][]float32, tokens []int) []float64 {
	T, C, F, NH, NKV, D, V := len(tokens), tc.C, tc.F, tc.NH, tc.NKV, tc.D, tc.V
	Q, KV := NH*D, NKV*D
	get := func(name string) []float32 { return w[name] } // nil when absent
	rms := func(x []float64, g []float32) []float64 {
		ss := 0.0
		for _, v := range x {
			ss += v * v
		}
		s := 1 / math.Sqrt(ss/float64(len(x))+1e-6)
		out := make([]float64, len(x))
		for i := range x {
			out[i] = x[i] * s * float64(g[i])
		}
		return out
	}
	linear := func(x []float64, W, b []float32, out int) []float64 {
		y := make([]float64, out) // (out,)
		in := len(x)
		for o := 0; o < out; o++ {
			s := 0.0
			if b != nil {
				s = float64(b[o])
			}
			for i := 0; i < in; i++ {
				s += x[i] * float64(W[o*in+i])
			}
			y[o] = s
		}
		return y
	}
	inv := refInvFreq64(D, tc.theta, tc.ropeScaling)
	rope := func(x []float64, pos int) { // one head (D,), rotate_half
		for i := 0; i < D/2; i++ {
			th := float64(pos) * inv[i]
			a, b := x[i], x[i+D/2]
			x[i] = a*math.Cos(th) - b*math.Sin(th)
			x[i+D/2] = b*math.Cos(th) + a*math.Sin(th)
		}
	}

	x := make([][]float64, T) // (T, C)
	emb := get("model.embed_tokens.weight")
	for t, id := range tokens {
		x[t] = make([]float64, C)
		for c := 0; c < C; c++ {
			x[t][c] = float64(emb[id*C+c])
		}
	}
	for l := 0; l < tc.L; l++ {
		p := fmt.Sprintf("model.layers.%d.", l)
		q := make([][]float64, T) // (T, Q)
		k := make([][]float64, T) // (T, KV)
		v := make([][]float64, T) // (T, KV)
		for t := 0; t < T; t++ {
			h := rms(x[t], get(p+"input_layernorm.weight"))
			q[t] = linear(h, get(p+"self_attn.q_proj.weight"), get(p+"self_attn.q_proj.bias"), Q)
			k[t] = linear(h, get(p+"self_attn.k_proj.weight"), get(p+"self_attn.k_proj.bias"), KV)
			v[t] = linear(h, get(p+"self_attn.v_proj.weight"), get(p+"self_attn.v_proj.bias"), KV)
			for hh := 0; hh < NH; hh++ {
				if qn := get(p + "self_attn.q_norm.weight"); qn != nil {
					copy(q[t][hh*D:(hh+1)*D], rms(q[t][hh*D:(hh+1)*D], qn))
				}
				rope(q[t][hh*D:(hh+1)*D], t)
			}
			for hh := 0; hh < NKV; hh++ {
				if kn := get(p + "self_attn.k_norm.weight"); kn != nil {
					copy(k[t][hh*D:(hh+1)*D], rms(k[t][hh*D:(hh+1)*D], kn))
				}
				rope(k[t][hh*D:(hh+1)*D], t)
			}
		}
		for t := 0; t < T; t++ {
			att := make([]float64, Q) // (NH·D,)
			for hh := 0; hh < NH; hh++ {
				kh := hh / (NH / NKV) // repeat_kv
				sc := make([]float64, t+1)
				mx := math.Inf(-1)
				for s := 0; s <= t; s++ {
					d := 0.0
					for i := 0; i < D; i++ {
						d += q[t][hh*D+i] * k[s][kh*D+i]
					}
					sc[s] = d / math.Sqrt(float64(D))
					mx = max(mx, sc[s])
				}
				sum := 0.0
				for s := range sc {
					sc[s] = math.Exp(sc[s] - mx)
					sum += sc[s]
				}
				for s := range sc {
					for i := 0; i < D; i++ {
						att[hh*D+i] += sc[s] / sum * v[s][kh*D+i]
					}
				}
			}
			o := linear(att, get(p+"self_attn.o_proj.weight"), get(p+"self_attn.o_proj.bias"), C)
			for c := range o {
				x[t][c] += o[c]
			}
			h := rms(x[t], get(p+"post_attention_layernorm.weight"))
			g := linear(h, get(p+"mlp.gate_proj.weight"), get(p+"mlp.gate_proj.bias"), F)
			u := linear(h, get(p+"mlp.up_proj.weight"), get(p+"mlp.up_proj.bias"), F)
			for i := range g {
				g[i] = g[i] / (1 + math.Exp(-g[i])) * u[i]
			}
			d := linear(g, get(p+"mlp.down_proj.weight"), get(p+"mlp.down_proj.bias"), C)
			for c := range d {
				x[t][c] += d[c]
			}
		}
	}
	head := get("lm_head.weight")
	if head == nil {
		head = emb
	}
	logits := make([]float64, 0, T*V) // (T, V)
	for t := 0; t < T; t++ {
		logits = append(logits, linear(rms(x[t], get("model.norm.weight")), head, nil, V)...)
	}
	return logits
}

// randomTokens returns n seeded token ids in [0, V).
func randomTokens(seed uint64, n, V int) []int {
	r := rand.New(rand.NewPCG(seed, 7))
	ids := make([]int, n)
	for i := range ids {
		ids[i] = r.IntN(V)
	}
	return ids
}

// llama3Scaling is a Llama 3.1-style rope_scaling that, with theta 500000 and D 16, puts
// frequencies in all three regimes (unchanged, divided by factor, interpolated).
var llama3Scaling = map[string]any{
	"rope_type": "llama3", "factor": 8.0, "low_freq_factor": 1.0, "high_freq_factor": 4.0,
	"original_max_position_embeddings": 8192.0,
}

var tinyCases = []struct {
	name string
	tc   tiny
}{
	{"llama_mha_tied", tiny{modelType: "llama", C: 32, F: 48, L: 2, NH: 4, NKV: 4, D: 8, V: 50, tied: true, theta: 10000, seed: 1}},
	{"llama_gqa4_untied_bias", tiny{modelType: "llama", C: 32, F: 40, L: 2, NH: 8, NKV: 2, D: 4, V: 61, attnBias: true, mlpBias: true, theta: 10000, seed: 2}},
	{"llama_linear_rope", tiny{modelType: "llama", C: 24, F: 40, L: 1, NH: 2, NKV: 1, D: 12, V: 40, tied: true, theta: 10000,
		ropeScaling: map[string]any{"type": "linear", "factor": 4.0}, seed: 3}},
	{"llama_llama3_rope", tiny{modelType: "llama", C: 32, F: 40, L: 2, NH: 2, NKV: 1, D: 16, V: 45, theta: 500000, ropeScaling: llama3Scaling, seed: 4}},
	{"mistral_gqa2", tiny{modelType: "mistral", C: 32, F: 64, L: 2, NH: 4, NKV: 2, D: 8, V: 53, theta: 1e6, attnBias: true, seed: 5}},
	{"qwen2_bias_gqa3", tiny{modelType: "qwen2", C: 36, F: 56, L: 2, NH: 6, NKV: 2, D: 6, V: 70, tied: true, theta: 1e6, seed: 6}},
	{"qwen3_qknorm", tiny{modelType: "qwen3", C: 32, F: 48, L: 2, NH: 4, NKV: 2, D: 16, V: 64, tied: true, theta: 1e6, seed: 7}}, // D ≠ C/NH
	{"qwen3_qknorm_bias", tiny{modelType: "qwen3", C: 32, F: 48, L: 2, NH: 4, NKV: 1, D: 8, V: 64, attnBias: true, theta: 1e6, seed: 8}},
}

func TestSyntheticForwardMatchesReference(t *testing.T) {
	for _, c := range tinyCases {
		t.Run(c.name, func(t *testing.T) {
			dir, w := c.tc.build(t)
			m, err := Load(dir, cpu.New())
			if err != nil {
				t.Fatal(err)
			}
			defer m.Close()
			tokens := randomTokens(c.tc.seed, 13, c.tc.V)
			got, err := m.ForwardAll(tokens)
			if err != nil {
				t.Fatal(err)
			}
			want := refForward(c.tc, w, tokens)
			var diff, scale float64
			for i := range want {
				diff = max(diff, math.Abs(float64(got[i])-want[i]))
				scale = max(scale, math.Abs(want[i]))
			}
			t.Logf("%s: max|Δ| = %.3g, max|ref| = %.3g", c.name, diff, scale)
			if diff > 1e-4*scale {
				t.Fatalf("logits differ from the float64 reference: max|Δ| %.3g > 1e-4·%.3g", diff, scale)
			}

			// Incremental: prefill 5, then one at a time; must match the full forward.
			V := c.tc.V
			kc := m.NewKVCache(len(tokens))
			defer kc.Close()
			for t0 := 0; t0 < len(tokens); {
				n := 1
				if t0 == 0 {
					n = 5
				}
				step, err := m.Step(kc, tokens[t0:t0+n])
				if err != nil {
					t.Fatal(err)
				}
				t0 += n
				d, _ := maxAbsDiff(step, got[(t0-1)*V:t0*V])
				if d > 1e-6*scale {
					t.Fatalf("Step at position %d differs from ForwardAll by %.3g", t0-1, d)
				}
			}
			if kc.Len() != len(tokens) {
				t.Errorf("cache length %d after %d tokens", kc.Len(), len(tokens))
			}
		})
	}
}

func TestRoPEInvFreq(t *testing.T) {
	for _, c := range []struct {
		name  string
		D     int
		theta float64
		rs    map[string]any
	}{
		{"default", 64, 10000, nil},
		{"linear", 32, 10000, map[string]any{"rope_type": "linear", "factor": 2.5}},
		{"llama3_8B", 128, 500000, llama3Scaling},
		{"llama3_1B", 64, 500000, map[string]any{"rope_type": "llama3", "factor": 32.0, "low_freq_factor": 1.0,
			"high_freq_factor": 4.0, "original_max_position_embeddings": 8192.0}},
	} {
		t.Run(c.name, func(t *testing.T) {
			js, _ := json.Marshal(map[string]any{
				"model_type": "llama", "hidden_size": c.D * 4, "intermediate_size": 8, "num_hidden_layers": 1,
				"num_attention_heads": 4, "vocab_size": 10, "rope_theta": c.theta, "rope_scaling": c.rs,
				"max_position_embeddings": 131072,
			})
			cfg, err := ParseConfig(js, "test/config.json")
			if err != nil {
				t.Fatal(err)
			}
			got := cfg.RoPEInvFreq()
			want := refInvFreq64(c.D, c.theta, c.rs)
			if len(got) != len(want) {
				t.Fatalf("%d frequencies, want %d", len(got), len(want))
			}
			var regimes [3]int // unchanged, divided, interpolated (llama3 only)
			base := refInvFreq64(c.D, c.theta, nil)
			for i := range want {
				if d := math.Abs(float64(got[i]) - want[i]); d > 1e-7*want[i] {
					t.Errorf("inv_freq[%d] = %.9g, want %.9g", i, got[i], want[i])
				}
				switch {
				case want[i] == base[i]:
					regimes[0]++
				case c.rs != nil && math.Abs(want[i]*c.rs["factor"].(float64)-base[i]) < 1e-12*base[i]:
					regimes[1]++
				default:
					regimes[2]++
				}
			}
			if c.rs != nil && c.rs["rope_type"] == "llama3" && (regimes[0] == 0 || regimes[1] == 0 || regimes[2] == 0) {
				t.Errorf("llama3 case should exercise all three regimes, got unchanged/divided/interpolated = %v", regimes)
			}
			t.Logf("unchanged/divided/interpolated = %v", regimes)
		})
	}
}

func TestLoadDTypes(t *testing.T) {
	base := tinyCases[1].tc // untied, biases: every kind of tensor
	dir32, w32 := base.build(t)
	m32, err := Load(dir32, cpu.New())
	if err != nil {
		t.Fatal(err)
	}
	defer m32.Close()
	for _, dt := range []safetensors.DType{safetensors.BF16, safetensors.F16} {
		t.Run(string(dt), func(t *testing.T) {
			tc := base
			tc.dtype = dt
			dir, want := tc.build(t) // same seed: the F32 weights rounded to dt
			m, err := Load(dir, cpu.New())
			if err != nil {
				t.Fatal(err)
			}
			defer m.Close()
			changed := 0
			for _, s := range m.specs() {
				got := (*s.dst).(*cpu.Buffer).Data()
				if !slices.Equal(got, want[s.name]) {
					t.Fatalf("%s: loaded %s values differ from the rounded float32 weights", s.name, dt)
				}
				if !slices.Equal(got, w32[s.name]) {
					changed++
				}
			}
			if changed == 0 {
				t.Fatalf("no tensor changed by %s rounding: the test is not exercising the conversion", dt)
			}
			// And the model runs on the rounded weights like the reference does.
			tokens := randomTokens(11, 7, tc.V)
			got, err := m.ForwardAll(tokens)
			if err != nil {
				t.Fatal(err)
			}
			ref := refForward(tc, want, tokens)
			var diff, scale float64
			for i := range ref {
				diff = max(diff, math.Abs(float64(got[i])-ref[i]))
				scale = max(scale, math.Abs(ref[i]))
			}
			if diff > 1e-4*scale {
				t.Fatalf("%s model: max|Δ| %.3g vs float64 reference", dt, diff)
			}
		})
	}
}

func TestTiedEqualsUntiedCopy(t *testing.T) {
	tc := tinyCases[0].tc // tied
	dirTied, w := tc.build(t)
	untied := tc
	untied.tied = false
	dirUntied := t.TempDir()
	_, shapes := tc.tensors(t)
	w2 := map[string][]float32{}
	for k, v := range w {
		w2[k] = v
	}
	w2["lm_head.weight"] = w["model.embed_tokens.weight"]
	shapes["lm_head.weight"] = []int{tc.V, tc.C}
	writeModel(t, dirUntied, untied.configJSON(), w2, shapes, safetensors.F32)

	tokens := randomTokens(5, 9, tc.V)
	var out [2][]float32
	for i, dir := range []string{dirTied, dirUntied} {
		m, err := Load(dir, cpu.New())
		if err != nil {
			t.Fatal(err)
		}
		if out[i], err = m.ForwardAll(tokens); err != nil {
			t.Fatal(err)
		}
		m.Close()
	}
	if !slices.Equal(out[0], out[1]) {
		t.Fatal("tied model and untied model with lm_head = embed_tokens give different logits")
	}
}
