package train

import (
	"bytes"
	"context"
	"encoding/binary"
	"encoding/json"
	"errors"
	"math"
	"os"
	"path/filepath"
	"slices"
	"strings"
	"testing"

	"github.com/loractl/loractl/internal/config"
	"github.com/loractl/loractl/internal/lora"
	"github.com/loractl/loractl/internal/metrics"
	"github.com/loractl/loractl/internal/model"
	"github.com/loractl/loractl/internal/refdata"
)

// writeData writes a small {"text"} JSONL file of TinyStories-like sentences.
func writeData(t *testing.T, n int) string {
	t.Helper()
	words := []string{"Lily", "Tom", "the dog", "a red ball", "the park", "her mom", "a big tree", "the cat"}
	var b bytes.Buffer
	for i := 0; i < n; i++ {
		s := words[i%len(words)] + " went to " + words[(i*3+1)%len(words)] + " and saw " + words[(i*5+2)%len(words)] + "."
		line, _ := json.Marshal(map[string]string{"text": s})
		b.Write(line)
		b.WriteByte('\n')
	}
	p := filepath.Join(t.TempDir(), "train.jsonl")
	if err := os.WriteFile(p, b.Bytes(), 0o644); err != nil {
		t.Fatal(err)
	}
	return p
}

// tinyConfig is a fast LoRA run on stories260K.
func tinyConfig(t *testing.T, out string, steps int) *config.Train {
	t.Helper()
	c := config.DefaultTrain()
	c.Model.Path = refdata.Stories260K(t)
	c.Data.Train = writeData(t, 40)
	c.Data.SeqLen = 32
	c.Data.EvalFraction = 0.1
	c.LoRA.R = 4
	c.LoRA.Targets = []string{"all-linear"}
	c.LoRA.Dropout = 0.1
	c.Train.LR = 5e-3
	c.Train.Warmup = 2
	c.Train.MaxSteps = steps
	c.Train.BatchSize = 2
	c.Train.GradAccum = 2
	c.Train.EvalEvery = 2
	c.Train.EvalBatches = 2
	c.Output.Dir = out
	if err := c.Validate(); err != nil {
		t.Fatal(err)
	}
	return &c
}

// stopAt cancels the run's context once step is reported.
type stopAt struct {
	metrics.Recorder
	step   int
	cancel context.CancelFunc
}

func (s *stopAt) OnStep(e metrics.StepEvent) {
	s.Recorder.OnStep(e)
	if e.Step == s.step {
		s.cancel()
	}
}

func TestRunWritesPEFTOutputsAndLearns(t *testing.T) {
	out := filepath.Join(t.TempDir(), "run")
	c := tinyConfig(t, out, 12)
	rec := &metrics.Recorder{}
	res, err := Run(context.Background(), c, Options{Reporter: rec})
	if err != nil {
		t.Fatal(err)
	}
	for _, f := range []string{"adapter_model.safetensors", "adapter_config.json", "metrics.jsonl", "loss.png", "config.yaml", "run.json"} {
		if _, err := os.Stat(filepath.Join(out, f)); err != nil {
			t.Errorf("output %s missing: %v", f, err)
		}
	}
	recs, err := metrics.ReadFile(filepath.Join(out, "metrics.jsonl"))
	if err != nil || len(recs) != 13 || recs[0].Step != 0 || !recs[0].HasEval {
		t.Fatalf("metrics: %d records, %v", len(recs), err)
	}
	first, last := recs[1].Loss, recs[len(recs)-1].Loss
	t.Logf("loss %.4f -> %.4f, eval %.4f -> %.4f, %.0f tokens/s", first, last, res.EvalLossStart, res.EvalLoss, res.TokensPerS)
	if !(last < first) || !(res.EvalLoss < res.EvalLossStart) {
		t.Errorf("training did not learn: loss %.4f -> %.4f, eval %.4f -> %.4f", first, last, res.EvalLossStart, res.EvalLoss)
	}
	if len(rec.Steps) != 12 || len(rec.Evals) != 7 || len(rec.Done) != 1 {
		t.Errorf("reporter saw %d steps, %d evals, %d done", len(rec.Steps), len(rec.Evals), len(rec.Done))
	}
	a, err := lora.Load(out)
	if err != nil {
		t.Fatal(err)
	}
	m, _ := model.LoadConfig(c.Model.Path)
	if err := a.CheckBase(m, out); err != nil || len(a.Pairs) != 35 {
		t.Fatalf("adapter: %d pairs, %v", len(a.Pairs), err)
	}

	// A finished run is not overwritten by accident.
	_, err = Run(context.Background(), c, Options{})
	if err == nil || !strings.Contains(err.Error(), "--overwrite") {
		t.Fatalf("second run into a finished dir: %v", err)
	}
}

