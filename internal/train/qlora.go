package train

import (
	"fmt"
	"hash/fnv"
	"math/rand/v2"
	"os"
	"path/filepath"
	"strings"

	"github.com/loractl/loractl/internal/lora"
	"github.com/loractl/loractl/internal/model"
	"github.com/loractl/loractl/internal/quant"
)

// QLoRA: model.quantize keeps the frozen Linear weights of the base quantized on the backend
// (backend.PackedStore) and dequantized right before each product; LoRA and AdamW stay fp32.
// With lora.init loftq each adapted weight is quantized by LoftQ, which also gives the
// adapter's starting A and B; the base that adapter belongs to, Q(W0 − s·B·A) (not W0), is
// written to <output.dir>/loftq-base in loractl's quantized format.

// LoftQBaseDir is the folder under output.dir that holds the quantized base of a LoftQ run.
const LoftQBaseDir = "loftq-base"

// loftqPair is what LoftQ produced for one adapted weight.
type loftqPair struct {
	q        *quant.Tensor
	a, b     []float32 // (r, in), (out, r)
	errPlain float64   // ‖W0 − deq(Q(W0))‖/‖W0‖
	errLoftQ float64   // ‖W0 − (deq(W_q) + s·B·A)‖/‖W0‖
}

// qloraState is the QLoRA part of a job.
type qloraState struct {
	loftq     map[string]*loftqPair    // by weight name, lora.init loftq only
	quantized map[string]*quant.Tensor // every Linear weight as quantized (loftq only)
}

// quantOptions returns the quantization of model.quantize, or nil for none.
func (j *job) quantOptions() (*quant.Options, error) {
	c := j.cfg
	if c.Model.Quantize == "none" {
		return nil, nil
	}
	f, err := quant.ParseFormat(c.Model.Quantize)
	if err != nil {
		return nil, fmt.Errorf("model.quantize: %w", err)
	}
	qo := quant.Options{Format: f, GroupSize: c.Model.GroupSize, DoubleQuant: c.Model.DoubleQuant}
	if err := qo.Validate(); err != nil {
		return nil, fmt.Errorf("model.quantize: %w", err)
	}
	return &qo, nil
}

// quantLoad sets the load options of a quantized base and, for lora.init loftq, the quantizer
// that runs LoftQ on every adapted weight.
func (j *job) quantLoad(opt *model.LoadOptions) error {
	c := j.cfg
	qo, err := j.quantOptions()
	if err != nil || qo == nil {
		return err
	}
	opt.Quantize = qo
	if c.LoRA.Init != "loftq" {
		return nil
	}
	if j.opt.InitAdapter != "" {
		return fmt.Errorf("lora.init loftq computes the adapter's start from the base; it cannot start from --init-adapter %s (drop one of them)", j.opt.InitAdapter)
	}
	mc, err := model.LoadConfig(c.Model.Path)
	if err != nil {
		return err
	}
	if raw, err := os.ReadFile(filepath.Join(c.Model.Path, model.ConfigFile)); err == nil && strings.Contains(string(raw), `"quantization_config"`) {
		return fmt.Errorf("lora.init loftq quantizes the float base W0 itself, but %s is already quantized; set model.path to the original float checkpoint", c.Model.Path)
	}
	mods, err := lora.Select(lora.Modules(mc), c.LoRA.Targets, c.LoRA.Layers)
	if err != nil {
		return fmt.Errorf("%s: %w", mc.Path, err)
	}
	byWeight := map[string]lora.Module{}
	for _, m := range mods {
		byWeight[m.Weight()] = m
	}
	s := lora.Config{R: c.LoRA.R, Alpha: c.LoRA.Alpha, RSLoRA: c.LoRA.RSLoRA}.Scale()
	j.ql.loftq = map[string]*loftqPair{}
	j.ql.quantized = map[string]*quant.Tensor{}
	opt.QuantizeFunc = func(name string, w []float32, shape []int) (*quant.Tensor, error) {
		if _, ok := byWeight[name]; !ok {
			t, err := quant.Quantize(name, w, shape, *qo)
			j.ql.quantized[name] = t
			return t, err
		}
		if c.LoRA.R > min(shape[0], shape[1]) {
			return nil, fmt.Errorf("lora.r %d is larger than min(in, out) = %d of %s; choose r ≤ %d", c.LoRA.R, min(shape[0], shape[1]), name, min(shape[0], shape[1]))
		}
		// One stream per weight, from the run's seed: a resumed run rebuilds the same base.
		h := fnv.New64a()
		h.Write([]byte(name))
		rng := rand.New(rand.NewPCG(c.Train.Seed, h.Sum64()))
		q, a, b, err := quant.LoftQ(name, w, shape, c.LoRA.R, s, *qo, c.LoRA.LoftQIter, rng)
		if err != nil {
			return nil, err
		}
		plain, err := quant.Quantize(name, w, shape, *qo)
		if err != nil {
			return nil, err
		}
		j.ql.loftq[name] = &loftqPair{q: q, a: a, b: b, errPlain: quant.LowRankError(w, plain, nil, nil, c.LoRA.R, s),
			errLoftQ: quant.LowRankError(w, q, a, b, c.LoRA.R, s)}
		j.ql.quantized[name] = q
		return q, nil
	}
	return nil
}

