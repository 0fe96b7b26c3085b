package gguf

import (
	"math"
	"os"
	"path/filepath"
	"strconv"
	"strings"
	"testing"

	"github.com/loractl/loractl/internal/model"
	"github.com/loractl/loractl/internal/refdata"
	"github.com/loractl/loractl/internal/safetensors"
)

func stories(t *testing.T) string {
	t.Helper()
	return refdata.Stories260K(t)
}

// TestExportStories exports stories260K in each format, reads it back with this package's
// reader and checks the metadata, the tensor types and every tensor against the checkpoint
// (q/k un-permuted) within the format's bound.
func TestExportStories(t *testing.T) {
	dir := stories(t)
	cfg, err := model.LoadConfig(dir)
	if err != nil {
		t.Fatal(err)
	}
	ck, err := safetensors.OpenCheckpoint(dir)
	if err != nil {
		t.Fatal(err)
	}
	defer ck.Close()
	for _, format := range []string{FormatF16, FormatQ8_0, FormatQ4_0} {
		t.Run(format, func(t *testing.T) {
			out := filepath.Join(t.TempDir(), "m.gguf")
			rep, err := ExportModel(dir, out, format, false)
			if err != nil {
				t.Fatal(err)
			}
			t.Logf("%s: %d bytes, %d tensors, types %v, F16 fallbacks %v, notes %v", format, rep.Bytes, rep.Tensors, rep.ByType, rep.Fallbacks, rep.Notes)
			f, err := Open(out)
			if err != nil {
				t.Fatal(err)
			}
			defer f.Close()
			checkModelKV(t, f, cfg)
			// 2 + 9 per block; output.weight omitted (tied).
			if want := 2 + 9*cfg.NumHiddenLayers; len(f.Tensors) != want {
				t.Fatalf("%d tensors, want %d", len(f.Tensors), want)
			}
			if _, ok := f.Tensor("output.weight"); ok {
				t.Fatal("output.weight written for a tied model")
			}
			for _, ti := range f.Tensors {
				hf, heads := hfName(t, ti.Name, cfg)
				src, err := ck.Float32(hf)
				if err != nil {
					t.Fatal(err)
				}
				info, _ := ck.Info(hf)
				got, err := f.Float32(ti.Name)
				if err != nil {
					t.Fatal(err)
				}
				if heads > 0 {
					got = UnpermuteRows(got, info.Shape[0], info.Shape[1], heads)
				}
				wantType := typeFor(format, ti.Name, info.Shape)
				if ti.Type != wantType {
					t.Fatalf("%s is %s, want %s", ti.Name, ti.Type, wantType)
				}
				if len(info.Shape) == 2 && (ti.Shape[0] != uint64(info.Shape[1]) || ti.Shape[1] != uint64(info.Shape[0])) {
					t.Fatalf("%s has ne %v for torch shape %v", ti.Name, ti.Shape, info.Shape)
				}
				checkBound(t, ti.Name, ti.Type, src, got)
			}
			// The same output again without --overwrite is refused; with it, it is replaced.
			if _, err := ExportModel(dir, out, format, false); err == nil || !strings.Contains(err.Error(), "--overwrite") {
				t.Fatalf("existing output: %v", err)
			}
			if _, err := ExportModel(dir, out, format, true); err != nil {
				t.Fatal(err)
			}
		})
	}
}

// typeFor is the expected type of a tensor of stories260K (torch shape) in a format.
func typeFor(format, name string, shape []int) GGMLType {
	if len(shape) == 1 {
		return F32
	}
	want := map[string]GGMLType{FormatF16: F16, FormatQ8_0: Q8_0, FormatQ4_0: Q4_0}[format]
	if format == FormatQ4_0 && name == "token_embd.weight" { // tied: it is the output matrix
		want = Q8_0
	}
	if want != F16 && shape[1]%BlockSize != 0 {
		want = F16
	}
	return want
}

// hfName maps a GGUF tensor name back to the checkpoint, with the head count of a permuted one.
func hfName(t *testing.T, name string, cfg *model.Config) (string, int) {
	switch name {
	case "token_embd.weight":
		return "model.embed_tokens.weight", 0
	case "output_norm.weight":
		return "model.norm.weight", 0
	case "output.weight":
		return "lm_head.weight", 0
	}
	var part string
	parts := strings.SplitN(strings.TrimPrefix(name, "blk."), ".", 2)
	if len(parts) != 2 {
		t.Fatalf("unexpected tensor %s", name)
	}
	l, err := strconv.Atoi(parts[0])
	if err != nil {
		t.Fatalf("unexpected tensor %s", name)
	}
	part = strings.TrimSuffix(parts[1], ".weight")
	for _, m := range hfToGGUF {
		if m.gguf == part {
			heads := 0
			if part == "attn_q" {
				heads = cfg.NumAttentionHeads
			} else if part == "attn_k" {
				heads = cfg.NumKeyValueHeads
			}
			return "model.layers." + strconv.Itoa(l) + "." + m.hf + ".weight", heads
		}
	}
	t.Fatalf("unexpected tensor %s", name)
	return "", 0
}

