package merge

import (
	"bytes"
	"encoding/json"
	"errors"
	"math"
	"os"
	"path/filepath"
	"strings"
	"syscall"
	"testing"

	"github.com/loractl/loractl/internal/backend/cpu"
	"github.com/loractl/loractl/internal/linalg"
	"github.com/loractl/loractl/internal/lora"
	"github.com/loractl/loractl/internal/model"
	"github.com/loractl/loractl/internal/quant"
	"github.com/loractl/loractl/internal/safetensors"
	"github.com/loractl/loractl/internal/synth"
)

// TestSVDThroughRun: at the full rank the svd merge is the linear one (to float32 rounding);
// at rank 2 each merged update W'−W0 has the two largest singular values of the exact sum
// and (to rounding noise) no others.
func TestSVDThroughRun(t *testing.T) {
	base := stories(t)
	a1, d1 := newAdapter(t, base, []string{"q_proj", "down_proj"}, 4, 8, false, 31)
	a2, d2 := newAdapter(t, base, []string{"q_proj"}, 3, 3, false, 32)
	specs := []AdapterSpec{{d1, 1}, {d2, 0.5}}
	lin, full, low := outDir(t), outDir(t), outDir(t)
	mustRun(t, Options{Base: base, Adapters: specs, Out: lin})
	mustRun(t, Options{Base: base, Adapters: specs, Out: full, Method: SVD, Rank: 7})
	mustRun(t, Options{Base: base, Adapters: specs, Out: low, Method: SVD, Rank: 2})
	tl, tf, tlow := func() map[string][]float64 { m, _ := tensors(t, lin); return m }(), func() map[string][]float64 { m, _ := tensors(t, full); return m }(), func() map[string][]float64 { m, _ := tensors(t, low); return m }()
	w0, infos := tensors(t, base)
	worst := 0.0
	for n := range tl {
		worst = math.Max(worst, maxRel(tf[n], tl[n]))
	}
	t.Logf("svd at full rank vs linear: max rel %.3g", worst)
	if worst > 1e-6 {
		t.Fatalf("svd at full rank differs from linear by %.3g", worst)
	}
	name := "model.layers.2.self_attn.q_proj.weight"
	out, in := infos[name].Shape[0], infos[name].Shape[1]
	exact := exactDelta([]*lora.Adapter{a1, a2}, []float64{1, 0.5}, name)
	_, sExact, _ := linalg.SVD(exact, out, in)
	diff := make([]float64, len(exact))
	for i := range diff {
		diff[i] = tlow[name][i] - w0[name][i]
	}
	_, sGot, _ := linalg.SVD(diff, out, in)
	t.Logf("%s: exact σ %.4g %.4g %.4g; rank-2 merge σ %.4g %.4g %.4g", name, sExact[0], sExact[1], sExact[2], sGot[0], sGot[1], sGot[2])
	for j := 0; j < 2; j++ {
		if math.Abs(sGot[j]-sExact[j]) > 1e-4*sExact[0] {
			t.Fatalf("σ_%d of the rank-2 update = %v, want %v", j, sGot[j], sExact[j])
		}
	}
	if sGot[2] > 1e-4*sExact[0] || sExact[2] < 1e-2*sExact[0] {
		t.Fatalf("rank-2 update has σ_3 = %v (exact σ_3 %v)", sGot[2], sExact[2])
	}
}

