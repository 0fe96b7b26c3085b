package train

import (
	"crypto/sha256"
	"encoding/base64"
	"encoding/hex"
	"encoding/json"
	"errors"
	"fmt"
	"io/fs"
	"os"
	"path/filepath"
	"reflect"
	"sort"
	"strconv"
	"strings"

	"github.com/loractl/loractl/internal/atomicfile"
	"github.com/loractl/loractl/internal/config"
	"github.com/loractl/loractl/internal/data"
	"github.com/loractl/loractl/internal/lora"
	"github.com/loractl/loractl/internal/metrics"
	"github.com/loractl/loractl/internal/optim"
	"github.com/loractl/loractl/internal/safetensors"
)

// Files of a run folder and of its checkpoints.
const (
	stateFile     = "trainer_state.json"
	optimizerFile = "optimizer.safetensors"
	modelFile     = "model.safetensors" // full fine-tuning
	runFile       = "run.json"          // written last: the run finished
)

// trainerState is trainer_state.json: everything besides tensors that a resume needs.
type trainerState struct {
	Version     int          `json:"version"`
	Step        int          `json:"step"`
	Base        string       `json:"base_fingerprint"`
	Compat      compat       `json:"config"`
	Data        data.State   `json:"data"`
	RNG         string       `json:"rng"` // engine dropout RNG, base64
	TrainedWith config.Train `json:"-"`
}

// compat is the part of the config that a checkpoint must share with the run resuming it.
type compat struct {
	Method    string   `json:"method"`
	R         int      `json:"r"`
	Alpha     float64  `json:"alpha"`
	RSLoRA    bool     `json:"rslora"`
	Targets   []string `json:"targets"`
	Layers    []int    `json:"layers"`
	Seed      uint64   `json:"seed"`
	BatchSize int      `json:"batch_size"`
	GradAccum int      `json:"grad_accum"`
	SeqLen    int      `json:"seq_len"`
	Packing   bool     `json:"packing"`
	// A quantized base (QLoRA) and LoftQ shape the frozen weights: a resume must rebuild the same.
	Quantize    string `json:"quantize,omitempty"` // model.quantize, empty for none
	QuantGroup  int    `json:"quant_group,omitempty"`
	DoubleQuant bool   `json:"double_quant,omitempty"`
	LoftQIter   int    `json:"loftq_iter,omitempty"` // lora.init loftq only
	// The LoRA variants' keys (issue #7): the adapter's shape and how it trains.
	RankPattern   map[string]int `json:"rank_pattern,omitempty"`
	RankSchedule  string         `json:"rank_schedule,omitempty"`
	RMin          int            `json:"r_min,omitempty"`
	RMax          int            `json:"r_max,omitempty"`
	FreezeA       bool           `json:"freeze_a,omitempty"`
	InitA         string         `json:"init_a,omitempty"`
	LoRAPlusRatio float64        `json:"lora_plus_ratio,omitempty"`
	Variant       string         `json:"variant,omitempty"` // a composed variant's own hyperparameters
}

