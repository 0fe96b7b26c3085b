package model

import (
	"encoding/json"
	"os"
	"path/filepath"
	"strings"
	"testing"

	"github.com/loractl/loractl/internal/backend/cpu"
)

// wantErr fails unless err is non-nil and contains every substring.
func wantErr(t *testing.T, err error, subs ...string) {
	t.Helper()
	if err == nil {
		t.Fatalf("got no error, want one containing %q", subs)
	}
	for _, s := range subs {
		if !strings.Contains(err.Error(), s) {
			t.Errorf("error %q does not contain %q", err, s)
		}
	}
}

func TestLoadErrors(t *testing.T) {
	tc := tinyCases[1].tc // untied, with biases
	w, shapes := tc.tensors(t)

	t.Run("missing config.json", func(t *testing.T) {
		dir := t.TempDir()
		_, err := Load(dir, cpu.New())
		wantErr(t, err, filepath.Join(dir, "config.json"), "no config.json in model directory "+dir)
	})

	t.Run("unsupported model_type", func(t *testing.T) {
		dir := t.TempDir()
		cfg := tc.configJSON()
		cfg["model_type"] = "gpt_neox"
		writeModel(t, dir, cfg, w, shapes, "")
		_, err := Load(dir, cpu.New())
		wantErr(t, err, filepath.Join(dir, "config.json")+`: model_type "gpt_neox" is not supported (supported: llama, mistral, qwen2, qwen3)`)
	})

	t.Run("missing tensors", func(t *testing.T) {
		dir := t.TempDir()
		w2 := map[string][]float32{}
		for k, v := range w {
			if !strings.HasPrefix(k, "model.layers.1.") && k != "model.norm.weight" {
				w2[k] = v
			}
		}
		writeModel(t, dir, tc.configJSON(), w2, shapes, "")
		_, err := Load(dir, cpu.New())
		missing := len(w) - len(w2)
		wantErr(t, err, filepath.Join(dir, "model.safetensors"), "tensors missing",
			"model.layers.1.input_layernorm.weight", "("+itoa(missing-10)+" more)")
		if !strings.Contains(err.Error(), itoa(missing)+" of "+itoa(len(w))) {
			t.Errorf("error %q does not say %d of %d tensors are missing", err, missing, len(w))
		}
	})

	t.Run("untied without lm_head", func(t *testing.T) {
		dir := t.TempDir()
		w2 := map[string][]float32{}
		for k, v := range w {
			if k != "lm_head.weight" {
				w2[k] = v
			}
		}
		writeModel(t, dir, tc.configJSON(), w2, shapes, "")
		_, err := Load(dir, cpu.New())
		wantErr(t, err, "1 of", "lm_head.weight", "tie_word_embeddings")
	})

	t.Run("wrong shape", func(t *testing.T) {
		dir := t.TempDir()
		s2 := map[string][]int{}
		for k, v := range shapes {
			s2[k] = v
		}
		name := "model.layers.0.self_attn.k_proj.weight" // (NKV·D, C) = (8, 32); write it as (32, 8)
		s2[name] = []int{tc.C, tc.NKV * tc.D}
		writeModel(t, dir, tc.configJSON(), w, s2, "")
		_, err := Load(dir, cpu.New())
		wantErr(t, err, name+" has shape [32 8], want [8 32]", "config.json")
	})
}

func itoa(n int) string { b, _ := json.Marshal(n); return string(b) }