// TestTIESAndDAREThroughRun: ties equals the kernels applied to the exact task vectors, and
// dare is reproducible from its seed (and changes with it).
func TestTIESAndDAREThroughRun(t *testing.T) {
	base := stories(t)
	a1, d1 := newAdapter(t, base, []string{"v_proj", "up_proj"}, 4, 8, false, 41)
	a2, d2 := newAdapter(t, base, []string{"v_proj"}, 2, 2, false, 42)
	specs := []AdapterSpec{{d1, 1}, {d2, -0.8}}
	ties := outDir(t)
	mustRun(t, Options{Base: base, Adapters: specs, Out: ties, Method: TIES, Density: 0.3})
	got, _ := tensors(t, ties)
	w0, _ := tensors(t, base)
	for _, name := range []string{"model.layers.0.self_attn.v_proj.weight", "model.layers.3.mlp.up_proj.weight"} {
		var tasks [][]float64
		for i, a := range []*lora.Adapter{a1, a2} {
			if d := exactDelta([]*lora.Adapter{a}, []float64{specs[i].Weight}, name); d != nil {
				trimTopK(d, int(0.3*float64(len(d))))
				tasks = append(tasks, d)
			}
		}
		merged := make([]float64, len(tasks[0]))
		electAndMerge(tasks, merged)
		kept := 0
		for i := range merged {
			if want := float64(float32(w0[name][i] + merged[i])); got[name][i] != want {
				t.Fatalf("ties %s[%d] = %v, want %v", name, i, got[name][i], want)
			}
			if got[name][i] != w0[name][i] {
				kept++
			}
		}
		t.Logf("ties %s: %d of %d entries changed (%d tasks, density 0.3)", name, kept, len(merged), len(tasks))
	}
	for _, m := range []Method{DARELinear, DARETIES} {
		a, b, c := outDir(t), outDir(t), outDir(t)
		mustRun(t, Options{Base: base, Adapters: specs, Out: a, Method: m, Density: 0.4, Seed: 7})
		mustRun(t, Options{Base: base, Adapters: specs, Out: b, Method: m, Density: 0.4, Seed: 7})
		mustRun(t, Options{Base: base, Adapters: specs, Out: c, Method: m, Density: 0.4, Seed: 8})
		ra, rb, rc := rawTensors(t, a), rawTensors(t, b), rawTensors(t, c)
		n := "model.layers.1.self_attn.v_proj.weight"
		if !bytes.Equal(ra[n], rb[n]) || bytes.Equal(ra[n], rc[n]) {
			t.Fatalf("%s: same seed equal %v, other seed differs %v", m, bytes.Equal(ra[n], rb[n]), !bytes.Equal(ra[n], rc[n]))
		}
	}
}

// TestShardedRoundTrip: a small --max-shard-size gives shards and an index that
// OpenCheckpoint reads back to exactly the single-file merge.
func TestShardedRoundTrip(t *testing.T) {
	base := stories(t)
	_, d1 := newAdapter(t, base, []string{"all-linear"}, 4, 8, false, 51)
	single, sharded := outDir(t), outDir(t)
	mustRun(t, Options{Base: base, Adapters: []AdapterSpec{{d1, 1}}, Out: single})
	const max = 200_000
	sum := mustRun(t, Options{Base: base, Adapters: []AdapterSpec{{d1, 1}}, Out: sharded, MaxShardSize: max})
	if len(sum.Files) < 4 {
		t.Fatalf("%d shard files for %d bytes at %d per shard", len(sum.Files), sum.OutputBytes, max)
	}
	if _, err := os.Stat(filepath.Join(sharded, safetensors.SingleFile)); err == nil {
		t.Fatal("a sharded output also has model.safetensors")
	}
	var idx struct {
		Metadata  map[string]any    `json:"metadata"`
		WeightMap map[string]string `json:"weight_map"`
	}
	raw, err := os.ReadFile(filepath.Join(sharded, safetensors.IndexFile))
	if err != nil {
		t.Fatal(err)
	}
	if err := json.Unmarshal(raw, &idx); err != nil {
		t.Fatal(err)
	}
	if idx.Metadata["total_size"] != float64(sum.OutputBytes) {
		t.Fatalf("total_size %v, want %d", idx.Metadata["total_size"], sum.OutputBytes)
	}
	want := rawTensors(t, single)
	got := rawTensors(t, sharded)
	if len(got) != len(want) || len(idx.WeightMap) != len(want) {
		t.Fatalf("%d tensors sharded, %d in the index, %d single", len(got), len(idx.WeightMap), len(want))
	}
	for n, b := range want {
		if !bytes.Equal(got[n], b) {
			t.Fatalf("%s differs between sharded and single output", n)
		}
	}
	for i, f := range sum.Files {
		if wantName := "model-0000" + string(rune('1'+i)) + "-of-0000" + string(rune('0'+len(sum.Files))) + ".safetensors"; f != wantName {
			t.Fatalf("shard %d is %s, want %s", i, f, wantName)
		}
		sf, err := safetensors.Open(filepath.Join(sharded, f))
		if err != nil {
			t.Fatal(err)
		}
		var n int64
		for _, ti := range sf.Tensors() {
			n += ti.NumBytes()
		}
		sf.Close()
		if n > max {
			t.Fatalf("%s holds %d tensor bytes, over %d", f, n, max)
		}
	}
	m, err := model.Load(sharded, cpu.New())
	if err != nil {
		t.Fatal(err)
	}
	m.Close()
}

