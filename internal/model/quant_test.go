package model

import (
	"encoding/json"
	"fmt"
	"math"
	"os"
	"path/filepath"
	"slices"
	"strings"
	"testing"

	"github.com/loractl/loractl/internal/backend"
	"github.com/loractl/loractl/internal/backend/cpu"
	"github.com/loractl/loractl/internal/quant"
	"github.com/loractl/loractl/internal/refdata"
	"github.com/loractl/loractl/internal/safetensors"
)

// quantFormats are the formats the quantization tests cover, with their names in tables.
var quantFormats = []struct {
	name string
	o    quant.Options
}{
	{"nf4", quant.Options{Format: quant.NF4, GroupSize: 64}},
	{"nf4+dq", quant.Options{Format: quant.NF4, GroupSize: 64, DoubleQuant: true}},
	{"int8", quant.Options{Format: quant.Int8, GroupSize: 64}},
	{"int4", quant.Options{Format: quant.Int4, GroupSize: 64}},
}

// quantizeStories writes stories260K quantized as o into a temporary folder.
func quantizeStories(t *testing.T, o quant.Options) string {
	t.Helper()
	out := filepath.Join(t.TempDir(), "q")
	if _, err := quant.QuantizeFolder(refdata.Stories260K(t), out, o, false); err != nil {
		t.Fatal(err)
	}
	return out
}

// TestQuantizedFolderLoads checks that a folder written by quantize loads with every Linear
// weight equal to its dequantized tensor and every other tensor equal to the source, that the
// logits stay close to the float32 model's, and that a packed (QLoRA) load of the same folder
// gives bitwise the logits of the dequantized load.
func TestQuantizedFolderLoads(t *testing.T) {
	src := refdata.Stories260K(t)
	ref := loadStories(t)
	defer ref.Close()
	tokens := []int{1, 403, 407, 261, 378, 432, 383, 286, 261, 376, 298, 315, 421, 395, 317, 426}
	want, err := ref.ForwardAll(tokens)
	if err != nil {
		t.Fatal(err)
	}
	for _, f := range quantFormats {
		t.Run(f.name, func(t *testing.T) {
			dir := quantizeStories(t, f.o)
			be := cpu.New()
			m, err := Load(dir, be)
			if err != nil {
				t.Fatal(err)
			}
			defer m.Close()
			ck, err := safetensors.OpenCheckpoint(dir)
			if err != nil {
				t.Fatal(err)
			}
			defer ck.Close()
			qi, err := quant.ReadInfo(ck)
			if err != nil || qi == nil {
				t.Fatalf("no quantization metadata: %v", err)
			}
			srcCk, err := safetensors.OpenCheckpoint(src)
			if err != nil {
				t.Fatal(err)
			}
			defer srcCk.Close()
			nq := 0
			for _, name := range m.TensorNames() {
				buf, _, _ := m.Tensor(name)
				got := make([]float32, buf.Len())
				if err := be.Download(got, buf); err != nil {
					t.Fatal(err)
				}
				var exp []float32
				if quant.IsLinearWeight(name) {
					qt, err := quant.ReadTensor(ck, qi, name)
					if err != nil {
						t.Fatal(err)
					}
					exp = qt.Dequantize()
					nq++
				} else if exp, err = srcCk.Float32(name); err != nil {
					t.Fatal(err)
				}
				if !slices.Equal(got, exp) {
					t.Fatalf("%s: loaded values differ from the checkpoint's", name)
				}
			}
			if nq != 35 {
				t.Fatalf("%d quantized tensors, want 35 (7 per layer)", nq)
			}
			got, err := m.ForwardAll(tokens)
			if err != nil {
				t.Fatal(err)
			}
			d, r := maxAbsDiff(got, want)
			t.Logf("max |logit − f32 logit| = %.4f (max |logit| %.2f)", d, r)
			// A 260K-parameter model is far more sensitive to 4-bit weights than a large one
			// (docs/PERF.md): allow a third of the logit range; int8 stays within a few percent.
			limit := 0.35 * r
			if f.o.Format == quant.Int8 {
				limit = 0.03 * r
			}
			if d > limit {
				t.Fatalf("logits drift %.4f, over %.4f", d, limit)
			}

			// QLoRA load of the same folder: packed weights, the same logits bit for bit.
			qo := f.o
			pm, err := LoadWith(dir, be, LoadOptions{Quantize: &qo})
			if err != nil {
				t.Fatal(err)
			}
			defer pm.Close()
			if dt, _ := pm.WeightDType("model.layers.0.mlp.down_proj.weight"); dt != backend.Quantized {
				t.Fatalf("down_proj kept as %s, want packed", dt)
			}
			pg, err := pm.ForwardAll(tokens)
			if err != nil {
				t.Fatal(err)
			}
			if !slices.Equal(pg, got) {
				t.Fatal("packed weights give other logits than the dequantized ones")
			}
			mem := pm.WeightMemory()
			t.Logf("packed: %.3f bits/param over the Linear weights, %.3f over all %d parameters", mem.QuantizedBitsPerParam(), mem.BitsPerParam(), mem.Params)
			if b := mem.QuantizedBitsPerParam(); math.Abs(b-quant.BitsPerParam(f.o)) > 0.05 {
				t.Fatalf("%.3f bits/param, want about %.3f", b, quant.BitsPerParam(f.o))
			}
		})
	}
}