func TestConfigErrors(t *testing.T) {
	base := func() map[string]any { return tinyCases[0].tc.configJSON() }
	for _, c := range []struct {
		name   string
		edit   func(m map[string]any)
		substr []string
	}{
		{"unknown rope type", func(m map[string]any) { m["rope_scaling"] = map[string]any{"rope_type": "yarn", "factor": 4.0} },
			[]string{`rope_scaling: type "yarn" is not supported (supported: default, linear, llama3)`}},
		{"rope type missing", func(m map[string]any) { m["rope_scaling"] = map[string]any{"factor": 4.0} },
			[]string{"rope_scaling: no rope_type"}},
		{"llama3 missing field", func(m map[string]any) {
			m["rope_scaling"] = map[string]any{"rope_type": "llama3", "factor": 8.0, "low_freq_factor": 1.0, "high_freq_factor": 4.0}
		}, []string{`"original_max_position_embeddings"`}},
		{"heads do not divide", func(m map[string]any) { m["num_key_value_heads"] = 3 },
			[]string{"num_attention_heads 4 is not a multiple of num_key_value_heads 3"}},
		{"hidden not divisible", func(m map[string]any) { delete(m, "head_dim"); m["hidden_size"] = 30 },
			[]string{"hidden_size 30 is not divisible by num_attention_heads 4"}},
		{"odd head_dim", func(m map[string]any) { m["head_dim"] = 7 }, []string{"head_dim must be a positive even number"}},
		{"missing vocab", func(m map[string]any) { delete(m, "vocab_size") }, []string{"missing required field vocab_size"}},
		{"zero layers", func(m map[string]any) { m["num_hidden_layers"] = 0 }, []string{"num_hidden_layers must be positive"}},
		{"gelu", func(m map[string]any) { m["hidden_act"] = "gelu" }, []string{`hidden_act "gelu" is not supported`}},
		{"eos out of vocab", func(m map[string]any) { m["eos_token_id"] = 999 }, []string{"eos_token_id 999 is outside the vocabulary"}},
		{"eos not a number", func(m map[string]any) { m["eos_token_id"] = "x" }, []string{"eos_token_id: want an integer or a list"}},
		{"no model_type", func(m map[string]any) { delete(m, "model_type") }, []string{"no model_type field"}},
	} {
		t.Run(c.name, func(t *testing.T) {
			m := base()
			c.edit(m)
			js, _ := json.Marshal(m)
			_, err := ParseConfig(js, "/x/config.json")
			wantErr(t, err, append([]string{"/x/config.json: "}, c.substr...)...)
		})
	}
	_, err := ParseConfig([]byte("{not json"), "/x/config.json")
	wantErr(t, err, "/x/config.json: not a valid config.json")
}

func TestConfigDefaults(t *testing.T) {
	for _, c := range []struct {
		name  string
		js    string
		check func(t *testing.T, c *Config)
	}{
		{"llama minimal", `{"model_type":"llama","hidden_size":64,"intermediate_size":8,"num_hidden_layers":2,"num_attention_heads":8,"vocab_size":10}`,
			func(t *testing.T, c *Config) {
				if c.NumKeyValueHeads != 8 || c.HeadDim != 8 || c.RopeTheta != 10000 || c.RopeScaling != nil ||
					c.BOSTokenID != -1 || c.EOSTokenIDs != nil || c.TieWordEmbeddings || c.MaxPositionEmbeddings != 2048 {
					t.Errorf("defaults: %+v", c)
				}
			}},
		{"eos list, legacy rope type", `{"model_type":"llama","hidden_size":64,"intermediate_size":8,"num_hidden_layers":2,"num_attention_heads":8,
			"vocab_size":200000,"eos_token_id":[128001,128008,128009],"bos_token_id":128000,"rope_scaling":{"type":"linear","factor":2}}`,
			func(t *testing.T, c *Config) {
				if len(c.EOSTokenIDs) != 3 || c.EOSTokenIDs[2] != 128009 || c.BOSTokenID != 128000 ||
					c.RopeScaling == nil || c.RopeScaling.Type != "linear" || c.RopeScaling.Factor != 2 {
					t.Errorf("got %+v, scaling %+v", c, c.RopeScaling)
				}
			}},
		{"default rope type, null ids", `{"model_type":"qwen2","hidden_size":64,"intermediate_size":8,"num_hidden_layers":2,"num_attention_heads":8,
			"num_key_value_heads":2,"vocab_size":10,"rope_scaling":{"rope_type":"default"},"eos_token_id":null,"bos_token_id":null,
			"sliding_window":4096,"use_sliding_window":false,"dtype":"bfloat16"}`,
			func(t *testing.T, c *Config) {
				if c.RopeScaling != nil || c.EOSTokenIDs != nil || c.BOSTokenID != -1 || c.SlidingWindow != 0 ||
					!c.QKVBias() || c.OBias() || c.QKNorm() || c.TorchDType != "bfloat16" || c.MaxPositionEmbeddings != 32768 {
					t.Errorf("got %+v", c)
				}
			}},
		{"mistral window", `{"model_type":"mistral","hidden_size":64,"intermediate_size":8,"num_hidden_layers":2,"num_attention_heads":8,
			"vocab_size":10,"sliding_window":4096,"attention_bias":true}`,
			func(t *testing.T, c *Config) {
				if c.SlidingWindow != 4096 || c.QKVBias() || c.OBias() {
					t.Errorf("got %+v", c)
				}
			}},
		{"qwen3 head_dim", `{"model_type":"qwen3","hidden_size":64,"intermediate_size":8,"num_hidden_layers":2,"num_attention_heads":8,
			"num_key_value_heads":4,"head_dim":16,"vocab_size":10,"attention_bias":false}`,
			func(t *testing.T, c *Config) {
				if c.HeadDim != 16 || c.QDim() != 128 || c.KVDim() != 64 || !c.QKNorm() || c.QKVBias() {
					t.Errorf("got %+v", c)
				}
			}},
	} {
		t.Run(c.name, func(t *testing.T) {
			cfg, err := ParseConfig([]byte(c.js), "config.json")
			if err != nil {
				t.Fatal(err)
			}
			c.check(t, cfg)
		})
	}
}

