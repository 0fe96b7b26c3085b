package inspect

import (
	"bytes"
	"encoding/json"
	"os"
	"path/filepath"
	"strings"
	"testing"

	"github.com/loractl/loractl/internal/safetensors"
)

func tensor(t *testing.T, name string, dt safetensors.DType, shape ...int) safetensors.Tensor {
	t.Helper()
	n := 1
	for _, d := range shape {
		n *= d
	}
	vals := make([]float32, n)
	for i := range vals {
		vals[i] = float32(i%7) - 3.5
	}
	data, err := safetensors.EncodeFloat32(dt, vals)
	if err != nil {
		t.Fatal(err)
	}
	return safetensors.Tensor{Name: name, DType: dt, Shape: shape, Data: data}
}

func writeJSON(t *testing.T, path string, v any) {
	t.Helper()
	b, _ := json.Marshal(v)
	if err := os.WriteFile(path, b, 0o644); err != nil {
		t.Fatal(err)
	}
}

// TestAdapterFolder builds a PEFT-layout adapter and checks the report.
func TestAdapterFolder(t *testing.T) {
	dir := t.TempDir()
	writeJSON(t, filepath.Join(dir, "adapter_config.json"), map[string]any{
		"peft_type": "LORA", "r": 8, "lora_alpha": 16, "target_modules": []string{"q_proj", "v_proj"},
		"base_model_name_or_path": "stories260K",
	})
	ts := []safetensors.Tensor{
		tensor(t, "base_model.model.model.layers.0.self_attn.q_proj.lora_A.weight", safetensors.F32, 8, 64),
		tensor(t, "base_model.model.model.layers.0.self_attn.q_proj.lora_B.weight", safetensors.F32, 64, 8),
	}
	if err := safetensors.Write(filepath.Join(dir, "adapter_model.safetensors"), ts, nil); err != nil {
		t.Fatal(err)
	}
	r, err := Inspect(dir)
	if err != nil {
		t.Fatal(err)
	}
	if r.Kind != KindAdapter || r.NumParams != 2*8*64 || len(r.Tensors) != 2 || r.AdapterConfig["peft_type"] != "LORA" {
		t.Fatalf("report: kind %s, %d params, %d tensors, config %v", r.Kind, r.NumParams, len(r.Tensors), r.AdapterConfig)
	}
	var buf bytes.Buffer
	if err := r.WriteText(&buf); err != nil {
		t.Fatal(err)
	}
	for _, w := range []string{"kind:", "adapter", "r:", "8", "lora_A.weight", "[8, 64]", "1,024 in 2 tensors"} {
		if !strings.Contains(buf.String(), w) {
			t.Errorf("text lacks %q:\n%s", w, buf.String())
		}
	}

	os.Remove(filepath.Join(dir, "adapter_model.safetensors"))
	if _, err := Inspect(dir); err == nil || !strings.Contains(err.Error(), "adapter_model.safetensors is missing") {
		t.Fatalf("missing weights: %v", err)
	}
}

// TestShardedMixedDTypes builds a two-shard BF16/F32 model and checks the dtype mix and the
// shard column.
func TestShardedMixedDTypes(t *testing.T) {
	dir := t.TempDir()
	writeJSON(t, filepath.Join(dir, "config.json"), map[string]any{
		"model_type": "llama", "architectures": []string{"LlamaForCausalLM"},
		"hidden_size": 16, "intermediate_size": 32, "num_hidden_layers": 1,
		"num_attention_heads": 4, "num_key_value_heads": 2, "vocab_size": 32,
		"rope_scaling": map[string]any{"rope_type": "llama3", "factor": 8.0, "low_freq_factor": 1.0,
			"high_freq_factor": 4.0, "original_max_position_embeddings": 64},
		"torch_dtype": "bfloat16",
	})
	shard1 := []safetensors.Tensor{tensor(t, "model.embed_tokens.weight", safetensors.BF16, 32, 16)}
	shard2 := []safetensors.Tensor{tensor(t, "model.norm.weight", safetensors.F32, 16)}
	for i, sh := range [][]safetensors.Tensor{shard1, shard2} {
		name := []string{"model-00001-of-00002.safetensors", "model-00002-of-00002.safetensors"}[i]
		if err := safetensors.Write(filepath.Join(dir, name), sh, nil); err != nil {
			t.Fatal(err)
		}
	}
	writeJSON(t, filepath.Join(dir, "model.safetensors.index.json"), map[string]any{
		"metadata": map[string]any{"total_size": 32*16*2 + 16*4},
		"weight_map": map[string]string{
			"model.embed_tokens.weight": "model-00001-of-00002.safetensors",
			"model.norm.weight":         "model-00002-of-00002.safetensors",
		},
	})
	r, err := Inspect(dir)
	if err != nil {
		t.Fatal(err)
	}
	if r.Kind != KindModel || r.Architecture != "LlamaForCausalLM" || len(r.Files) != 2 {
		t.Fatalf("kind %s arch %s files %v", r.Kind, r.Architecture, r.Files)
	}
	if len(r.DTypes) != 2 || r.DTypes[0].DType != "BF16" || r.DTypes[0].Params != 512 || r.DTypes[1].Bytes != 64 {
		t.Fatalf("dtype mix %+v", r.DTypes)
	}
	if r.NumBytes != 32*16*2+16*4 {
		t.Fatalf("bytes %d", r.NumBytes)
	}
	var buf bytes.Buffer
	r.WriteText(&buf)
	for _, w := range []string{"GQA 2:1", "llama3 (factor 8", "model-00002-of-00002.safetensors", "BF16: 1 tensors, 512 params (97.0%)", "tokenizer:", "none"} {
		if !strings.Contains(buf.String(), w) {
			t.Errorf("text lacks %q:\n%s", w, buf.String())
		}
	}
}

func TestErrors(t *testing.T) {
	empty := t.TempDir()
	for _, c := range []struct{ path, want string }{
		{filepath.Join(empty, "nope"), "no such file"},
		{empty, "no config.json or adapter_config.json"},
	} {
		if _, err := Inspect(c.path); err == nil || !strings.Contains(err.Error(), c.want) || !strings.Contains(err.Error(), c.path) {
			t.Errorf("Inspect(%s) = %v, want an error naming the path with %q", c.path, err, c.want)
		}
	}
}

func TestCommas(t *testing.T) {
	for n, want := range map[int64]string{0: "0", 999: "999", 1000: "1,000", 260032: "260,032", 1234567: "1,234,567", -1234: "-1,234"} {
		if got := commas(n); got != want {
			t.Errorf("commas(%d) = %q, want %q", n, got, want)
		}
	}
}