// TestQuantizeOnLoad checks LoadOptions.Quantize on a float checkpoint: the Linear weights are
// packed and equal to quantizing the source tensors.
func TestQuantizeOnLoad(t *testing.T) {
	src := refdata.Stories260K(t)
	be := cpu.New()
	o := quant.Options{Format: quant.NF4, DoubleQuant: true}
	m, err := LoadWith(src, be, LoadOptions{Quantize: &o})
	if err != nil {
		t.Fatal(err)
	}
	defer m.Close()
	ck, err := safetensors.OpenCheckpoint(src)
	if err != nil {
		t.Fatal(err)
	}
	defer ck.Close()
	name := "model.layers.2.self_attn.k_proj.weight"
	w, _ := ck.Float32(name)
	shape, _ := m.WeightShape(name)
	qt, err := quant.Quantize(name, w, shape, o)
	if err != nil {
		t.Fatal(err)
	}
	buf, _, _ := m.Tensor(name)
	got := make([]float32, buf.Len())
	if err := be.Download(got, buf); err != nil {
		t.Fatal(err)
	}
	if !slices.Equal(got, qt.Dequantize()) {
		t.Fatal("the packed weight differs from quantizing the source tensor")
	}
	if dt, _ := m.WeightDType("model.embed_tokens.weight"); dt != backend.F32 {
		t.Fatalf("embed_tokens stored as %s; embeddings stay float32", dt)
	}
	if err := m.AddToWeight(name, make([]float32, len(got))); err == nil {
		t.Fatal("AddToWeight into a packed weight succeeded")
	}
}

// TestQuantizedFolderErrors checks the errors for a damaged quantized folder, a source with a
// NaN weight and an existing output folder.
func TestQuantizedFolderErrors(t *testing.T) {
	src := refdata.Stories260K(t)
	o := quant.Options{Format: quant.NF4}
	dir := quantizeStories(t, o)
	if _, err := quant.QuantizeFolder(src, dir, o, false); err == nil || !strings.Contains(err.Error(), "--overwrite") {
		t.Fatalf("existing --out: got %v, want a refusal naming --overwrite", err)
	}
	if _, err := quant.QuantizeFolder(src, dir, quant.Options{Format: quant.Int8}, true); err != nil {
		t.Fatalf("--overwrite: %v", err)
	}
	if _, err := quant.QuantizeFolder(dir, filepath.Join(t.TempDir(), "again"), o, false); err == nil || !strings.Contains(err.Error(), "already quantized") {
		t.Fatalf("quantizing a quantized folder: %v", err)
	}

	// Drop one scale tensor: the error names the file, the tensor and the fix.
	ck, err := safetensors.OpenCheckpoint(dir)
	if err != nil {
		t.Fatal(err)
	}
	var ts []safetensors.Tensor
	drop := "model.layers.1.mlp.up_proj.weight" + quant.SuffixScale
	for _, n := range ck.Names() {
		if n == drop {
			continue
		}
		info, _ := ck.Info(n)
		b, _ := ck.Bytes(n)
		ts = append(ts, safetensors.Tensor{Name: n, DType: info.DType, Shape: info.Shape, Data: slices.Clone(b)})
	}
	meta := ck.Metadata()
	ck.Close()
	broken := filepath.Join(t.TempDir(), "broken")
	copyFolder(t, dir, broken)
	if err := safetensors.Write(filepath.Join(broken, safetensors.SingleFile), ts, meta); err != nil {
		t.Fatal(err)
	}
	_, err = Load(broken, cpu.New())
	if err == nil || !strings.Contains(err.Error(), drop) || !strings.Contains(err.Error(), "re-create") || !strings.Contains(err.Error(), broken) {
		t.Fatalf("missing scale tensor: %v", err)
	}

	// A NaN weight in the source: the error names the tensor.
	sck, err := safetensors.OpenCheckpoint(src)
	if err != nil {
		t.Fatal(err)
	}
	ts = ts[:0]
	bad := "model.layers.3.self_attn.o_proj.weight"
	for _, n := range sck.Names() {
		info, _ := sck.Info(n)
		v, _ := sck.Float32(n)
		if n == bad {
			v[17] = float32(math.NaN())
		}
		b, _ := safetensors.EncodeFloat32(safetensors.F32, v)
		ts = append(ts, safetensors.Tensor{Name: n, DType: safetensors.F32, Shape: info.Shape, Data: b})
	}
	sck.Close()
	nanSrc := filepath.Join(t.TempDir(), "nan")
	copyFolder(t, src, nanSrc)
	if err := safetensors.Write(filepath.Join(nanSrc, safetensors.SingleFile), ts, nil); err != nil {
		t.Fatal(err)
	}
	out := filepath.Join(t.TempDir(), "out")
	_, err = quant.QuantizeFolder(nanSrc, out, o, false)
	if err == nil || !strings.Contains(err.Error(), bad) || !strings.Contains(err.Error(), "NaN") {
		t.Fatalf("NaN weight: %v", err)
	}
	if left, _ := filepath.Glob(filepath.Join(out, "*.safetensors*")); len(left) > 0 {
		t.Fatalf("a failed quantize left %v", left)
	}
	if _, err := os.Stat(filepath.Join(out, ".model.safetensors.tmp")); err == nil {
		t.Fatal("temporary file left behind")
	}
	entries, _ := os.ReadDir(out)
	for _, e := range entries {
		if strings.HasPrefix(e.Name(), ".model.safetensors.tmp") {
			t.Fatalf("temporary file %s left behind", e.Name())
		}
	}
}