// newQAdapter makes the run's adapter: newAdapter's, and for lora.init loftq its A and B
// replaced by LoftQ's, with the matching quantized base written to output.dir/loftq-base.
func (j *job) newQAdapter() (*lora.Adapter, error) {
	c := j.cfg
	if c.LoRA.Init != "loftq" {
		return j.newAdapter()
	}
	// newAdapter shapes the adapter (default init); LoftQ's factors then replace A and B.
	c.LoRA.Init = string(lora.InitDefault)
	a, err := j.newAdapter()
	c.LoRA.Init = "loftq"
	if err != nil {
		return nil, err
	}
	var sumPlain, sumLoftQ float64
	for _, p := range a.Pairs {
		lp, ok := j.ql.loftq[p.Module.Weight()]
		if !ok || len(lp.a) != len(p.A) || len(lp.b) != len(p.B) {
			return nil, fmt.Errorf("lora.init loftq: no LoftQ factors for %s (internal error)", p.Module.Path)
		}
		copy(p.A, lp.a)
		copy(p.B, lp.b)
		sumPlain += lp.errPlain
		sumLoftQ += lp.errLoftQ
	}
	n := float64(len(a.Pairs))
	fmt.Fprintf(j.log, "loftq: %d modules, %d iteration(s): mean ‖W0 − (W_q + s·BA)‖/‖W0‖ %.5f (plain init, B = 0: %.5f)\n",
		len(a.Pairs), c.LoRA.LoftQIter, sumLoftQ/n, sumPlain/n)
	if !j.opt.DryRun {
		qo, _ := j.quantOptions()
		dir := filepath.Join(c.Output.Dir, LoftQBaseDir)
		_, err := quant.QuantizeFolderWith(c.Model.Path, dir, *qo, true, func(name string, w []float32, shape []int) (*quant.Tensor, error) {
			if t, ok := j.ql.quantized[name]; ok {
				return t, nil
			}
			return quant.Quantize(name, w, shape, *qo)
		})
		if err != nil {
			return nil, fmt.Errorf("write the LoftQ base: %w", err)
		}
		fmt.Fprintf(j.log, "loftq: the adapter belongs to the quantized base in %s (use it as --model with --adapter)\n", dir)
	}
	return a, nil
}

// printQuantPlan prints the base weights' memory for a quantized base (--dry-run).
func (j *job) printQuantPlan() {
	w := j.m.WeightMemory()
	fmt.Fprintf(j.log, "base weights in memory: %.2f MiB for %d parameters (%.3f bits/param)", float64(w.Bytes)/(1<<20), w.Params, w.BitsPerParam())
	if w.QuantizedElems > 0 {
		fmt.Fprintf(j.log, "; quantized Linear weights (%s): %.2f MiB for %d parameters, %.3f bits/param",
			j.cfg.Model.Quantize, float64(w.QuantizedBytes)/(1<<20), w.QuantizedElems, w.QuantizedBitsPerParam())
	}
	fmt.Fprintln(j.log)
}