// TestRoundedOnce: BF16 and F16 outputs are W0 + Σ wᵢsᵢBᵢAᵢ rounded once (checked against
// math/big's correctly rounded value), and config.json says so.
func TestRoundedOnce(t *testing.T) {
	base := stories(t)
	a1, d1 := newAdapter(t, base, []string{"all-linear"}, 4, 8, false, 61)
	w0, _ := tensors(t, base)
	for _, c := range []struct {
		dtype string
		dt    safetensors.DType
		prec  uint
		torch string
	}{{"bf16", safetensors.BF16, 8, "bfloat16"}, {"f16", safetensors.F16, 11, "float16"}} {
		out := outDir(t)
		mustRun(t, Options{Base: base, Adapters: []AdapterSpec{{d1, 0.9}}, Out: out, DType: c.dtype})
		got, infos := tensors(t, out)
		checked, twice := 0, 0
		for name, b := range w0 {
			if infos[name].DType != c.dt {
				t.Fatalf("%s is %s, want %s", name, infos[name].DType, c.dt)
			}
			d := exactDelta([]*lora.Adapter{a1}, []float64{0.9}, name)
			for i := range b {
				x := b[i]
				if d != nil {
					x += d[i]
				}
				if math.Abs(x) < 6.2e-5 && c.dt == safetensors.F16 {
					continue // F16 subnormals have fewer bits than prec says
				}
				if want := roundRef(x, c.prec); got[name][i] != want {
					t.Fatalf("%s %s[%d] = %v, want %v (of %v)", c.dtype, name, i, got[name][i], want, x)
				}
				if roundRef(float64(float32(x)), c.prec) != roundRef(x, c.prec) {
					twice++
				}
				checked++
			}
		}
		t.Logf("%s: %d values correctly rounded; rounding through float32 first would have changed %d", c.dtype, checked, twice)
		var cfg map[string]any
		raw, _ := os.ReadFile(filepath.Join(out, "config.json"))
		if err := json.Unmarshal(raw, &cfg); err != nil || cfg["torch_dtype"] != c.torch {
			t.Fatalf("config.json torch_dtype %v (%v), want %s", cfg["torch_dtype"], err, c.torch)
		}
	}
}

// TestOutputFolder: config.json, tokenizer files (chat template kept) and generation_config.json
// with the right EOS, from the base's generation_config, config.json or tokenizer.
func TestOutputFolder(t *testing.T) {
	st := stories(t)
	shape := synth.LlamaShape{Dim: 32, Layers: 2, Heads: 4, KVHeads: 2, Hidden: 64, Vocab: 512}
	for _, c := range []struct {
		name    string
		gen     string // the base's generation_config.json, "" for none
		cfgEOS  bool   // keep eos_token_id in config.json
		wantEOS float64
	}{
		{"base generation_config", `{"bos_token_id": 1, "eos_token_id": 7, "temperature": 0.6}`, true, 7},
		{"from config.json", "", true, 2},
		{"from tokenizer_config", "", false, 2},
		{"generation_config without eos", `{"temperature": 0.6}`, false, 2},
	} {
		t.Run(c.name, func(t *testing.T) {
			base := synthBase(t, shape, 3)
			for _, f := range []string{"tokenizer.json", "tokenizer.model"} {
				b, _ := os.ReadFile(filepath.Join(st, f))
				os.WriteFile(filepath.Join(base, f), b, 0o644)
			}
			var tc map[string]any
			b, _ := os.ReadFile(filepath.Join(st, "tokenizer_config.json"))
			json.Unmarshal(b, &tc)
			tc["chat_template"] = "{% for m in messages %}<s>{{ m['content'] }}</s>{% endfor %}"
			tcb, _ := json.MarshalIndent(tc, "", "  ")
			os.WriteFile(filepath.Join(base, "tokenizer_config.json"), tcb, 0o644)
			if c.gen != "" {
				os.WriteFile(filepath.Join(base, generationFile), []byte(c.gen), 0o644)
			}
			if !c.cfgEOS {
				var cfg map[string]any
				b, _ := os.ReadFile(filepath.Join(base, "config.json"))
				json.Unmarshal(b, &cfg)
				delete(cfg, "eos_token_id")
				b, _ = json.Marshal(cfg)
				os.WriteFile(filepath.Join(base, "config.json"), b, 0o644)
			}
			_, ad := newAdapter(t, base, []string{"q_proj"}, 2, 4, false, 5)
			out := outDir(t)
			var log bytes.Buffer
			mustRun(t, Options{Base: base, Adapters: []AdapterSpec{{ad, 1}}, Out: out, DType: "bf16", Log: &log})
			for _, f := range []string{"tokenizer.json", "tokenizer.model", "tokenizer_config.json"} {
				a, _ := os.ReadFile(filepath.Join(base, f))
				b, err := os.ReadFile(filepath.Join(out, f))
				if err != nil || !bytes.Equal(a, b) {
					t.Fatalf("%s not copied unchanged (%v)", f, err)
				}
			}
			var gen, cfg map[string]any
			gb, err := os.ReadFile(filepath.Join(out, generationFile))
			if err != nil || json.Unmarshal(gb, &gen) != nil {
				t.Fatalf("generation_config.json: %v\n%s", err, gb)
			}
			if gen["eos_token_id"] != c.wantEOS {
				t.Fatalf("eos_token_id %v, want %v\n%s", gen["eos_token_id"], c.wantEOS, gb)
			}
			if c.gen != "" && gen["temperature"] != 0.6 {
				t.Fatalf("the base's generation settings were lost: %s", gb)
			}
			cb, _ := os.ReadFile(filepath.Join(out, "config.json"))
			if json.Unmarshal(cb, &cfg) != nil || cfg["torch_dtype"] != "bfloat16" || cfg["hidden_size"] != float64(32) {
				t.Fatalf("config.json: %s", cb)
			}
			if _, err := model.LoadConfig(out); err != nil {
				t.Fatal(err)
			}
		})
	}
}

