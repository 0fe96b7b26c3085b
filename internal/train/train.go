// Package train runs a training job: it reads the data, builds the adapters (or makes every
// weight trainable for full fine-tuning), steps AdamW over the engine's gradients, evaluates,
// writes checkpoints that resume bit for bit, and writes the run's outputs: the PEFT adapter
// (or the full model), metrics.jsonl, loss.png and the resolved config.yaml.
package train

import (
	"context"
	"errors"
	"fmt"
	"io"
	"math"
	"math/rand/v2"
	"os"
	"path/filepath"
	"time"

	"github.com/loractl/loractl/internal/atomicfile"
	"github.com/loractl/loractl/internal/backend"
	"github.com/loractl/loractl/internal/chat"
	"github.com/loractl/loractl/internal/config"
	"github.com/loractl/loractl/internal/data"
	"github.com/loractl/loractl/internal/device"
	"github.com/loractl/loractl/internal/engine"
	"github.com/loractl/loractl/internal/lora"
	"github.com/loractl/loractl/internal/metrics"
	"github.com/loractl/loractl/internal/model"
	"github.com/loractl/loractl/internal/optim"
	"github.com/loractl/loractl/internal/tokenizer"
	"github.com/loractl/loractl/internal/variant"
)

// Options are the per-invocation choices that are not part of the config file.
type Options struct {
	Resume      string           // checkpoint folder to continue from
	InitAdapter string           // PEFT adapter folder to start from instead of a fresh adapter
	DryRun      bool             // print the plan, train nothing
	Reporter    metrics.Reporter // progress events; nil: none
	// ReporterFor, when set, makes the reporter once the first step is known (after a resume).
	ReporterFor func(total, start int) metrics.Reporter
	Log         io.Writer // human messages (data stats, saves); nil: discard
}

// Result summarises a finished (or dry) run.
type Result struct {
	Steps    int
	Loss     float64 // mean training loss of the last step
	EvalLoss float64 // last evaluation, NaN if none
	// EvalLossStart is the evaluation before the first step (NaN if none or resumed).
	EvalLossStart float64
	TokensPerS    float64
	OutputDir     string
}

// ErrInterrupted is returned (wrapped) when the context is cancelled, after a checkpoint.
var ErrInterrupted = errors.New("training interrupted")

// job is everything a run is made of.
type job struct {
	cfg     *config.Train
	opt     Options
	log     io.Writer
	m       *model.Model
	tok     tokenizer.Encoder
	eng     *engine.Engine
	adamw   *optim.AdamW
	sched   optim.Schedule
	loader  *data.Loader
	evalSet []data.Batch
	base    string // base model fingerprint
	ql      qloraState
	variant variant.Method // composed LoRA variant (vera, tied, nola, sora, adalora), else nil
}

// Run trains as cfg says. ctx cancellation (Ctrl-C) writes a checkpoint and returns an error
// wrapping ErrInterrupted.
func Run(ctx context.Context, cfg *config.Train, opt Options) (*Result, error) {
	j := &job{cfg: cfg, opt: opt, log: opt.Log}
	if j.log == nil {
		j.log = io.Discard
	}
	if opt.Reporter == nil {
		j.opt.Reporter = metrics.Quiet{}
	}
	if !opt.DryRun && opt.Resume == "" {
		if err := checkOutputDir(cfg.Output.Dir, cfg.Output.Overwrite); err != nil {
			return nil, err
		}
	}
	if err := j.setup(); err != nil {
		return nil, err
	}
	defer j.eng.Close()
	if opt.DryRun {
		return &Result{EvalLoss: math.NaN(), EvalLossStart: math.NaN(), OutputDir: cfg.Output.Dir}, j.dryRun()
	}
	return j.loop(ctx)
}

