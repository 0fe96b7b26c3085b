package main

import (
	"bytes"
	"encoding/json"
	"math"
	"slices"
	"testing"

	"github.com/loractl/loractl/internal/lora"
	"github.com/loractl/loractl/internal/model"
)

// TestBatchMatchesTorch pins the token ids to the values bench_torch.py draws from the same
// seed, so both halves of the benchmark train on the same data.
func TestBatchMatchesTorch(t *testing.T) {
	b := makeBatch(1234, 4, 256, 32000)
	if got, want := b.Tokens[:5], []int{31195, 28964, 9946, 22579, 13989}; !slices.Equal(got, want) {
		t.Errorf("first inputs %v, want %v (bench_torch.py make_batch)", got, want)
	}
	if got, want := b.Targets[4*256-3:], []int{23813, 28610, 1079}; !slices.Equal(got, want) {
		t.Errorf("last targets %v, want %v (bench_torch.py make_batch)", got, want)
	}
	for r := 0; r < 4; r++ {
		if !slices.Equal(b.Tokens[r*256+1:(r+1)*256], b.Targets[r*256:(r+1)*256-1]) {
			t.Fatalf("row %d: targets are not the next tokens", r)
		}
	}
}

// TestFLOPsPerToken checks the formula against bench_torch.py and the figures of issue 4
// (2046 tok/s = 141 GFLOP/s on stories15M, 297 tok/s = 184 GFLOP/s on SmolLM-135M).
func TestFLOPsPerToken(t *testing.T) {
	for _, c := range []struct {
		shape     string
		flops     float64
		trainable int
	}{{"stories15m", 69212160, 525312}, {"smollm135m", 620310528, 4884480}} {
		s := shapes[c.shape]
		cfg := &model.Config{HiddenSize: s.Dim, IntermediateSize: s.FFN, NumHiddenLayers: s.Layers,
			NumAttentionHeads: s.Heads, NumKeyValueHeads: s.KV, HeadDim: s.Dim / s.Heads, VocabSize: s.Vocab}
		mods, err := lora.Select(lora.Modules(cfg), []string{"all-linear"}, nil)
		if err != nil {
			t.Fatal(err)
		}
		if got := FLOPsPerToken(cfg, mods, 16, 256); got != c.flops {
			t.Errorf("%s: %g FLOPs/token, want %g", c.shape, got, c.flops)
		}
		n := 0
		for _, m := range mods {
			n += 16 * (m.In + m.Out)
		}
		if n != c.trainable {
			t.Errorf("%s: %d LoRA parameters, want %d", c.shape, n, c.trainable)
		}
	}
}

// TestBenchTiny runs the whole benchmark on a tiny shape: the model is written, loads, trains,
// and the first loss is near ln(vocab).
func TestBenchTiny(t *testing.T) {
	shapes["tiny"] = shape{Name: "tiny", Dim: 32, Layers: 2, Heads: 4, KV: 2, FFN: 64, Vocab: 100}
	defer delete(shapes, "tiny")
	dir := t.TempDir()
	if err := writeModel(dir, shapes["tiny"], 16, 1, "f32"); err != nil {
		t.Fatal(err)
	}
	var out, errb bytes.Buffer
	// -model-dir with a model already there: no child process is started.
	if err := run([]string{"-shape", "tiny", "-seq", "16", "-batch", "2", "-r", "4", "-warmup", "1",
		"-steps", "2", "-threads", "2", "-model-dir", dir}, &out, &errb); err != nil {
		t.Fatalf("%v\n%s", err, errb.String())
	}
	var r Result
	if err := json.Unmarshal(out.Bytes(), &r); err != nil {
		t.Fatalf("%v: %s", err, out.String())
	}
	if r.TokensPerS <= 0 || r.Trainable != 2*(4*((32+32)+(32+16)+(32+16)+(32+32)+(32+64)+(32+64)+(64+32))) {
		t.Errorf("bad result %+v", r)
	}
	if math.Abs(r.LossFirst-math.Log(100)) > 0.1 {
		t.Errorf("first loss %g, want about ln 100 = %g", r.LossFirst, math.Log(100))
	}
}

// TestBenchTinyBF16 runs the benchmark with -dtype bf16 on a tiny shape and checks that keeping
// the frozen weights in BF16 changes nothing but memory: on the same BF16 checkpoint, a LoRA
// training step sequence gives bitwise the same losses whether the weights are converted to F32
// at load or kept in BF16.
func TestBenchTinyBF16(t *testing.T) {
	shapes["tiny"] = shape{Name: "tiny", Dim: 32, Layers: 2, Heads: 4, KV: 2, FFN: 64, Vocab: 100}
	defer delete(shapes, "tiny")
	dir := t.TempDir()
	if err := writeModel(dir, shapes["tiny"], 16, 1, "bf16"); err != nil {
		t.Fatal(err)
	}
	args := []string{"-shape", "tiny", "-seq", "16", "-batch", "2", "-r", "4", "-warmup", "1",
		"-steps", "2", "-threads", "2", "-model-dir", dir, "-dtype", "bf16"}
	var out, errb bytes.Buffer
	// The kept model matches shape and dtype: no child process is started.
	if err := run(args, &out, &errb); err != nil {
		t.Fatalf("%v\n%s", err, errb.String())
	}
	var r Result
	if err := json.Unmarshal(out.Bytes(), &r); err != nil {
		t.Fatalf("%v: %s", err, out.String())
	}
	if r.DType != "bf16" || r.TokensPerS <= 0 || math.Abs(r.LossFirst-math.Log(100)) > 0.1 {
		t.Errorf("bad result %+v", r)
	}

	// The same BF16 checkpoint converted to F32 at load (bench with the f32 loader).
	o := options{shape: "tiny", dtype: "f32", threads: 2, warmup: 1, steps: 2, batch: 2, seq: 16, r: 4,
		alpha: 32, lr: 2e-4, seed: 1, dataSeed: 1234, peakGFLOPS: 1}
	r32, err := bench(dir, shapes["tiny"], o)
	if err != nil {
		t.Fatal(err)
	}
	if r32.LossFirst != r.LossFirst || r32.LossLast != r.LossLast {
		t.Errorf("losses with BF16 weights kept %v, %v; converted to F32 %v, %v: want them bitwise equal",
			r.LossFirst, r.LossLast, r32.LossFirst, r32.LossLast)
	}
	if r.LossLast == r.LossFirst {
		t.Error("the loss did not move: the steps are not training")
	}
}