func TestConfigFilePath(t *testing.T) {
	dir := t.TempDir()
	js, _ := json.Marshal(tinyCases[0].tc.configJSON())
	path := filepath.Join(dir, "config.json")
	if err := os.WriteFile(path, js, 0o644); err != nil {
		t.Fatal(err)
	}
	for _, p := range []string{dir, path} {
		c, err := LoadConfig(p)
		if err != nil {
			t.Fatal(err)
		}
		if c.Path != path {
			t.Errorf("LoadConfig(%s).Path = %s, want %s", p, c.Path, path)
		}
	}
}

func TestNumParamsMatchesCheckpoint(t *testing.T) {
	for _, c := range tinyCases {
		w, _ := c.tc.tensors(t)
		var n int64
		for _, v := range w {
			n += int64(len(v))
		}
		js, _ := json.Marshal(c.tc.configJSON())
		cfg, err := ParseConfig(js, "config.json")
		if err != nil {
			t.Fatal(err)
		}
		if got := cfg.NumParams(); got != n {
			t.Errorf("%s: NumParams = %d, checkpoint has %d", c.name, got, n)
		}
	}
}

func TestForwardErrors(t *testing.T) {
	dir, _ := tinyCases[0].tc.build(t) // V = 50, max_position_embeddings 64
	m, err := Load(dir, cpu.New())
	if err != nil {
		t.Fatal(err)
	}
	defer m.Close()

	_, err = m.ForwardAll([]int{1, 50})
	wantErr(t, err, "token 50 (at index 1) is outside the vocabulary [0, 50)")
	_, err = m.ForwardAll([]int{1, -1})
	wantErr(t, err, "token -1")
	_, err = m.ForwardAll(nil)
	wantErr(t, err, "no tokens")
	_, err = m.ForwardAll(make([]int, 65))
	wantErr(t, err, "65 tokens exceed max_position_embeddings 64")

	c := m.NewKVCache(4)
	if _, err := m.Step(c, []int{1, 2, 3}); err != nil {
		t.Fatal(err)
	}
	_, err = m.Step(c, []int{4, 5})
	wantErr(t, err, "3 cached positions + 2 new tokens exceed the KV cache capacity 4")
	c.Close()
	_, err = m.Step(c, []int{1})
	wantErr(t, err, "closed")
	if big := m.NewKVCache(0); big.Cap() != 64 {
		t.Errorf("NewKVCache(0).Cap() = %d, want max_position_embeddings 64", big.Cap())
	}
}