// setup loads the model, tokenizer and data and builds the engine and optimizer.
func (j *job) setup() error {
	c := j.cfg
	var err error
	if j.tok, err = tokenizer.Open(c.Model.Path); err != nil {
		return err
	}
	// LoRA leaves the base frozen: with model.dtype auto, BF16 checkpoints stay BF16 in memory
	// (half the bytes, the same results as widening them); bf16 rounds F32 ones too. Full
	// fine-tuning trains fp32 copies.
	isLoRA := c.LoRA.Method != "full"
	if !isLoRA && c.Model.DType == "bf16" {
		return errors.New("model.dtype bf16 stores frozen weights, but lora.method full trains them in f32; set model.dtype: auto (or f32)")
	}
	opt := model.LoadOptions{KeepBF16: isLoRA && c.Model.DType == "auto", ToBF16: isLoRA && c.Model.DType == "bf16"}
	if err := j.quantLoad(&opt); err != nil { // model.quantize (QLoRA), lora.init loftq
		return err
	}
	be, err := device.Open(c.Train.Device, j.log)
	if err != nil {
		return fmt.Errorf("train.device: %w", err)
	}
	if _, ok := be.(backend.Trainer); !ok {
		return fmt.Errorf("train.device %s: the %s backend cannot train; use train.device: cpu", c.Train.Device, be.Name())
	}
	if j.m, err = model.LoadWith(c.Model.Path, be, opt); err != nil {
		return err
	}
	mc := j.m.Config()
	if c.Data.SeqLen > mc.MaxPositionEmbeddings {
		return fmt.Errorf("data.seq_len %d is longer than the model's max_position_embeddings %d (%s); lower data.seq_len",
			c.Data.SeqLen, mc.MaxPositionEmbeddings, mc.Path)
	}
	if j.base, err = fingerprint(c.Model.Path); err != nil {
		return err
	}

	// Data.
	dopt := data.Options{Format: data.Format(c.Data.Format), SeqLen: c.Data.SeqLen,
		TrainOnPrompt: c.Data.TrainOnPrompt, SkipBadLines: c.Data.SkipBadLines}
	if c.Data.Format == "messages" || c.Data.Format == "auto" {
		if tpl, err := chat.Load(c.Model.Path); err == nil {
			dopt.Chat = tpl
		} else if c.Data.Format == "messages" {
			return err
		}
	}
	train, st, err := data.ReadFile(c.Data.Train, j.tok, dopt)
	if err != nil {
		return err
	}
	fmt.Fprintf(j.log, "data: %s: %d samples (%s), %d positions, %d trained, %d truncated to %d, %d skipped\n",
		st.Path, st.Samples, st.Format, st.Positions, st.Trained, st.Truncated, c.Data.SeqLen, st.Skipped)
	var eval []data.Example
	if c.Data.Eval != "" {
		var est data.Stats
		if eval, est, err = data.ReadFile(c.Data.Eval, j.tok, dopt); err != nil {
			return err
		}
		fmt.Fprintf(j.log, "eval: %s: %d samples, %d truncated\n", est.Path, est.Samples, est.Truncated)
	} else if c.Data.EvalFraction > 0 {
		train, eval = data.Split(train, c.Data.EvalFraction, c.Train.Seed)
		fmt.Fprintf(j.log, "eval: %d samples held out of %s\n", len(eval), c.Data.Train)
	}
	if len(train) == 0 {
		return fmt.Errorf("%s: no training samples left after holding out the eval split; lower data.eval_fraction or give data.eval", c.Data.Train)
	}
	if j.loader, err = data.NewLoader(train, c.Train.BatchSize, c.Data.SeqLen, c.Data.Packing, c.Train.Seed); err != nil {
		return err
	}
	if len(eval) > 0 {
		all, err := data.EvalBatches(eval, c.Train.BatchSize, c.Data.SeqLen, c.Data.Packing)
		if err != nil {
			return err
		}
		j.evalSet = all[:min(len(all), max(c.Train.EvalBatches, 1))]
	}

	// Adapter (or none for full fine-tuning) and engine.
	var a *lora.Adapter
	method := engine.MethodFull
	if isLoRA {
		method = engine.MethodLoRA
		if a, err = j.newQAdapter(); err != nil {
			return err
		}
	}
	if c.LoRA.Method == "dora" && a.Pairs[0].M == nil { // fresh, or --init-adapter from plain LoRA
		if err := a.InitDoRA(j.m); err != nil {
			return err
		}
	}
	var composer engine.Composer
	if c.LoRA.Composed() {
		if j.variant, err = j.newVariant(a); err != nil {
			return err
		}
		composer = j.variant
	}
	j.eng, err = engine.New(j.m, a, engine.Options{Method: method, Dropout: c.LoRA.Dropout,
		Seed: c.Train.Seed, GradCheckpointing: c.Train.GradCheckpointing, FreezeA: c.LoRA.FreezeA, Composer: composer})
	if err != nil {
		return err
	}
	adam := optim.DefaultAdamW()
	adam.WeightDecay = c.Train.WeightDecay
	if j.adamw, err = optim.NewAdamW(adam, paramGroups(c, j.eng.Params())); err != nil {
		return err
	}
	warmup := min(c.Train.Warmup, c.Train.MaxSteps)
	j.sched, err = optim.NewSchedule(c.Train.Schedule, c.Train.LR, warmup, c.Train.MaxSteps)
	return err
}