func checkModelKV(t *testing.T, f *File, cfg *model.Config) {
	t.Helper()
	want := map[string]Value{
		"general.architecture":                   "llama",
		"llama.block_count":                      uint32(cfg.NumHiddenLayers),
		"llama.context_length":                   uint32(cfg.MaxPositionEmbeddings),
		"llama.embedding_length":                 uint32(cfg.HiddenSize),
		"llama.feed_forward_length":              uint32(cfg.IntermediateSize),
		"llama.attention.head_count":             uint32(cfg.NumAttentionHeads),
		"llama.attention.head_count_kv":          uint32(cfg.NumKeyValueHeads),
		"llama.rope.freq_base":                   float32(cfg.RopeTheta),
		"llama.attention.layer_norm_rms_epsilon": float32(cfg.RMSNormEps),
		"llama.rope.dimension_count":             uint32(cfg.HeadDim),
		"llama.vocab_size":                       uint32(cfg.VocabSize),
		"tokenizer.ggml.model":                   "llama",
		"tokenizer.ggml.bos_token_id":            uint32(cfg.BOSTokenID),
		"tokenizer.ggml.eos_token_id":            uint32(cfg.EOSTokenIDs[0]),
	}
	for k, v := range want {
		got, ok := f.Get(k)
		if !ok || got != v {
			t.Errorf("%s = %v (%T), want %v (%T)", k, got, got, v, v)
		}
	}
	toks, _ := f.Get("tokenizer.ggml.tokens")
	scores, _ := f.Get("tokenizer.ggml.scores")
	types, _ := f.Get("tokenizer.ggml.token_type")
	ts, _ := toks.([]string)
	ss, _ := scores.([]float32)
	tt, _ := types.([]int32)
	if len(ts) != cfg.VocabSize || len(ss) != cfg.VocabSize || len(tt) != cfg.VocabSize {
		t.Fatalf("tokenizer arrays: %d tokens, %d scores, %d types; want %d each", len(ts), len(ss), len(tt), cfg.VocabSize)
	}
	for i, s := range ss {
		if math.IsNaN(float64(s)) {
			t.Fatalf("score %d is NaN", i)
		}
	}
}

func TestExportRefusals(t *testing.T) {
	rng := newRNG(t)
	dir := t.TempDir()
	for _, c := range []struct{ typ, extra, want string }{
		{"qwen3", "", "not supported for GGUF export"},
		{"qwen2", "", "not supported for GGUF export"},
		{"llama", `"attention_bias": true,`, "bias"},
	} {
		m := filepath.Join(dir, c.typ+c.want[:3])
		os.MkdirAll(m, 0o755)
		os.WriteFile(filepath.Join(m, "config.json"), []byte(`{"model_type": "`+c.typ+`", `+c.extra+` "hidden_size": 64, "intermediate_size": 64, "num_hidden_layers": 1, "num_attention_heads": 4, "head_dim": 16, "vocab_size": 32}`), 0o644)
		out := filepath.Join(dir, "x"+strconv.Itoa(rng.IntN(1000))+".gguf")
		_, err := ExportModel(m, out, FormatQ8_0, false)
		if err == nil || !strings.Contains(err.Error(), c.want) || !strings.Contains(err.Error(), "config.json") {
			t.Errorf("%s: got %v", c.typ, err)
		}
		if _, err := os.Stat(out); err == nil {
			t.Errorf("%s: output written", c.typ)
		}
	}
	if _, err := ExportModel(dir, filepath.Join(dir, "y.gguf"), "gguf-q5_k", false); err == nil || !strings.Contains(err.Error(), FormatQ4_0) {
		t.Errorf("bad format: %v", err)
	}
}

func TestPermuteRoundTrip(t *testing.T) {
	rng := newRNG(t)
	for range 20 {
		heads := 1 + rng.IntN(4)
		d := 2 * (1 + rng.IntN(4))
		cols := 1 + rng.IntN(5)
		rows := heads * d
		w := randVec(rng, rows*cols, 1)
		p := PermuteRows(w, rows, cols, heads)
		// Row 2j+i of each head is row i·D/2+j of the source (reshape(heads,2,D/2) swapaxes(1,2)).
		for h := 0; h < heads; h++ {
			for i := 0; i < 2; i++ {
				for j := 0; j < d/2; j++ {
					for c := 0; c < cols; c++ {
						if p[(h*d+2*j+i)*cols+c] != w[(h*d+i*d/2+j)*cols+c] {
							t.Fatalf("heads %d D %d: row %d is not source row %d", heads, d, h*d+2*j+i, h*d+i*d/2+j)
						}
					}
				}
			}
		}
		back := UnpermuteRows(p, rows, cols, heads)
		for k := range w {
			if back[k] != w[k] {
				t.Fatal("UnpermuteRows does not invert PermuteRows")
			}
		}
	}
}
