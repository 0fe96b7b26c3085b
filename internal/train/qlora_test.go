package train

import (
	"bytes"
	"context"
	"errors"
	"math"
	"path/filepath"
	"regexp"
	"slices"
	"strconv"
	"strings"
	"testing"

	"github.com/loractl/loractl/internal/backend/cpu"
	"github.com/loractl/loractl/internal/config"
	"github.com/loractl/loractl/internal/lora"
	"github.com/loractl/loractl/internal/model"
	"github.com/loractl/loractl/internal/quant"
	"github.com/loractl/loractl/internal/safetensors"
)

// qloraConfig is tinyConfig on a quantized base.
func qloraConfig(t *testing.T, out string, steps int, format string, dq bool) *config.Train {
	t.Helper()
	c := tinyConfig(t, out, steps)
	c.Model.Quantize, c.Model.DoubleQuant = format, dq
	if err := c.Validate(); err != nil {
		t.Fatal(err)
	}
	return c
}

// TestQLoRALearns: a short QLoRA run on an NF4 base lowers the eval loss and writes an ordinary
// PEFT adapter.
func TestQLoRALearns(t *testing.T) {
	out := filepath.Join(t.TempDir(), "qlora")
	c := qloraConfig(t, out, 12, "nf4", false)
	res, err := Run(context.Background(), c, Options{})
	if err != nil {
		t.Fatal(err)
	}
	t.Logf("QLoRA nf4: loss %.4f at the end, eval %.4f -> %.4f, %.0f tokens/s", res.Loss, res.EvalLossStart, res.EvalLoss, res.TokensPerS)
	if !(res.EvalLoss < res.EvalLossStart) {
		t.Fatalf("QLoRA did not learn: eval %.4f -> %.4f", res.EvalLossStart, res.EvalLoss)
	}
	a, err := lora.Load(out)
	if err != nil || len(a.Pairs) != 35 {
		t.Fatalf("adapter: %v", err)
	}
}

// TestQLoRADryRunMemory: --dry-run reports the base weights' bits per parameter of each format.
func TestQLoRADryRunMemory(t *testing.T) {
	re := regexp.MustCompile(`quantized Linear weights \((\w+)\): [0-9.]+ MiB for (\d+) parameters, ([0-9.]+) bits/param`)
	for _, f := range []struct {
		format string
		dq     bool
	}{{"nf4", false}, {"nf4", true}, {"int8", false}, {"int4", false}} {
		c := qloraConfig(t, filepath.Join(t.TempDir(), "dry"), 5, f.format, f.dq)
		var log bytes.Buffer
		if _, err := Run(context.Background(), c, Options{DryRun: true, Log: &log}); err != nil {
			t.Fatal(err)
		}
		m := re.FindStringSubmatch(log.String())
		if m == nil {
			t.Fatalf("%s: the dry run does not report the quantized weights:\n%s", f.format, log.String())
		}
		bits, _ := strconv.ParseFloat(m[3], 64)
		want := quant.BitsPerParam(quant.Options{Format: quant.Format(f.format), GroupSize: 64, DoubleQuant: f.dq})
		t.Logf("%s dq=%v: %s parameters at %.3f bits/param (large-tensor limit %.3f)", f.format, f.dq, m[2], bits, want)
		if m[1] != f.format || math.Abs(bits-want) > 0.02 {
			t.Fatalf("%s dq=%v: %v bits/param, want about %.3f", f.format, f.dq, bits, want)
		}
	}
}