// TestResumeIsBitwiseExact: N steps, interrupt (checkpoint), resume, N more steps gives the
// same adapter bit for bit as 2N steps straight.
func TestResumeIsBitwiseExact(t *testing.T) {
	const n = 4
	straight := filepath.Join(t.TempDir(), "straight")
	if _, err := Run(context.Background(), tinyConfig(t, straight, 2*n), Options{}); err != nil {
		t.Fatal(err)
	}

	split := filepath.Join(t.TempDir(), "split")
	ctx, cancel := context.WithCancel(context.Background())
	stop := &stopAt{step: n, cancel: cancel}
	_, err := Run(ctx, tinyConfig(t, split, 2*n), Options{Reporter: stop})
	if !errors.Is(err, ErrInterrupted) {
		t.Fatalf("interrupted run: %v", err)
	}
	ckpt := filepath.Join(split, "checkpoint-4")
	if _, err := Run(context.Background(), tinyConfig(t, split, 2*n), Options{Resume: ckpt}); err != nil {
		t.Fatal(err)
	}
	a, err := lora.Load(straight)
	if err != nil {
		t.Fatal(err)
	}
	b, err := lora.Load(split)
	if err != nil {
		t.Fatal(err)
	}
	for i := range a.Pairs {
		if !slices.Equal(a.Pairs[i].A, b.Pairs[i].A) || !slices.Equal(a.Pairs[i].B, b.Pairs[i].B) {
			t.Fatalf("%s differs between straight and resumed runs", a.Pairs[i].Module.Path)
		}
	}
	ra, _ := metrics.ReadFile(filepath.Join(straight, "metrics.jsonl"))
	rb, _ := metrics.ReadFile(filepath.Join(split, "metrics.jsonl"))
	if len(ra) != len(rb) {
		t.Fatalf("metrics: %d vs %d records", len(ra), len(rb))
	}
	for i := range ra {
		if ra[i].Loss != rb[i].Loss && !(math.IsNaN(ra[i].Loss) && math.IsNaN(rb[i].Loss)) {
			t.Fatalf("step %d loss %v vs %v", i+1, ra[i].Loss, rb[i].Loss)
		}
	}
}

func TestSameSeedSameAdapter(t *testing.T) {
	x, y := filepath.Join(t.TempDir(), "x"), filepath.Join(t.TempDir(), "y")
	cx, cy := tinyConfig(t, x, 3), tinyConfig(t, y, 3)
	cy.Data.Train = cx.Data.Train
	for _, c := range []*config.Train{cx, cy} {
		if _, err := Run(context.Background(), c, Options{}); err != nil {
			t.Fatal(err)
		}
	}
	bx, _ := os.ReadFile(filepath.Join(x, "adapter_model.safetensors"))
	by, _ := os.ReadFile(filepath.Join(y, "adapter_model.safetensors"))
	if !bytes.Equal(bx, by) {
		t.Fatal("two runs with the same seed wrote different adapters")
	}
}