// limitedCreate makes files that fail with ENOSPC once budget bytes in all have been written.
func limitedCreate(budget int64) func(string) (outFile, error) {
	left := budget
	return func(path string) (outFile, error) {
		f, err := os.OpenFile(path, os.O_WRONLY|os.O_CREATE|os.O_EXCL, 0o644)
		if err != nil {
			return nil, err
		}
		return &limitedFile{File: f, left: &left}, nil
	}
}

type limitedFile struct {
	*os.File
	left *int64
}

func (f *limitedFile) Write(p []byte) (int, error) {
	if int64(len(p)) > *f.left {
		n, _ := f.File.Write(p[:*f.left])
		*f.left = 0
		return n, &os.PathError{Op: "write", Path: f.Name(), Err: syscall.ENOSPC}
	}
	*f.left -= int64(len(p))
	return f.File.Write(p)
}

// TestDiskFullLeavesNothing: a write failure at any point (header, mid-tensor, a later shard,
// the side files) leaves no output and no temporary folder, and an existing --out untouched.
func TestDiskFullLeavesNothing(t *testing.T) {
	base := stories(t)
	_, d1 := newAdapter(t, base, []string{"all-linear"}, 4, 8, false, 71)
	ok := mustRun(t, Options{Base: base, Adapters: []AdapterSpec{{d1, 1}}, Out: outDir(t), MaxShardSize: 300_000})
	total := ok.OutputBytes
	for _, budget := range []int64{0, 100, total / 3, total - 1000, total + 2000} {
		for _, existing := range []bool{false, true} {
			parent := t.TempDir()
			out := filepath.Join(parent, "merged")
			if existing {
				os.MkdirAll(out, 0o755)
				os.WriteFile(filepath.Join(out, "keep.txt"), []byte("old"), 0o644)
			}
			_, err := Run(Options{Base: base, Adapters: []AdapterSpec{{d1, 1}}, Out: out, MaxShardSize: 300_000, Overwrite: existing, create: limitedCreate(budget)})
			if err == nil || !errors.Is(err, syscall.ENOSPC) || !strings.Contains(err.Error(), "disk is full") {
				t.Fatalf("budget %d: err %v, want a disk-full error", budget, err)
			}
			entries, _ := os.ReadDir(parent)
			if existing {
				b, rerr := os.ReadFile(filepath.Join(out, "keep.txt"))
				if len(entries) != 1 || rerr != nil || string(b) != "old" {
					t.Fatalf("budget %d: the existing output was changed (%d entries, %v)", budget, len(entries), rerr)
				}
			} else if len(entries) != 0 {
				t.Fatalf("budget %d: %d entries left beside --out (%s)", budget, len(entries), entries[0].Name())
			}
		}
	}
}