func compatOf(c *config.Train) compat {
	k := compat{Method: c.LoRA.Method, R: c.LoRA.R, Alpha: c.LoRA.Alpha, RSLoRA: c.LoRA.RSLoRA, Targets: c.LoRA.Targets,
		Layers: c.LoRA.Layers, Seed: c.Train.Seed, BatchSize: c.Train.BatchSize, GradAccum: c.Train.GradAccum,
		SeqLen: c.Data.SeqLen, Packing: c.Data.Packing,
		RankPattern: c.LoRA.RankPattern, RMin: c.LoRA.RMin, RMax: c.LoRA.RMax, FreezeA: c.LoRA.FreezeA,
		LoRAPlusRatio: c.LoRA.LoRAPlusRatio}
	if c.LoRA.RankSchedule != "none" {
		k.RankSchedule = c.LoRA.RankSchedule
	}
	if c.LoRA.InitA != "default" {
		k.InitA = c.LoRA.InitA
	}
	l := c.LoRA
	switch l.Method {
	case "vera":
		k.Variant = fmt.Sprintf("d_initial=%g", l.DInitial)
	case "nola":
		k.Variant = fmt.Sprintf("nola_k=%d", l.NolaK)
	case "sora":
		k.Variant = fmt.Sprintf("sora_lambda=%g", l.SoraLambda)
	case "adalora":
		k.Variant = fmt.Sprintf("init_r=%d target_r=%d tinit=%d tfinal=%d delta_t=%d beta1=%g beta2=%g orth_reg_weight=%g max_steps=%d",
			l.InitR, l.TargetR, l.TInit, l.TFinal, l.DeltaT, l.Beta1, l.Beta2, l.OrthWeight, c.Train.MaxSteps)
	}
	if c.Model.Quantize != "none" {
		k.Quantize, k.QuantGroup, k.DoubleQuant = c.Model.Quantize, c.Model.GroupSize, c.Model.DoubleQuant
		if c.LoRA.Init == "loftq" {
			k.LoftQIter = c.LoRA.LoftQIter
		}
	}
	return k
}

// save writes checkpoint-<step> atomically: everything goes into a temporary folder beside it,
// which is renamed into place once complete.
func (j *job) save(step int) (string, error) {
	out := j.cfg.Output.Dir
	final := filepath.Join(out, "checkpoint-"+strconv.Itoa(step))
	tmp, err := os.MkdirTemp(out, ".checkpoint-"+strconv.Itoa(step)+".tmp-")
	if err != nil {
		return "", fmt.Errorf("checkpoint: %w", err)
	}
	defer os.RemoveAll(tmp) // gone after a successful rename
	if err := j.writeWeights(tmp); err != nil {
		return "", fmt.Errorf("checkpoint %s: %w", final, err)
	}
	st := j.adamw.State()
	ts := make([]safetensors.Tensor, len(st.Tensors))
	for i, t := range st.Tensors {
		b, err := safetensors.EncodeFloat32(safetensors.F32, t.Data)
		if err != nil {
			return "", err
		}
		ts[i] = safetensors.Tensor{Name: t.Name, DType: safetensors.F32, Shape: []int{len(t.Data)}, Data: b}
	}
	if err := safetensors.Write(filepath.Join(tmp, optimizerFile), ts, map[string]string{"step": strconv.Itoa(st.Step)}); err != nil {
		return "", fmt.Errorf("checkpoint %s: %w", final, err)
	}
	ts2 := trainerState{Version: 1, Step: step, Base: j.base, Compat: compatOf(j.cfg), Data: j.loader.State(),
		RNG: base64.StdEncoding.EncodeToString(j.eng.RNGState())}
	b, _ := json.MarshalIndent(ts2, "", "  ")
	if err := atomicfile.Write(filepath.Join(tmp, stateFile), append(b, '\n')); err != nil {
		return "", err
	}
	if err := os.RemoveAll(final); err != nil {
		return "", fmt.Errorf("checkpoint %s: %w", final, err)
	}
	if err := os.Rename(tmp, final); err != nil {
		return "", fmt.Errorf("checkpoint %s: %w", final, err)
	}
	atomicfile.SyncDir(out)
	return final, nil
}