// TestLoftQStartsCloserToTheBase: with lora.init loftq, the adapted quantized model's eval loss
// before training is closer to the float32 base's than a plain QLoRA start (B = 0) is, the log
// reports the reconstruction errors, and the matching quantized base is written.
func TestLoftQStartsCloserToTheBase(t *testing.T) {
	dir := t.TempDir()
	evalStart := func(name string, set func(c *config.Train)) (float64, string) {
		c := tinyConfig(t, filepath.Join(dir, name), 1)
		c.LoRA.Dropout = 0
		set(c)
		if err := c.Validate(); err != nil {
			t.Fatal(err)
		}
		var log bytes.Buffer
		res, err := Run(context.Background(), c, Options{Log: &log})
		if err != nil {
			t.Fatal(err)
		}
		return res.EvalLossStart, log.String()
	}
	f32, _ := evalStart("f32", func(*config.Train) {})
	plain, _ := evalStart("plain", func(c *config.Train) { c.Model.Quantize = "int4" })
	loftq, log := evalStart("loftq", func(c *config.Train) {
		c.Model.Quantize, c.LoRA.Init, c.LoRA.LoftQIter = "int4", "loftq", 2
	})
	t.Logf("eval loss before training: f32 %.5f, int4 plain %.5f, int4 LoftQ %.5f", f32, plain, loftq)
	m := regexp.MustCompile(`loftq: 35 modules, 2 iteration\(s\): mean ‖W0 − \(W_q \+ s·BA\)‖/‖W0‖ ([0-9.]+) \(plain init, B = 0: ([0-9.]+)\)`).FindStringSubmatch(log)
	if m == nil {
		t.Fatalf("no LoftQ report in the log:\n%s", log)
	}
	el, _ := strconv.ParseFloat(m[1], 64)
	ep, _ := strconv.ParseFloat(m[2], 64)
	t.Logf("mean relative weight error: LoftQ %.5f, plain %.5f", el, ep)
	if !(el < ep) {
		t.Fatalf("LoftQ's weight error %.5f is not below the plain init's %.5f", el, ep)
	}
	if !(math.Abs(loftq-f32) < math.Abs(plain-f32)) {
		t.Fatalf("LoftQ start (eval %.5f) is not closer to f32 (%.5f) than the plain start (%.5f)", loftq, f32, plain)
	}

	// The adapter belongs to the written base: it loads, holds the int4 weights, and the adapter
	// fits and merges into it.
	base := filepath.Join(dir, "loftq", LoftQBaseDir)
	ck, err := safetensors.OpenCheckpoint(base)
	if err != nil {
		t.Fatal(err)
	}
	qi, err := quant.ReadInfo(ck)
	ck.Close()
	if err != nil || qi == nil || qi.Format != quant.Int4 {
		t.Fatalf("%s: quantization %+v, %v", base, qi, err)
	}
	mm, err := model.Load(base, cpu.New())
	if err != nil {
		t.Fatal(err)
	}
	defer mm.Close()
	a, err := lora.Load(filepath.Join(dir, "loftq"))
	if err != nil {
		t.Fatal(err)
	}
	if err := a.CheckBase(mm.Config(), base); err != nil {
		t.Fatal(err)
	}
	if err := a.MergeInto(mm); err != nil {
		t.Fatal(err)
	}
}

// TestQLoRAResumeIsBitwiseExact: an interrupted LoftQ QLoRA run resumes to the same adapter as
// a straight run (the quantized base and LoftQ's start are rebuilt identically).
func TestQLoRAResumeIsBitwiseExact(t *testing.T) {
	const n = 2
	cfg := func(out string) *config.Train {
		c := qloraConfig(t, out, 2*n, "nf4", true)
		c.LoRA.Init = "loftq"
		return c
	}
	straight := filepath.Join(t.TempDir(), "straight")
	if _, err := Run(context.Background(), cfg(straight), Options{}); err != nil {
		t.Fatal(err)
	}
	split := filepath.Join(t.TempDir(), "split")
	ctx, cancel := context.WithCancel(context.Background())
	_, err := Run(ctx, cfg(split), Options{Reporter: &stopAt{step: n, cancel: cancel}})
	if !errors.Is(err, ErrInterrupted) {
		t.Fatalf("interrupted run: %v", err)
	}
	if _, err := Run(context.Background(), cfg(split), Options{Resume: filepath.Join(split, "checkpoint-2")}); err != nil {
		t.Fatal(err)
	}
	a, _ := lora.Load(straight)
	b, err := lora.Load(split)
	if err != nil {
		t.Fatal(err)
	}
	for i := range a.Pairs {
		if !slices.Equal(a.Pairs[i].A, b.Pairs[i].A) || !slices.Equal(a.Pairs[i].B, b.Pairs[i].B) {
			t.Fatalf("%s differs between straight and resumed QLoRA runs", a.Pairs[i].Module.Path)
		}
	}
}