func TestBadInput(t *testing.T) {
	dir := t.TempDir()
	empty := filepath.Join(dir, "empty.jsonl")
	os.WriteFile(empty, []byte("\n\n"), 0o644)

	c := tinyConfig(t, filepath.Join(dir, "a"), 2)
	c.Data.Train = empty
	if _, err := Run(context.Background(), c, Options{}); err == nil || !strings.Contains(err.Error(), empty) {
		t.Errorf("empty dataset: %v", err)
	}

	c = tinyConfig(t, filepath.Join(dir, "b"), 2)
	c.Data.SeqLen = 4096
	if _, err := Run(context.Background(), c, Options{}); err == nil || !strings.Contains(err.Error(), "max_position_embeddings 512") {
		t.Errorf("seq_len over the maximum: %v", err)
	}

	c = tinyConfig(t, filepath.Join(dir, "c"), 2)
	c.LoRA.Targets = []string{"qkv"}
	if _, err := Run(context.Background(), c, Options{}); err == nil || !strings.Contains(err.Error(), "available names") {
		t.Errorf("bad target: %v", err)
	}

	c = tinyConfig(t, filepath.Join(dir, "f"), 2)
	c.LoRA.Method, c.Model.DType = "full", "bf16"
	if _, err := Run(context.Background(), c, Options{}); err == nil || !strings.Contains(err.Error(), "model.dtype: auto") {
		t.Errorf("full fine-tuning with bf16 storage: %v", err)
	}

	// A checkpoint resumed with another config.
	out := filepath.Join(dir, "d")
	c = tinyConfig(t, out, 4)
	c.Train.SaveEvery = 2
	if _, err := Run(context.Background(), c, Options{}); err != nil {
		t.Fatal(err)
	}
	c2 := tinyConfig(t, out, 4)
	c2.LoRA.R = 8
	if _, err := Run(context.Background(), c2, Options{Resume: filepath.Join(out, "checkpoint-2")}); err == nil || !strings.Contains(err.Error(), "config") {
		t.Errorf("resume with another r: %v", err)
	}

	// Divergence: an absurd learning rate makes the loss non-finite; the run stops and names the step.
	c = tinyConfig(t, filepath.Join(dir, "e"), 30)
	c.Train.LR = 1e30
	c.Train.MaxGradNorm = 0
	c.Train.Warmup = 0
	_, err := Run(context.Background(), c, Options{})
	if err == nil || !strings.Contains(err.Error(), "step ") || !strings.Contains(err.Error(), "lower train.lr") {
		t.Errorf("NaN loss: %v", err)
	}
}

func TestDryRun(t *testing.T) {
	c := tinyConfig(t, filepath.Join(t.TempDir(), "dry"), 5)
	c.Train.GradCheckpointing = true
	var log bytes.Buffer
	if _, err := Run(context.Background(), c, Options{DryRun: true, Log: &log}); err != nil {
		t.Fatal(err)
	}
	for _, w := range []string{"# resolved config", "lora:", "trainable:", "memory plan", "gradient checkpointing saves"} {
		if !strings.Contains(log.String(), w) {
			t.Errorf("dry run output lacks %q:\n%s", w, log.String())
		}
	}
	if _, err := os.Stat(c.Output.Dir); err == nil {
		t.Error("a dry run created the output folder")
	}
}

// TestInitAdapterContinues: a run started from a finished run's adapter begins where that run
// ended (its eval before training equals the first run's last eval).
func TestInitAdapterContinues(t *testing.T) {
	first := filepath.Join(t.TempDir(), "first")
	c := tinyConfig(t, first, 4)
	res, err := Run(context.Background(), c, Options{})
	if err != nil {
		t.Fatal(err)
	}
	second := tinyConfig(t, filepath.Join(t.TempDir(), "second"), 2)
	second.Data.Train = c.Data.Train
	res2, err := Run(context.Background(), second, Options{InitAdapter: first})
	if err != nil {
		t.Fatal(err)
	}
	if res2.EvalLossStart != res.EvalLoss {
		t.Fatalf("eval loss at the start of the continued run %v, want the first run's final %v", res2.EvalLossStart, res.EvalLoss)
	}
}