// newAdapter makes the run's adapter: fresh, or loaded from --init-adapter.
func (j *job) newAdapter() (*lora.Adapter, error) {
	c, mc := j.cfg, j.m.Config()
	if j.opt.InitAdapter != "" && !c.LoRA.Composed() {
		a, err := lora.LoadFor(j.opt.InitAdapter, mc, "")
		if err != nil {
			return nil, err
		}
		a.Config.Fingerprint = lora.Fingerprint(mc)
		a.Config.NumLayers = mc.NumHiddenLayers
		return a, nil
	}
	mods, err := lora.Select(lora.Modules(mc), c.LoRA.Targets, c.LoRA.Layers)
	if err != nil {
		return nil, fmt.Errorf("%s: %w", mc.Path, err)
	}
	lc, err := adapterConfig(c, mc, mods)
	if err != nil {
		return nil, err
	}
	init := lora.Init(c.LoRA.Init)
	if c.LoRA.InitA == "orthogonal" {
		init = lora.InitOrthogonal
	}
	rng := rand.New(rand.NewPCG(c.Train.Seed, 0x10a))
	return lora.New(lc, mods, init, rng)
}

// dryRun prints the resolved configuration and the plan.
func (j *job) dryRun() error {
	y, err := j.cfg.YAML()
	if err != nil {
		return err
	}
	c := j.cfg
	mc := j.m.Config()
	fmt.Fprintf(j.log, "# resolved config\n%s\n", y)
	total := mc.NumParams()
	n := j.eng.NumTrainable()
	fmt.Fprintf(j.log, "model: %s (%s, %d layers, hidden %d), %d parameters\n", c.Model.Path, mc.ModelType, mc.NumHiddenLayers, mc.HiddenSize, total)
	fmt.Fprintf(j.log, "trainable: %d parameters (%.3f%% of the base)\n", n, 100*float64(n)/float64(total))
	if a := j.eng.Adapter(); a != nil {
		j.describeAdapter(a)
	}
	p := j.eng.MemoryPlan(c.Train.BatchSize, c.Data.SeqLen)
	fmt.Fprintf(j.log, "memory plan (batch %d × %d tokens):\n", c.Train.BatchSize, c.Data.SeqLen)
	for _, r := range []struct {
		k string
		v int64
	}{{"frozen weights", p.Weights}, {"trainable", p.Trainable}, {"gradients", p.Grads}, {"AdamW moments", p.Optimizer},
		{"activations", p.Activations}, {"activations without checkpointing", p.ActivationsNoCheckpointing}} {
		fmt.Fprintf(j.log, "  %-36s %10.2f MiB\n", r.k, float64(r.v)/(1<<20))
	}
	j.printQuantPlan()
	if p.InputsNotKept > 0 {
		fmt.Fprintf(j.log, "  Linear inputs not kept for backward (only a trainable A or W would read them): %.2f MiB saved\n", float64(p.InputsNotKept)/(1<<20))
	}
	if c.Train.GradCheckpointing {
		fmt.Fprintf(j.log, "  gradient checkpointing saves %.2f MiB of activations\n", float64(p.ActivationsNoCheckpointing-p.Activations)/(1<<20))
	}
	fmt.Fprintf(j.log, "steps: %d × %d micro-batches of %d × %d tokens; eval every %d steps on %d batches\n",
		c.Train.MaxSteps, c.Train.GradAccum, c.Train.BatchSize, c.Data.SeqLen, c.Train.EvalEvery, len(j.evalSet))
	return nil
}

