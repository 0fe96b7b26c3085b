package cli

import (
	"bytes"
	"math/rand/v2"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/loractl/loractl/internal/gguf"
	"github.com/loractl/loractl/internal/lora"
	"github.com/loractl/loractl/internal/model"
)

func TestQuantizeGGUFDirect(t *testing.T) {
	dir := stories(t)
	for _, format := range []string{gguf.FormatF16, gguf.FormatQ8_0, gguf.FormatQ4_0} {
		out := filepath.Join(t.TempDir(), "m.gguf")
		var errb bytes.Buffer
		s := &streams{Out: &bytes.Buffer{}, Err: &errb}
		if err := runQuantizeGGUF(s, ggufOptions{Model: dir, Out: out, Format: format}); err != nil {
			t.Fatal(err)
		}
		f, err := gguf.Open(out)
		if err != nil {
			t.Fatal(err)
		}
		if f.String("general.architecture") != "llama" || len(f.Tensors) == 0 {
			t.Fatalf("%s: architecture %q, %d tensors", format, f.String("general.architecture"), len(f.Tensors))
		}
		f.Close()
		if !strings.Contains(errb.String(), "wrote "+out) {
			t.Fatalf("%s: stderr %q", format, errb.String())
		}
		if format != gguf.FormatF16 && !strings.Contains(errb.String(), "ffn_down.weight (rows of 172 values are not a multiple of 32) written as F16") {
			t.Fatalf("%s: the F16 fallback is not reported: %q", format, errb.String())
		}
		// Existing output.
		if err := runQuantizeGGUF(s, ggufOptions{Model: dir, Out: out, Format: format}); err == nil || !strings.Contains(err.Error(), "--overwrite") {
			t.Fatalf("existing output: %v", err)
		}
	}
	err := runQuantizeGGUF(&streams{Err: &bytes.Buffer{}}, ggufOptions{Model: dir, Out: filepath.Join(t.TempDir(), "x.gguf"), Format: "gguf-q2_k"})
	if err == nil || !strings.Contains(err.Error(), "gguf-q4_0") {
		t.Fatalf("bad format: %v", err)
	}
}

// TestQuantizeGGUFCommand runs the whole command line, through quantize.go's dispatch.
func TestQuantizeGGUFCommand(t *testing.T) {
	dir := stories(t)
	out := filepath.Join(t.TempDir(), "m.gguf")
	code, _, errs := run(t, "", "quantize", "--model", dir, "--out", out, "--format", "gguf-q8_0")
	if code != 0 {
		t.Fatalf("exit %d: %s", code, errs)
	}
	if st, err := os.Stat(out); err != nil || st.Size() == 0 {
		t.Fatalf("no output: %v", err)
	}
	code, _, errs = run(t, "", "quantize", "--model", dir, "--out", out, "--format", "gguf-q8_0")
	if code != 1 || !strings.Contains(errs, "--overwrite") {
		t.Fatalf("existing output: exit %d, %s", code, errs)
	}
	code, _, errs = run(t, "", "quantize", "--model", dir, "--out", out, "--format", "gguf-q8_0", "--overwrite")
	if code != 0 {
		t.Fatalf("--overwrite: exit %d: %s", code, errs)
	}
	// An unsupported architecture: a qwen3 config.
	q := copyModel(t)
	cfg, _ := os.ReadFile(filepath.Join(q, "config.json"))
	os.WriteFile(filepath.Join(q, "config.json"), bytes.Replace(cfg, []byte(`"model_type": "llama"`), []byte(`"model_type": "qwen3"`), 1), 0o644)
	code, _, errs = run(t, "", "quantize", "--model", q, "--out", filepath.Join(t.TempDir(), "q.gguf"), "--format", "gguf-f16")
	if code != 1 || !strings.Contains(errs, "qwen3") || !strings.Contains(errs, "config.json") {
		t.Fatalf("qwen3: exit %d, %s", code, errs)
	}
}

func TestExportCommand(t *testing.T) {
	base := stories(t)
	cfg, err := model.LoadConfig(base)
	if err != nil {
		t.Fatal(err)
	}
	seed := uint64(time.Now().UnixNano())
	t.Logf("seed %d", seed)
	rng := rand.New(rand.NewPCG(seed, 7))
	mods, _ := lora.Select(lora.Modules(cfg), []string{"q_proj", "k_proj", "v_proj"}, nil)
	a, err := lora.New(lora.Config{R: 4, Alpha: 8, RSLoRA: true, Base: "not/a/local/folder"}, mods, lora.InitDefault, rng)
	if err != nil {
		t.Fatal(err)
	}
	for _, p := range a.Pairs {
		for i := range p.B {
			p.B[i] = float32(rng.NormFloat64())
		}
	}
	adir := filepath.Join(t.TempDir(), "adapter")
	if err := a.Save(adir); err != nil {
		t.Fatal(err)
	}
	out := filepath.Join(t.TempDir(), "a.gguf")
	code, _, errs := run(t, "", "export", "--adapter", adir, "--format", "gguf-lora", "--out", out)
	if code != 1 || !strings.Contains(errs, "--base") {
		t.Fatalf("no base: exit %d, %s", code, errs)
	}
	code, _, errs = run(t, "", "export", "--adapter", adir, "--format", "gguf-lora", "--out", out, "--base", base)
	if code != 0 || !strings.Contains(errs, "rsLoRA") {
		t.Fatalf("exit %d, %s", code, errs)
	}
	f, err := gguf.Open(out)
	if err != nil {
		t.Fatal(err)
	}
	defer f.Close()
	if f.String("general.type") != "adapter" || f.String("adapter.type") != "lora" || len(f.Tensors) != 2*len(a.Pairs) {
		t.Fatalf("general.type %q, adapter.type %q, %d tensors", f.String("general.type"), f.String("adapter.type"), len(f.Tensors))
	}
	code, _, errs = run(t, "", "export", "--adapter", adir, "--format", "gguf-lora", "--out", out, "--base", base)
	if code != 1 || !strings.Contains(errs, "--overwrite") {
		t.Fatalf("existing output: exit %d, %s", code, errs)
	}
	code, _, errs = run(t, "", "export", "--adapter", adir, "--format", "onnx", "--out", out)
	if code != 2 || !strings.Contains(errs, "gguf-lora") {
		t.Fatalf("bad format: exit %d, %s", code, errs)
	}
}
