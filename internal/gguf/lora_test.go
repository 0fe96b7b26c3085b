package gguf

import (
	"math"
	"path/filepath"
	"strconv"
	"strings"
	"testing"

	"github.com/loractl/loractl/internal/lora"
	"github.com/loractl/loractl/internal/model"
)

// randomAdapter saves an adapter over every Linear of the base with random A and B.
func randomAdapter(t *testing.T, base string, cfg *model.Config, rslora bool, baseField string) (string, *lora.Adapter) {
	t.Helper()
	rng := newRNG(t)
	r := 2 + rng.IntN(6)
	mods, err := lora.Select(lora.Modules(cfg), []string{"all-linear"}, nil)
	if err != nil {
		t.Fatal(err)
	}
	a, err := lora.New(lora.Config{R: r, Alpha: float64(1 + rng.IntN(32)), RSLoRA: rslora, Base: baseField}, mods, lora.InitDefault, rng)
	if err != nil {
		t.Fatal(err)
	}
	for _, p := range a.Pairs {
		for i := range p.B {
			p.B[i] = float32(rng.NormFloat64() * 0.02)
		}
	}
	dir := filepath.Join(t.TempDir(), "adapter")
	if err := a.Save(dir); err != nil {
		t.Fatal(err)
	}
	back, err := lora.Load(dir)
	if err != nil {
		t.Fatal(err)
	}
	return dir, back
}

func TestExportLoRA(t *testing.T) {
	base := stories(t)
	cfg, err := model.LoadConfig(base)
	if err != nil {
		t.Fatal(err)
	}
	for _, rs := range []bool{false, true} {
		dir, a := randomAdapter(t, base, cfg, rs, base)
		out := filepath.Join(t.TempDir(), "a.gguf")
		rep, err := ExportLoRA(dir, out, "", false) // base from base_model_name_or_path
		if err != nil {
			t.Fatal(err)
		}
		f, err := Open(out)
		if err != nil {
			t.Fatal(err)
		}
		for k, want := range map[string]Value{"general.type": "adapter", "adapter.type": "lora", "general.architecture": "llama"} {
			if got, _ := f.Get(k); got != want {
				t.Errorf("%s = %v, want %v", k, got, want)
			}
		}
		alphaV, _ := f.Get("adapter.lora.alpha")
		alpha, ok := alphaV.(float32)
		if !ok {
			t.Fatalf("adapter.lora.alpha is %T, want float32", alphaV)
		}
		// llama.cpp's scale alpha/r must be the adapter's own (alpha/√r with rsLoRA).
		if s, want := alpha/float32(a.Config.R), a.Config.Scale(); math.Abs(float64(s-want)) > 1e-6*float64(want) {
			t.Fatalf("rslora %v: alpha/r = %g, adapter scale %g", rs, s, want)
		}
		if len(f.Tensors) != 2*len(a.Pairs) || rep.Tensors != len(f.Tensors) {
			t.Fatalf("%d tensors for %d modules", len(f.Tensors), len(a.Pairs))
		}
		for _, p := range a.Pairs {
			name := "blk." + strconv.Itoa(p.Module.Layer) + "." + ggufModuleNames[p.Module.Name] + ".weight"
			ta, _ := f.Tensor(name + ".lora_a")
			tb, _ := f.Tensor(name + ".lora_b")
			if ta.Type != F32 || tb.Type != F32 ||
				ta.Shape[0] != uint64(p.Module.In) || ta.Shape[1] != uint64(a.Config.R) ||
				tb.Shape[0] != uint64(a.Config.R) || tb.Shape[1] != uint64(p.Module.Out) {
				t.Fatalf("%s: lora_a %s %v, lora_b %s %v", name, ta.Type, ta.Shape, tb.Type, tb.Shape)
			}
			ga, err := f.Float32(name + ".lora_a")
			if err != nil {
				t.Fatal(err)
			}
			gb, err := f.Float32(name + ".lora_b")
			if err != nil {
				t.Fatal(err)
			}
			heads := map[string]int{"q_proj": cfg.NumAttentionHeads, "k_proj": cfg.NumKeyValueHeads}[p.Module.Name]
			if heads > 0 {
				// B permuted like the base: permute(B)·A = permute(B·A), so W0 and the delta
				// stay aligned in llama.cpp's row order.
				perm := PermuteRows(p.B, p.Module.Out, a.Config.R, heads)
				for i := range gb {
					if gb[i] != perm[i] {
						t.Fatalf("%s lora_b is not the row-permuted B", name)
					}
				}
				gb = UnpermuteRows(gb, p.Module.Out, a.Config.R, heads)
			}
			for i := range ga {
				if ga[i] != p.A[i] {
					t.Fatalf("%s lora_a differs at %d", name, i)
				}
			}
			for i := range gb {
				if gb[i] != p.B[i] {
					t.Fatalf("%s lora_b (un-permuted) differs at %d", name, i)
				}
			}
		}
		f.Close()
		if _, err := ExportLoRA(dir, out, base, false); err == nil || !strings.Contains(err.Error(), "--overwrite") {
			t.Fatalf("existing output: %v", err)
		}
	}
}

func TestExportLoRANeedsBase(t *testing.T) {
	base := stories(t)
	cfg, err := model.LoadConfig(base)
	if err != nil {
		t.Fatal(err)
	}
	dir, _ := randomAdapter(t, base, cfg, false, "some-org/some-model")
	_, err = ExportLoRA(dir, filepath.Join(t.TempDir(), "a.gguf"), "", false)
	if err == nil || !strings.Contains(err.Error(), "--base") {
		t.Fatalf("got %v", err)
	}
}