// TestExistingOut: an existing --out is refused without --overwrite and replaced with it;
// an --out that is an input is refused either way.
func TestExistingOut(t *testing.T) {
	base := stories(t)
	_, d1 := newAdapter(t, base, []string{"q_proj"}, 2, 4, false, 81)
	out := outDir(t)
	os.MkdirAll(out, 0o755)
	os.WriteFile(filepath.Join(out, "old.txt"), []byte("x"), 0o644)
	_, err := Run(Options{Base: base, Adapters: []AdapterSpec{{d1, 1}}, Out: out})
	if err == nil || !strings.Contains(err.Error(), "already exists") || !strings.Contains(err.Error(), "--overwrite") {
		t.Fatalf("err %v", err)
	}
	mustRun(t, Options{Base: base, Adapters: []AdapterSpec{{d1, 1}}, Out: out, Overwrite: true})
	if _, err := os.Stat(filepath.Join(out, "old.txt")); err == nil {
		t.Fatal("--overwrite kept the old folder's files")
	}
	if _, err := os.Stat(filepath.Join(out, safetensors.SingleFile)); err != nil {
		t.Fatal(err)
	}
	entries, _ := os.ReadDir(filepath.Dir(out))
	if len(entries) != 1 {
		t.Fatalf("%d entries beside --out after --overwrite", len(entries))
	}
	for _, bad := range []string{base, d1, filepath.Dir(d1)} {
		if _, err := Run(Options{Base: base, Adapters: []AdapterSpec{{d1, 1}}, Out: bad, Overwrite: true}); err == nil || !strings.Contains(err.Error(), "input") {
			t.Fatalf("--out %s: err %v", bad, err)
		}
	}
}

// TestBadInputs: each broken input gives an error that names the file and says what to do.
func TestBadInputs(t *testing.T) {
	base := stories(t)
	good, gd := newAdapter(t, base, []string{"q_proj", "v_proj"}, 4, 8, false, 91)
	_, r2 := newAdapter(t, base, []string{"q_proj"}, 2, 8, false, 92)

	// An adapter with a NaN in lora_B.
	good.Pairs[1].B[5] = float32(math.NaN())
	nanDir := filepath.Join(t.TempDir(), "nan-adapter")
	if err := good.Save(nanDir); err != nil {
		t.Fatal(err)
	}
	// An adapter of another base (another hidden size).
	other := synthBase(t, synth.LlamaShape{Dim: 32, Layers: 2, Heads: 4, KVHeads: 2, Hidden: 64, Vocab: 512}, 1)
	_, otherAd := newAdapter(t, other, []string{"q_proj"}, 2, 4, false, 93)
	// An adapter whose fingerprint names another base, with matching shapes.
	fa, _ := newAdapter(t, base, []string{"q_proj"}, 2, 4, false, 94)
	fa.Config.Fingerprint = "arch1:" + strings.Repeat("0", 64)
	fpDir := filepath.Join(t.TempDir(), "fp-adapter")
	fa.Save(fpDir)
	// A base with a NaN in one tensor.
	nanBase := synthBase(t, synth.LlamaShape{Dim: 32, Layers: 2, Heads: 4, KVHeads: 2, Hidden: 64, Vocab: 512}, 2)
	ts, _, _ := synth.LlamaTensors(synth.LlamaShape{Dim: 32, Layers: 2, Heads: 4, KVHeads: 2, Hidden: 64, Vocab: 512}, 0.02, 2)
	for i := range ts {
		if ts[i].Name == "model.layers.1.mlp.up_proj.weight" {
			ts[i].Data[4*77+3] = 0x7f
			ts[i].Data[4*77+2] = 0xc0
		}
	}
	safetensors.Write(filepath.Join(nanBase, "model.safetensors"), ts, map[string]string{"format": "pt"})
	_, nanBaseAd := newAdapter(t, nanBase, []string{"q_proj"}, 2, 4, false, 95)
	// A base quantized by another tool.
	bnb := synthBase(t, synth.LlamaShape{Dim: 32, Layers: 2, Heads: 4, KVHeads: 2, Hidden: 64, Vocab: 512}, 3)
	cb, _ := os.ReadFile(filepath.Join(bnb, "config.json"))
	cb = bytes.Replace(cb, []byte(`"model_type"`), []byte(`"quantization_config": {"quant_method": "bitsandbytes", "load_in_4bit": true}, "model_type"`), 1)
	os.WriteFile(filepath.Join(bnb, "config.json"), cb, 0o644)

	for _, c := range []struct {
		name string
		opt  Options
		want []string
	}{
		{"nan adapter", Options{Base: base, Adapters: []AdapterSpec{{nanDir, 1}}}, []string{nanDir, "adapter_model.safetensors", "v_proj.lora_B.weight", "NaN"}},
		{"other base", Options{Base: base, Adapters: []AdapterSpec{{otherAd, 1}}}, []string{otherAd, "q_proj", "--base"}},
		{"fingerprint", Options{Base: base, Adapters: []AdapterSpec{{fpDir, 1}}}, []string{fpDir, "different base model"}},
		{"nan base", Options{Base: nanBase, Adapters: []AdapterSpec{{nanBaseAd, 1}}}, []string{"model.safetensors", "model.layers.1.mlp.up_proj.weight", "NaN", "[2 13]"}},
		{"cat ranks", Options{Base: base, Adapters: []AdapterSpec{{gd, 1}, {r2, 1}}, Method: Cat}, []string{"cat", "r=4", "r=2", "--method linear"}},
		{"weight", Options{Base: base, Adapters: []AdapterSpec{{gd, math.Inf(1)}}}, []string{gd, "finite number"}},
		{"density", Options{Base: base, Adapters: []AdapterSpec{{gd, 1}}, Method: TIES, Density: 1.5}, []string{"--density"}},
		{"rank", Options{Base: base, Adapters: []AdapterSpec{{gd, 1}}, Rank: 3}, []string{"--rank", "svd"}},
		{"method", Options{Base: base, Adapters: []AdapterSpec{{gd, 1}}, Method: "avg"}, []string{"avg", "ties"}},
		{"dtype", Options{Base: base, Adapters: []AdapterSpec{{gd, 1}}, DType: "int8"}, []string{"int8", "bf16"}},
		{"no adapter dir", Options{Base: base, Adapters: []AdapterSpec{{filepath.Join(t.TempDir(), "nope"), 1}}}, []string{"nope", "adapter_config.json"}},
		{"foreign quantization", Options{Base: bnb, Adapters: []AdapterSpec{{gd, 1}}}, []string{bnb, "bitsandbytes", "not supported"}},
	} {
		t.Run(c.name, func(t *testing.T) {
			c.opt.Out = outDir(t)
			_, err := Run(c.opt)
			if err == nil {
				t.Fatal("no error")
			}
			for _, w := range c.want {
				if !strings.Contains(err.Error(), w) {
					t.Fatalf("error %q does not mention %q", err, w)
				}
			}
			if _, serr := os.Stat(c.opt.Out); serr == nil {
				t.Fatal("a failed merge left its output")
			}
		})
	}
}