// loop runs the optimizer steps.
func (j *job) loop(ctx context.Context) (*Result, error) {
	c := j.cfg
	out := c.Output.Dir
	if err := os.MkdirAll(out, 0o755); err != nil {
		return nil, fmt.Errorf("output dir %s: %w", out, err)
	}
	start := 0
	if j.opt.Resume != "" {
		var err error
		if start, err = j.restore(j.opt.Resume); err != nil {
			return nil, err
		}
		fmt.Fprintf(j.log, "resumed from %s at step %d\n", j.opt.Resume, start)
	}
	var mw *metrics.Writer
	var err error
	mpath := filepath.Join(out, "metrics.jsonl")
	if start > 0 {
		mw, err = metrics.Reopen(mpath, start)
	} else {
		mw, err = metrics.Create(mpath)
	}
	if err != nil {
		return nil, err
	}
	defer mw.Close()
	if y, err := c.YAML(); err == nil {
		if err := atomicfile.Write(filepath.Join(out, "config.yaml"), y); err != nil {
			return nil, err
		}
	}

	rep := j.opt.Reporter
	if j.opt.ReporterFor != nil {
		rep = j.opt.ReporterFor(c.Train.MaxSteps, start)
	}
	res := &Result{EvalLoss: math.NaN(), EvalLossStart: math.NaN(), OutputDir: out}
	if start == 0 && len(j.evalSet) > 0 {
		// The base model's eval loss: the baseline every later evaluation is read against.
		el, err := j.evaluate()
		if err != nil {
			return nil, err
		}
		res.EvalLossStart = el
		rep.OnEval(metrics.EvalEvent{Step: 0, Loss: el})
		if err := mw.Write(metrics.Record{Step: 0, Loss: math.NaN(), LR: math.NaN(), GradNorm: math.NaN(), TokensPerS: math.NaN(), HasEval: true, EvalLoss: el}); err != nil {
			return nil, err
		}
	}
	began := time.Now()
	lastGood := ""
	var tokens int64
	for step := start; step < c.Train.MaxSteps; step++ {
		if err := ctx.Err(); err != nil {
			path, serr := j.save(step)
			if serr != nil {
				return res, fmt.Errorf("%w at step %d, and the checkpoint failed: %v", ErrInterrupted, step, serr)
			}
			rep.OnSave(path)
			return res, fmt.Errorf("%w at step %d; checkpoint written to %s; continue with --resume %s", ErrInterrupted, step, path, path)
		}
		t0 := time.Now()
		if err := j.beforeStep(step); err != nil {
			return res, err
		}
		loss, norm, ntok, err := j.step()
		if err != nil {
			return res, err
		}
		if math.IsNaN(loss) || math.IsInf(loss, 0) || math.IsNaN(norm) || math.IsInf(norm, 0) {
			hint := "no checkpoint was written yet"
			if lastGood != "" {
				hint = "the last good checkpoint is " + lastGood + " (resume from it with a lower train.lr)"
			}
			return res, fmt.Errorf("step %d: the loss became %g (gradient norm %g); training stopped, nothing of this step was kept; %s; try a lower train.lr", step+1, loss, norm, hint)
		}
		lr := j.sched.LR(step)
		j.adamw.Step(lr)
		if j.variant != nil {
			j.variant.AfterStep(step+1, lr) // SoRA's proximal gate step, AdaLoRA's budget
		}
		if err := j.eng.SyncParams(); err != nil {
			return res, err
		}
		tokens += int64(ntok)
		tps := float64(ntok) / time.Since(t0).Seconds()
		rec := metrics.Record{Step: step + 1, Loss: loss, LR: lr, GradNorm: norm, TokensPerS: tps}
		done := step+1 == c.Train.MaxSteps
		if len(j.evalSet) > 0 && ((c.Train.EvalEvery > 0 && (step+1)%c.Train.EvalEvery == 0) || done) {
			el, err := j.evaluate()
			if err != nil {
				return res, err
			}
			rec.HasEval, rec.EvalLoss = true, el
			res.EvalLoss = el
			rep.OnEval(metrics.EvalEvent{Step: step + 1, Loss: el})
		}
		if err := mw.Write(rec); err != nil {
			return res, err
		}
		rep.OnStep(metrics.StepEvent{Step: step + 1, Total: c.Train.MaxSteps, StartStep: start, Loss: loss, LR: lr,
			GradNorm: norm, TokensPerS: tps, Elapsed: time.Since(began)})
		res.Steps, res.Loss = step+1, loss
		if c.Train.SaveEvery > 0 && (step+1)%c.Train.SaveEvery == 0 && !done {
			path, err := j.save(step + 1)
			if err != nil {
				return res, err
			}
			lastGood = path
			rep.OnSave(path)
		}
	}
	res.TokensPerS = float64(tokens) / time.Since(began).Seconds()
	if err := j.finish(mw); err != nil {
		return res, err
	}
	rep.OnDone(metrics.Summary{Steps: res.Steps, Loss: res.Loss, HasEval: !math.IsNaN(res.EvalLoss), EvalLoss: res.EvalLoss,
		TokensPerS: res.TokensPerS, Elapsed: time.Since(began), OutputDir: out})
	return res, nil
}