// TestResumeOnAnotherBase: a checkpoint is refused by a run whose base weights differ.
func TestResumeOnAnotherBase(t *testing.T) {
	src := refdata.Stories260K(t)
	base := t.TempDir()
	for _, f := range []string{"config.json", "tokenizer.json", "tokenizer_config.json", "model.safetensors"} {
		b, err := os.ReadFile(filepath.Join(src, f))
		if err != nil {
			t.Fatal(err)
		}
		os.WriteFile(filepath.Join(base, f), b, 0o644)
	}
	out := filepath.Join(t.TempDir(), "run")
	c := tinyConfig(t, out, 4)
	c.Train.SaveEvery = 2
	if _, err := Run(context.Background(), c, Options{}); err != nil {
		t.Fatal(err)
	}
	// Change one weight value of the copy: same shapes, another model.
	st := filepath.Join(base, "model.safetensors")
	b, _ := os.ReadFile(st)
	dataStart := 8 + int(binary.LittleEndian.Uint64(b[:8]))
	b[dataStart+8] ^= 0x01 // the low mantissa bit of the third float of the first tensor
	os.WriteFile(st, b, 0o644)
	c2 := tinyConfig(t, out, 4)
	c2.Data.Train = c.Data.Train
	c2.Model.Path = base
	_, err := Run(context.Background(), c2, Options{Resume: filepath.Join(out, "checkpoint-2")})
	if err == nil || !strings.Contains(err.Error(), "another base model") {
		t.Fatalf("resume on a changed base: %v", err)
	}
}

// TestQuickstartConfig runs the README's main job for a few steps from the repository root:
// the committed tiny model and data load, and the eval loss falls.
func TestQuickstartConfig(t *testing.T) {
	t.Chdir("../..")
	out := filepath.Join(t.TempDir(), "quick")
	c, err := config.ResolveTrain("configs/quickstart.yaml", []string{"train.max_steps=40", "train.eval_every=20", "output.dir=" + out}, nil)
	if err != nil {
		t.Fatal(err)
	}
	res, err := Run(context.Background(), c, Options{})
	if err != nil {
		t.Fatal(err)
	}
	t.Logf("quickstart, 40 steps: eval loss %.3f -> %.3f, %.0f tokens/s", res.EvalLossStart, res.EvalLoss, res.TokensPerS)
	if !(res.EvalLoss < res.EvalLossStart/2) {
		t.Fatalf("eval loss %.3f -> %.3f: the quickstart did not learn", res.EvalLossStart, res.EvalLoss)
	}
}

// TestModelDType: model.dtype auto and f32 train the same adapter from an F32 checkpoint
// (nothing is BF16 there), and bf16 stores the base rounded to BF16, which moves the losses a
// little but still trains.
func TestModelDType(t *testing.T) {
	dir := t.TempDir()
	run := func(name, dtype string) *Result {
		c := tinyConfig(t, filepath.Join(dir, name), 4)
		c.Model.DType = dtype
		res, err := Run(context.Background(), c, Options{})
		if err != nil {
			t.Fatalf("model.dtype %s: %v", dtype, err)
		}
		return res
	}
	auto, f32, bf16 := run("auto", "auto"), run("f32", "f32"), run("bf16", "bf16")
	if auto.Loss != f32.Loss || auto.EvalLoss != f32.EvalLoss {
		t.Errorf("auto and f32 differ on an F32 checkpoint: loss %v vs %v, eval %v vs %v", auto.Loss, f32.Loss, auto.EvalLoss, f32.EvalLoss)
	}
	if d := math.Abs(bf16.EvalLossStart - f32.EvalLossStart); d == 0 || d > 0.05 {
		t.Errorf("a BF16-rounded base moved the first eval loss by %g (%v vs %v): want a small nonzero change", d, bf16.EvalLossStart, f32.EvalLossStart)
	}
	if !(bf16.EvalLoss < bf16.EvalLossStart) {
		t.Errorf("model.dtype bf16 did not train: eval %v → %v", bf16.EvalLossStart, bf16.EvalLoss)
	}
}