// TestQuantizedBase: a base written by loractl quantize is dequantized, said so on the log, and
// the merge equals the dequantized base with the adapter applied.
func TestQuantizedBase(t *testing.T) {
	base := stories(t)
	qdir := filepath.Join(t.TempDir(), "nf4")
	if _, err := quant.QuantizeFolder(base, qdir, quant.Options{Format: quant.NF4, GroupSize: 64, DoubleQuant: true}, false); err != nil {
		t.Fatal(err)
	}
	a, ad := newAdapter(t, base, []string{"all-linear"}, 4, 8, false, 101)
	out := outDir(t)
	var log bytes.Buffer
	sum := mustRun(t, Options{Base: qdir, Adapters: []AdapterSpec{{ad, 1}}, Out: out, Log: &log})
	if !strings.Contains(log.String(), "quantized") || !strings.Contains(log.String(), "dequantized") || sum.Quantized == "" {
		t.Fatalf("the log does not say the base was dequantized: %q", log.String())
	}
	cb, _ := os.ReadFile(filepath.Join(out, "config.json"))
	if bytes.Contains(cb, []byte("quantization_config")) {
		t.Fatal("the merged config.json still has a quantization_config")
	}
	be := cpu.New()
	ref, err := model.Load(qdir, be)
	if err != nil {
		t.Fatal(err)
	}
	defer ref.Close()
	if err := a.MergeInto(ref); err != nil {
		t.Fatal(err)
	}
	m, err := model.Load(out, be)
	if err != nil {
		t.Fatal(err)
	}
	defer m.Close()
	tokens := []int{1, 403, 407, 261, 378, 395, 266, 3, 99}
	want, _ := ref.ForwardAll(tokens)
	got, _ := m.ForwardAll(tokens)
	rel := maxRel(f64(got), f64(want))
	t.Logf("merged onto nf4 vs dequantized nf4 + adapter: max rel %.3g", rel)
	if rel > 1e-5 {
		t.Fatalf("max rel %.3g", rel)
	}
}