// writeWeights writes the trained weights into dir: the PEFT adapter, or model.safetensors
// for full fine-tuning.
func (j *job) writeWeights(dir string) error {
	if j.variant != nil {
		// The effective factors as a PEFT LoRA adapter (pruned ranks removed), and the
		// variant's own parameters for resuming and continuing.
		var err error
		if v, ok := j.variant.(interface{ SavePEFT(string) error }); ok {
			err = v.SavePEFT(dir) // VeRA: PEFT's own format
		} else {
			err = j.variant.Final().Save(dir)
		}
		if err != nil {
			return err
		}
		return saveVariantState(j.variant, dir)
	}
	if a := j.eng.Adapter(); a != nil {
		return a.Save(dir)
	}
	ps := j.eng.Params()
	ts := make([]safetensors.Tensor, len(ps))
	for i, p := range ps {
		_, shape, ok := j.m.Tensor(p.Name)
		if !ok {
			return fmt.Errorf("no model tensor %s", p.Name)
		}
		b, err := safetensors.EncodeFloat32(safetensors.F32, p.Data)
		if err != nil {
			return err
		}
		ts[i] = safetensors.Tensor{Name: p.Name, DType: safetensors.F32, Shape: shape, Data: b}
	}
	return safetensors.Write(filepath.Join(dir, modelFile), ts, map[string]string{"format": "pt"})
}

// restore loads a checkpoint into the job and returns its step.
func (j *job) restore(dir string) (int, error) {
	raw, err := os.ReadFile(filepath.Join(dir, stateFile))
	if err != nil {
		return 0, fmt.Errorf("resume %s: %v; point --resume at a checkpoint-N folder of a run", dir, err)
	}
	var st trainerState
	if err := json.Unmarshal(raw, &st); err != nil || st.Version != 1 {
		return 0, fmt.Errorf("resume %s: %s is corrupt or of another version", dir, stateFile)
	}
	if st.Base != j.base {
		return 0, fmt.Errorf("resume %s: the checkpoint was trained on another base model (fingerprint %.12s, this model %.12s); use the same model.path", dir, st.Base, j.base)
	}
	if want := compatOf(j.cfg); !reflect.DeepEqual(normCompat(st.Compat), normCompat(want)) {
		return 0, fmt.Errorf("resume %s: the checkpoint's config (%+v) differs from this run's (%+v); resume with the config it was trained with", dir, st.Compat, want)
	}
	if st.Step < 0 || st.Step > j.cfg.Train.MaxSteps {
		return 0, fmt.Errorf("resume %s: checkpoint step %d is past train.max_steps %d", dir, st.Step, j.cfg.Train.MaxSteps)
	}
	// Weights.
	byName := map[string][]float32{}
	if j.variant != nil {
		if err := loadVariantState(j.variant, dir); err != nil {
			return 0, fmt.Errorf("resume %s: %w", dir, err)
		}
		for k, v := range j.variant.State() {
			byName[k] = v
		}
	} else if j.eng.Adapter() != nil {
		a, err := lora.Load(dir)
		if err != nil {
			return 0, err
		}
		for _, p := range a.Pairs {
			byName[p.Module.Path+".lora_A.weight"] = p.A
			byName[p.Module.Path+".lora_B.weight"] = p.B
		}
	} else {
		f, err := safetensors.Open(filepath.Join(dir, modelFile))
		if err != nil {
			return 0, err
		}
		for _, t := range f.Tensors() {
			v, err := f.Float32(t.Name)
			if err != nil {
				f.Close()
				return 0, err
			}
			byName[t.Name] = v
		}
		f.Close()
	}
	for _, p := range j.eng.Params() {
		v, ok := byName[p.Name]
		if !ok || len(v) != len(p.Data) {
			return 0, fmt.Errorf("resume %s: tensor %s is missing or has another size in the checkpoint", dir, p.Name)
		}
		copy(p.Data, v)
	}
	if err := j.eng.SyncParams(); err != nil {
		return 0, err
	}
	// Optimizer, data order, RNG.
	f, err := safetensors.Open(filepath.Join(dir, optimizerFile))
	if err != nil {
		return 0, err
	}
	defer f.Close()
	ost := optim.State{}
	if ost.Step, err = strconv.Atoi(f.Metadata()["step"]); err != nil {
		return 0, fmt.Errorf("resume %s: %s has no step", dir, optimizerFile)
	}
	for _, t := range f.Tensors() {
		v, err := f.Float32(t.Name)
		if err != nil {
			return 0, err
		}
		ost.Tensors = append(ost.Tensors, optim.Tensor{Name: t.Name, Data: v})
	}
	if err := j.adamw.SetState(ost); err != nil {
		return 0, fmt.Errorf("resume %s: %w", dir, err)
	}
	if err := j.loader.Restore(st.Data); err != nil {
		return 0, fmt.Errorf("resume %s: %w", dir, err)
	}
	rng, err := base64.StdEncoding.DecodeString(st.RNG)
	if err != nil {
		return 0, fmt.Errorf("resume %s: bad rng state", dir)
	}
	if err := j.eng.SetRNGState(rng); err != nil {
		return 0, fmt.Errorf("resume %s: %w", dir, err)
	}
	return st.Step, nil
}