// step runs grad_accum micro-batches and returns the step's mean loss, the gradient norm
// before clipping, and the number of token positions processed.
func (j *job) step() (loss, norm float64, ntok int, err error) {
	c := j.cfg
	batches := make([]data.Batch, c.Train.GradAccum)
	targets := 0
	for i := range batches {
		batches[i] = j.loader.Next()
		for _, t := range batches[i].Targets {
			if t != data.Ignore {
				targets++
			}
		}
	}
	if targets == 0 {
		return 0, 0, 0, fmt.Errorf("a training step had no target tokens; check data.format and data.train_on_prompt")
	}
	j.eng.ZeroGrads()
	var sum float64
	for _, b := range batches {
		s, _, err := j.eng.ForwardBackward(toEngine(b), float32(1/float64(targets)))
		if err != nil {
			return 0, 0, 0, err
		}
		sum += s
		ntok += b.B * b.T
	}
	if err := j.eng.SyncGrads(); err != nil {
		return 0, 0, 0, err
	}
	grads := optim.Grads([]optim.Group{{Params: j.eng.Params()}})
	if c.Train.MaxGradNorm > 0 {
		norm = optim.ClipGlobalNorm(grads, c.Train.MaxGradNorm)
	} else {
		norm = optim.GlobalNorm(grads)
	}
	return sum / float64(targets), norm, ntok, nil
}

// evaluate returns the mean loss over the eval batches.
func (j *job) evaluate() (float64, error) {
	if err := j.beforeEval(); err != nil {
		return 0, err
	}
	var sum float64
	n := 0
	for _, b := range j.evalSet {
		s, k, err := j.eng.Loss(toEngine(b))
		if err != nil {
			return 0, err
		}
		sum += s
		n += k
	}
	if n == 0 {
		return math.NaN(), nil
	}
	return sum / float64(n), nil
}

func toEngine(b data.Batch) engine.Batch {
	return engine.Batch{Tokens: b.Tokens, Targets: b.Targets, Positions: b.Positions, Segments: b.Segments, B: b.B, T: b.T}
}