// copyFolder copies the top-level regular files of src into dst.
func copyFolder(t *testing.T, src, dst string) {
	t.Helper()
	if err := os.MkdirAll(dst, 0o755); err != nil {
		t.Fatal(err)
	}
	ents, err := os.ReadDir(src)
	if err != nil {
		t.Fatal(err)
	}
	for _, e := range ents {
		if !e.Type().IsRegular() {
			continue
		}
		b, err := os.ReadFile(filepath.Join(src, e.Name()))
		if err != nil {
			t.Fatal(err)
		}
		if err := os.WriteFile(filepath.Join(dst, e.Name()), b, 0o644); err != nil {
			t.Fatal(err)
		}
	}
}

// perplexity returns exp(mean NLL) of each sequence's tokens after the first, over all seqs.
func perplexity(t *testing.T, m *Model, seqs [][]int) float64 {
	t.Helper()
	V := m.Config().VocabSize
	var nll float64
	n := 0
	for _, s := range seqs {
		logits, err := m.ForwardAll(s)
		if err != nil {
			t.Fatal(err)
		}
		for i := 0; i+1 < len(s); i++ {
			row := logits[i*V : (i+1)*V]
			mx := slices.Max(row)
			var z float64
			for _, l := range row {
				z += math.Exp(float64(l - mx))
			}
			nll += math.Log(z) + float64(mx) - float64(row[s[i+1]])
			n++
		}
	}
	return math.Exp(nll / float64(n))
}