func normCompat(c compat) compat {
	if len(c.Layers) == 0 {
		c.Layers = nil
	}
	return c
}

// finish writes the run's outputs: weights, loss.png and, last, run.json.
func (j *job) finish(mw *metrics.Writer) error {
	out := j.cfg.Output.Dir
	j.variantReport()
	if err := j.writeWeights(out); err != nil {
		return err
	}
	if j.eng.Adapter() == nil {
		// A full fine-tune is a model folder of its own: copy the base's config and tokenizer.
		for _, f := range []string{"config.json", "generation_config.json", "tokenizer.json", "tokenizer_config.json", "tokenizer.model"} {
			b, err := os.ReadFile(filepath.Join(j.cfg.Model.Path, f))
			if errors.Is(err, fs.ErrNotExist) {
				continue
			}
			if err != nil {
				return err
			}
			if err := atomicfile.Write(filepath.Join(out, f), b); err != nil {
				return err
			}
		}
	}
	recs, err := metrics.ReadFile(mw.Path())
	if err != nil {
		return err
	}
	tr, ev := metrics.Curves(recs)
	if err := metrics.PlotLoss(filepath.Join(out, "loss.png"), tr, ev); err != nil {
		return err
	}
	b, _ := json.MarshalIndent(map[string]any{"steps": j.cfg.Train.MaxSteps, "base_fingerprint": j.base}, "", "  ")
	return atomicfile.Write(filepath.Join(out, runFile), append(b, '\n'))
}

// checkOutputDir refuses to start a new run over a finished one unless overwrite is set, and
// then clears that run's outputs.
func checkOutputDir(dir string, overwrite bool) error {
	if _, err := os.Stat(filepath.Join(dir, runFile)); err != nil {
		return nil
	}
	if !overwrite {
		return fmt.Errorf("output dir %s already holds a finished run (%s); pass --overwrite to replace it, or choose another --out", dir, runFile)
	}
	entries, err := os.ReadDir(dir)
	if err != nil {
		return err
	}
	for _, e := range entries {
		n := e.Name()
		if strings.HasPrefix(n, "checkpoint-") || n == runFile || n == "metrics.jsonl" || n == "loss.png" || n == "config.yaml" ||
			n == lora.WeightsFile || n == lora.ConfigFile || n == modelFile {
			if err := os.RemoveAll(filepath.Join(dir, n)); err != nil {
				return err
			}
		}
	}
	return nil
}

// fingerprint identifies a base model: config.json, and every tensor's name, dtype, shape and
// first 4 KiB of data.
func fingerprint(dir string) (string, error) {
	h := sha256.New()
	cfg, err := os.ReadFile(filepath.Join(dir, "config.json"))
	if err != nil {
		return "", err
	}
	h.Write(cfg)
	ck, err := safetensors.OpenCheckpoint(dir)
	if err != nil {
		return "", err
	}
	defer ck.Close()
	names := ck.Names()
	sort.Strings(names)
	for _, n := range names {
		info, _ := ck.Info(n)
		fmt.Fprintf(h, "%s %s %v\n", n, info.DType, info.Shape)
		b, err := ck.Bytes(n)
		if err != nil {
			return "", err
		}
		h.Write(b[:min(len(b), 4096)])
	}
	return hex.EncodeToString(h.Sum(nil)), nil
}