func TestQLoRABadInput(t *testing.T) {
	c := tinyConfig(t, filepath.Join(t.TempDir(), "x"), 2)
	c.Model.Quantize, c.LoRA.Method = "nf4", "full"
	if err := c.Validate(); err == nil || !strings.Contains(err.Error(), "lora.method") {
		t.Errorf("quantize with full fine-tuning: %v", err)
	}
	c = tinyConfig(t, filepath.Join(t.TempDir(), "y"), 2)
	c.LoRA.Init = "loftq"
	if err := c.Validate(); err == nil || !strings.Contains(err.Error(), "model.quantize") {
		t.Errorf("loftq without quantize: %v", err)
	}
	c = tinyConfig(t, filepath.Join(t.TempDir(), "z"), 2)
	c.Model.Quantize, c.Model.DoubleQuant = "int8", true
	if err := c.Validate(); err == nil || !strings.Contains(err.Error(), "double_quant") {
		t.Errorf("double_quant with int8: %v", err)
	}
	first := filepath.Join(t.TempDir(), "first")
	if _, err := Run(context.Background(), tinyConfig(t, first, 1), Options{}); err != nil {
		t.Fatal(err)
	}
	c = qloraConfig(t, filepath.Join(t.TempDir(), "w"), 2, "nf4", false)
	c.LoRA.Init = "loftq"
	if _, err := Run(context.Background(), c, Options{InitAdapter: first}); err == nil || !strings.Contains(err.Error(), "--init-adapter") {
		t.Errorf("loftq with --init-adapter: %v", err)
	}
	qdir := filepath.Join(t.TempDir(), "nf4")
	if _, err := quant.QuantizeFolder(c.Model.Path, qdir, quant.Options{Format: quant.NF4}, false); err != nil {
		t.Fatal(err)
	}
	c = qloraConfig(t, filepath.Join(t.TempDir(), "v"), 2, "nf4", false)
	c.Model.Path, c.LoRA.Init = qdir, "loftq"
	if _, err := Run(context.Background(), c, Options{}); err == nil || !strings.Contains(err.Error(), "already quantized") {
		t.Errorf("loftq on a quantized folder: %v", err)
	}
	// Plain QLoRA on a folder quantized in the same format trains on its packed weights.
	c = qloraConfig(t, filepath.Join(t.TempDir(), "u"), 2, "nf4", false)
	c.Model.Path = qdir
	if _, err := Run(context.Background(), c, Options{}); err != nil {
		t.Errorf("QLoRA on a quantized folder: %v", err)
	}
}

// TestQLoRAResumeNeedsTheSameQuantization: a checkpoint of a QLoRA run does not resume with
// another quantization of the base.
func TestQLoRAResumeNeedsTheSameQuantization(t *testing.T) {
	out := filepath.Join(t.TempDir(), "q")
	c := qloraConfig(t, out, 4, "nf4", false)
	c.Train.SaveEvery = 2
	if _, err := Run(context.Background(), c, Options{}); err != nil {
		t.Fatal(err)
	}
	c2 := qloraConfig(t, out, 4, "int4", false)
	if _, err := Run(context.Background(), c2, Options{Resume: filepath.Join(out, "checkpoint-2")}); err == nil || !strings.Contains(err.Error(), "config") {
		t.Errorf("resume with another model.quantize: %v", err)
	}
}