// TestQuantizedPerplexity measures the perplexity of stories260K in float32 and in each format
// (group 64) on two texts: (a) 64 stories of 256 tokens sampled at temperature 1 (seed 7) from
// the float32 model, i.e. text from the distribution the model was trained to match, on which
// float32 is the best possible model in expectation, so each format's excess is its KL
// divergence from float32; (b) the six greedy continuations of llama2.c's run.c in
// reference/greedy.jsonl. It prints the table of docs/PERF.md ("Quantization quality").
func TestQuantizedPerplexity(t *testing.T) {
	src := refdata.Stories260K(t)
	ref := loadStories(t)
	defer ref.Close()
	var sampled [][]int
	for i := range 64 {
		s := NewSampler(1, 0, 1, uint64(7+i))
		gen, err := Generate(ref, []int{1}, 255, s, nil, nil)
		if err != nil {
			t.Fatal(err)
		}
		sampled = append(sampled, append([]int{1}, gen...))
	}
	var greedy [][]int
	for _, g := range refdata.ReadJSONL[greedyRef](t, filepath.Join(src, "reference", "greedy.jsonl")) {
		greedy = append(greedy, append(slices.Clone(g.PromptIDs), g.GeneratedIDs...))
	}
	type row struct {
		name           string
		bits           float64
		sampled, greed float64
	}
	rows := []row{{"f32", 32, perplexity(t, ref, sampled), perplexity(t, ref, greedy)}}
	for _, f := range quantFormats {
		dir := quantizeStories(t, f.o)
		m, err := LoadWith(dir, cpu.New(), LoadOptions{Quantize: &f.o})
		if err != nil {
			t.Fatal(err)
		}
		rows = append(rows, row{f.name, m.WeightMemory().QuantizedBitsPerParam(), perplexity(t, m, sampled), perplexity(t, m, greedy)})
		m.Close()
	}
	var b strings.Builder
	fmt.Fprintf(&b, "| format | bits/param (Linear weights) | ppl, sampled stories (16,320 tokens) | Δ vs f32 | ppl, run.c greedy texts | Δ vs f32 |\n|---|---|---|---|---|---|\n")
	for _, r := range rows {
		fmt.Fprintf(&b, "| %s | %.3f | %.4f | %+.2f%% | %.4f | %+.2f%% |\n", r.name, r.bits, r.sampled,
			100*(r.sampled/rows[0].sampled-1), r.greed, 100*(r.greed/rows[0].greed-1))
	}
	t.Logf("perplexity of stories260K by format:\n%s", b.String())
	for _, r := range rows[1:] {
		if math.IsNaN(r.sampled) || r.sampled < rows[0].sampled*0.99 {
			t.Errorf("%s: perplexity %.4f on text sampled from f32 is below f32's %.4f by more than sampling noise", r.name, r.sampled, rows[0].sampled)
		}
	}
	// int8 is near-lossless; the 4-bit formats lose more.
	by := map[string]float64{}
	for _, r := range rows {
		by[r.name] = r.sampled
	}
	if by["int8"] > by["nf4"] || by["int8"] > by["int4"] {
		t.Errorf("int8 perplexity %.4f is not below the 4-bit formats' (nf4 %.4f, int4 %.4f)", by["int8"], by["nf4"], by["int4"])
	}
}

// TestQuantizeWithoutPackedStore: on a backend that cannot keep packed weights, a quantized base
// is uploaded as float32 with the quantization's values, giving the same logits.
func TestQuantizeWithoutPackedStore(t *testing.T) {
	src := refdata.Stories260K(t)
	o := quant.Options{Format: quant.Int4, GroupSize: 32}
	packed, err := LoadWith(src, cpu.New(), LoadOptions{Quantize: &o})
	if err != nil {
		t.Fatal(err)
	}
	defer packed.Close()
	plain, err := LoadWith(src, plainBackend{cpu.New()}, LoadOptions{Quantize: &o})
	if err != nil {
		t.Fatal(err)
	}
	defer plain.Close()
	if dt, _ := plain.WeightDType("model.layers.0.self_attn.q_proj.weight"); dt != backend.F32 {
		t.Fatalf("q_proj stored as %s on a backend without PackedStore", dt)
	}
	tokens := []int{1, 338, 401, 396, 267, 337, 410, 408, 419}
	a, err := packed.ForwardAll(tokens)
	if err != nil {
		t.Fatal(err)
	}
	b, err := plain.ForwardAll(tokens)
	if err != nil {
		t.Fatal(err)
	}
	if !slices.Equal(a, b) {
		t.Fatal("packed and float32 uploads of the same quantized base give other logits")
	}
}

// TestForeignQuantization: a folder that config.json says is quantized by another tool, or by
// loractl but without the weights' metadata, is a clear error.
func TestForeignQuantization(t *testing.T) {
	src := refdata.Stories260K(t)
	for _, c := range []struct{ method, want string }{{"bitsandbytes", "cannot read"}, {quant.QuantMethod, "re-create"}} {
		dir := filepath.Join(t.TempDir(), "m")
		copyFolder(t, src, dir)
		raw, _ := os.ReadFile(filepath.Join(dir, "config.json"))
		var cfg map[string]any
		if err := json.Unmarshal(raw, &cfg); err != nil {
			t.Fatal(err)
		}
		cfg["quantization_config"] = map[string]any{"quant_method": c.method, "load_in_4bit": true}
		raw, _ = json.Marshal(cfg)
		if err := os.WriteFile(filepath.Join(dir, "config.json"), raw, 0o644); err != nil {
			t.Fatal(err)
		}
		_, err := Load(dir, cpu.New())
		if err == nil || !strings.Contains(err.Error(), c.want) || !strings.Contains(err.Error(), "config.json") {
			t.Errorf("quant_method %s: %v", c.method, err)
		}
	}
}
