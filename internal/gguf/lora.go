package gguf

import (
	"fmt"
	"math"
	"os"
	"path/filepath"

	"github.com/loractl/loractl/internal/lora"
	"github.com/loractl/loractl/internal/model"
)

// FormatLoRA is the adapter format of ExportLoRA.
const FormatLoRA = "gguf-lora"

// LoRAReport says what ExportLoRA wrote.
type LoRAReport struct {
	Out     string
	Base    string  // the base model folder the head counts came from
	R       int     // rank
	Alpha   float32 // adapter.lora.alpha as written
	RSLoRA  bool    // alpha was multiplied by √r
	Scale   float32 // alpha/r, the scale llama.cpp applies (equal to the adapter's own scale)
	Modules int
	Tensors int
	Bytes   int64
}

// ggufModuleNames maps lora.Module short names to llama.cpp's block tensor names.
var ggufModuleNames = map[string]string{
	"q_proj": "attn_q", "k_proj": "attn_k", "v_proj": "attn_v", "o_proj": "attn_output",
	"gate_proj": "ffn_gate", "up_proj": "ffn_up", "down_proj": "ffn_down",
}

// ResolveBase returns the base model folder of an adapter: base when given, else the
// adapter's base_model_name_or_path when that is a local folder with a config.json.
func ResolveBase(a *lora.Adapter, adapterDir, base string) (string, error) {
	if base != "" {
		return base, nil
	}
	b := a.Config.Base
	if b != "" {
		if !filepath.IsAbs(b) {
			// A relative path is tried as written (from the working folder), then beside the adapter.
			if _, err := os.Stat(filepath.Join(b, model.ConfigFile)); err != nil {
				if alt := filepath.Join(adapterDir, b); fileExists(filepath.Join(alt, model.ConfigFile)) {
					b = alt
				}
			}
		}
		if fileExists(filepath.Join(b, model.ConfigFile)) {
			return b, nil
		}
	}
	return "", fmt.Errorf("adapter %s: base_model_name_or_path %q is not a local model folder; pass --base DIR (the base model's HuggingFace folder: its head counts are needed to permute q and k)", adapterDir, a.Config.Base)
}

func fileExists(p string) bool {
	st, err := os.Stat(p)
	return err == nil && !st.IsDir()
}

// LoRAAlpha returns adapter.lora.alpha for an adapter: llama.cpp scales by alpha/r, so an
// rsLoRA adapter (scale alpha/√r) is written with alpha·√r.
func LoRAAlpha(c lora.Config) float32 {
	if c.RSLoRA {
		return float32(c.Alpha * math.Sqrt(float64(c.R)))
	}
	return float32(c.Alpha)
}

// ExportLoRA writes the PEFT adapter in adapterDir as a llama.cpp LoRA adapter GGUF at out,
// as convert_lora_to_gguf.py does: general.type=adapter, adapter.type=lora,
// adapter.lora.alpha, general.architecture=llama, and per adapted module
// blk.N.<name>.weight.lora_a (ne [in, r]) and .lora_b (ne [r, out]) in F32, with the rows of
// lora_b of q and k permuted like the base's q/k rows. baseDir (or the adapter's
// base_model_name_or_path when it is a local folder) gives the head counts.
func ExportLoRA(adapterDir, out, baseDir string, overwrite bool) (*LoRAReport, error) {
	a, err := lora.Load(adapterDir)
	if err != nil {
		return nil, err
	}
	base, err := ResolveBase(a, adapterDir, baseDir)
	if err != nil {
		return nil, err
	}
	cfg, err := model.LoadConfig(base)
	if err != nil {
		return nil, err
	}
	if err := CheckArchitecture(cfg); err != nil {
		return nil, err
	}
	if err := a.CheckBase(cfg, adapterDir); err != nil {
		return nil, err
	}
	for _, p := range a.Pairs {
		if p.M != nil {
			return nil, fmt.Errorf("adapter %s: a DoRA adapter (use_dora) has no llama.cpp LoRA form; merge it into the base with `loractl merge` and export the merged model with `loractl quantize --format gguf-f16`", adapterDir)
		}
	}
	r := a.Config.R
	rep := &LoRAReport{Out: out, Base: base, R: r, Alpha: LoRAAlpha(a.Config), RSLoRA: a.Config.RSLoRA, Modules: len(a.Pairs)}
	rep.Scale = rep.Alpha / float32(r)
	var tensors []Tensor
	for _, p := range a.Pairs {
		p := p
		gname, ok := ggufModuleNames[p.Module.Name]
		if !ok {
			return nil, fmt.Errorf("adapter %s: module %s has no llama.cpp tensor", adapterDir, p.Module.Path)
		}
		for _, v := range [][]float32{p.A, p.B} {
			for k, x := range v {
				if math.IsNaN(float64(x)) || math.IsInf(float64(x), 0) {
					return nil, fmt.Errorf("adapter %s: %s holds %v at index %d; the adapter weights are not numbers (a diverged run?)", adapterDir, p.Module.Path, x, k)
				}
			}
		}
		heads := 0
		switch p.Module.Name {
		case "q_proj":
			heads = cfg.NumAttentionHeads
		case "k_proj":
			heads = cfg.NumKeyValueHeads
		}
		name := fmt.Sprintf("blk.%d.%s.weight", p.Module.Layer, gname)
		in, outF := p.Module.In, p.Module.Out
		r := a.RankOf(p)
		// llama.cpp scales each tensor by alpha / (its rank). Where the pair's own scale differs
		// (a rank_pattern under rsLoRA, an alpha_pattern) the ratio is folded into lora_b.
		want := a.AlphaOf(p) / float64(r)
		if a.Config.RSLoRA {
			want = a.AlphaOf(p) / math.Sqrt(float64(r))
		}
		fold := float32(1)
		if f := want / (float64(rep.Alpha) / float64(r)); math.Abs(f-1) > 1e-6 {
			fold = float32(f)
		}
		tensors = append(tensors,
			Tensor{Name: name + ".lora_a", Shape: []uint64{uint64(in), uint64(r)}, Type: F32,
				Data: func() ([]byte, error) { return Encode(F32, p.A) }},
			Tensor{Name: name + ".lora_b", Shape: []uint64{uint64(r), uint64(outF)}, Type: F32,
				Data: func() ([]byte, error) {
					b := p.B
					if fold != 1 {
						b = make([]float32, len(p.B))
						for i, v := range p.B {
							b[i] = v * fold
						}
					}
					if heads > 0 {
						b = PermuteRows(b, outF, r, heads)
					}
					return Encode(F32, b)
				}},
		)
	}
	rep.Tensors = len(tensors)
	kv := []KV{
		{"general.architecture", "llama"},
		{"general.type", "adapter"},
		{"general.name", filepath.Base(filepath.Clean(adapterDir))},
		{"adapter.type", "lora"},
		{"adapter.lora.alpha", rep.Alpha},
		{"general.quantization_version", uint32(quantVersion)},
	}
	if err := WriteFile(out, overwrite, kv, tensors); err != nil {
		return nil, err
	}
	if st, err := os.Stat(out); err == nil {
		rep.Bytes = st.Size()
	}
	return rep, nil
}
