package config

import (
	"fmt"
	"os"
	"reflect"
	"regexp"
	"sort"
	"strings"

	"github.com/go-viper/mapstructure/v2"
	"github.com/spf13/pflag"
	"github.com/spf13/viper"
	"go.yaml.in/yaml/v3"
)

// Train is the whole configuration of `loractl train`: one typed struct whose zero-config values
// come from DefaultTrain. YAML keys are the `mapstructure` tags, nested by section
// (model.path, lora.r, train.lr, ...).
type Train struct {
	Model  ModelSection  `mapstructure:"model" yaml:"model"`
	Data   DataSection   `mapstructure:"data" yaml:"data"`
	LoRA   LoRASection   `mapstructure:"lora" yaml:"lora"`
	Train  TrainSection  `mapstructure:"train" yaml:"train"`
	Output OutputSection `mapstructure:"output" yaml:"output"`
}

// ModelSection names the frozen base model.
type ModelSection struct {
	Path     string `mapstructure:"path" yaml:"path"`         // HuggingFace model folder
	DType    string `mapstructure:"dtype" yaml:"dtype"`       // storage of the frozen weights: auto | f32 | bf16
	Quantize string `mapstructure:"quantize" yaml:"quantize"` // none | nf4 | int8 | int4 (QLoRA)
	// GroupSize is the quantization group (block) size; DoubleQuant also quantizes the NF4 absmax values.
	GroupSize   int  `mapstructure:"group_size" yaml:"group_size"`
	DoubleQuant bool `mapstructure:"double_quant" yaml:"double_quant"`
}

// DataSection describes the training and evaluation data.
type DataSection struct {
	Train         string  `mapstructure:"train" yaml:"train"`                     // JSONL file
	Eval          string  `mapstructure:"eval" yaml:"eval"`                       // JSONL file; empty: hold out eval_fraction of train
	EvalFraction  float64 `mapstructure:"eval_fraction" yaml:"eval_fraction"`     // used when eval is empty
	Format        string  `mapstructure:"format" yaml:"format"`                   // auto | text | prompt_completion | messages
	SeqLen        int     `mapstructure:"seq_len" yaml:"seq_len"`                 // tokens per sequence
	Packing       bool    `mapstructure:"packing" yaml:"packing"`                 // several samples per sequence
	TrainOnPrompt bool    `mapstructure:"train_on_prompt" yaml:"train_on_prompt"` // loss on prompt tokens too
	SkipBadLines  bool    `mapstructure:"skip_bad_lines" yaml:"skip_bad_lines"`   // skip (and count) malformed lines
}

// LoRASection chooses what is trained and how adapters are shaped.
type LoRASection struct {
	Method  string   `mapstructure:"method" yaml:"method"`   // lora | full
	R       int      `mapstructure:"r" yaml:"r"`             // adapter rank
	Alpha   float64  `mapstructure:"alpha" yaml:"alpha"`     // scale numerator: s = alpha/r (alpha/√r with rslora)
	Dropout float64  `mapstructure:"dropout" yaml:"dropout"` // dropout on the adapter input
	Targets []string `mapstructure:"targets" yaml:"targets"` // module names, "all-linear", or "re:<regex>"
	Layers  []int    `mapstructure:"layers" yaml:"layers"`   // layers_to_transform; empty: all
	RSLoRA  bool     `mapstructure:"rslora" yaml:"rslora"`
	Init    string   `mapstructure:"init" yaml:"init"` // default (Kaiming-uniform A, zero B) | gaussian | loftq
	// LoftQIter is the number of LoftQ alternations (quantize, then rank-r SVD of the residual).
	LoftQIter int `mapstructure:"loftq_iter" yaml:"loftq_iter"`
	// RankPattern gives some modules another rank than r (PEFT's rank_pattern): keys are PEFT
	// patterns matched against a dot-separated suffix of the module path ("down_proj",
	// "layers.0.self_attn.q_proj", a regular expression), values ranks.
	RankPattern map[string]int `mapstructure:"rank_pattern" yaml:"rank_pattern,omitempty"`
	// RankSchedule linear grows the rank linearly from r_min in the first layer to r_max in the
	// last (PRiLoRA-style); none: every module has rank r (or its rank_pattern entry).
	RankSchedule string `mapstructure:"rank_schedule" yaml:"rank_schedule"`
	RMin         int    `mapstructure:"r_min" yaml:"r_min"` // rank_schedule linear, dylora: the smallest rank
	RMax         int    `mapstructure:"r_max" yaml:"r_max"` // rank_schedule linear, dylora: the largest rank
	// FreezeA keeps A at its random initialisation and trains only B (LoRA-FA).
	FreezeA bool `mapstructure:"freeze_a" yaml:"freeze_a"`
	// InitA overrides how A starts: default (as lora.init says) or orthogonal (orthonormal
	// rows; with freeze_a, the asymmetric LoRA of Zhu et al. 2024).
	InitA string `mapstructure:"init_a" yaml:"init_a"`
	// LoRAPlusRatio λ > 0 trains B with learning rate λ·lr and A with lr (LoRA+); 0: off.
	LoRAPlusRatio float64 `mapstructure:"lora_plus_ratio" yaml:"lora_plus_ratio"`
	// DInitial is VeRA's starting d (PEFT's d_initial).
	DInitial float64 `mapstructure:"d_initial" yaml:"d_initial"`
	// VeRASaveProjection stores VeRA's shared projections in the adapter (PEFT's
	// save_projection); by default they are regenerated from train.seed.
	VeRASaveProjection bool `mapstructure:"vera_save_projection" yaml:"vera_save_projection"`
	// NolaK is NOLA's number of random bases per factor.
	NolaK int `mapstructure:"nola_k" yaml:"nola_k"`
	// SoraLambda is SoRA's L1 strength in the gate's proximal step.
	SoraLambda float64 `mapstructure:"sora_lambda" yaml:"sora_lambda"`
	// AdaLoRA: the starting and target rank per module (init_r 0: lora.r), the steps before
	// pruning starts (tinit) and after it ends (tfinal), the steps between maskings (delta_t),
	// the importance EMAs and the orthogonality regulariser's weight.
	InitR      int     `mapstructure:"init_r" yaml:"init_r"`
	TargetR    int     `mapstructure:"target_r" yaml:"target_r"`
	TInit      int     `mapstructure:"tinit" yaml:"tinit"`
	TFinal     int     `mapstructure:"tfinal" yaml:"tfinal"`
	DeltaT     int     `mapstructure:"delta_t" yaml:"delta_t"`
	Beta1      float64 `mapstructure:"beta1" yaml:"beta1"`
	Beta2      float64 `mapstructure:"beta2" yaml:"beta2"`
	OrthWeight float64 `mapstructure:"orth_reg_weight" yaml:"orth_reg_weight"`
}

// Composed reports whether lora.method composes its factors from parameters of its own on
// the host (package variant).
func (l LoRASection) Composed() bool {
	switch l.Method {
	case "vera", "tied", "nola", "sora", "adalora":
		return true
	}
	return false
}

// mapKeys are the config keys whose value is a mapping with free keys (module patterns, which
// contain dots): they bypass the dotted-key layers and are merged file first, then --set.
var mapKeys = map[string]bool{"lora.rank_pattern": true}

// TrainSection holds the optimiser and loop settings.
type TrainSection struct {
	LR                float64 `mapstructure:"lr" yaml:"lr"`
	Schedule          string  `mapstructure:"schedule" yaml:"schedule"` // constant | linear | cosine
	Warmup            int     `mapstructure:"warmup" yaml:"warmup"`     // steps
	MaxSteps          int     `mapstructure:"max_steps" yaml:"max_steps"`
	BatchSize         int     `mapstructure:"batch_size" yaml:"batch_size"`
	GradAccum         int     `mapstructure:"grad_accum" yaml:"grad_accum"`
	WeightDecay       float64 `mapstructure:"weight_decay" yaml:"weight_decay"`
	MaxGradNorm       float64 `mapstructure:"max_grad_norm" yaml:"max_grad_norm"` // 0: no clipping
	Seed              uint64  `mapstructure:"seed" yaml:"seed"`
	SaveEvery         int     `mapstructure:"save_every" yaml:"save_every"` // 0: only at the end
	EvalEvery         int     `mapstructure:"eval_every" yaml:"eval_every"` // 0: only at the end
	EvalBatches       int     `mapstructure:"eval_batches" yaml:"eval_batches"`
	GradCheckpointing bool    `mapstructure:"grad_checkpointing" yaml:"grad_checkpointing"`
	Device            string  `mapstructure:"device" yaml:"device"` // auto | cpu | cuda | cuda:N
}

// OutputSection says where the run is written.
type OutputSection struct {
	Dir       string `mapstructure:"dir" yaml:"dir"`
	Overwrite bool   `mapstructure:"overwrite" yaml:"overwrite"` // replace a finished run in dir
}

// DefaultTrain returns the defaults of every training option, in one place.
func DefaultTrain() Train {
	return Train{
		Model: ModelSection{DType: "auto", Quantize: "none", GroupSize: 64},
		Data:  DataSection{EvalFraction: 0.05, Format: "auto", SeqLen: 256, Packing: true},
		LoRA: LoRASection{Method: "lora", R: 8, Alpha: 16, Targets: []string{"q_proj", "v_proj"},
			Init: "default", LoftQIter: 1, RankSchedule: "none", InitA: "default",
			DInitial: 0.1, NolaK: 64, SoraLambda: 1, TargetR: 4, TInit: 10, TFinal: 20, DeltaT: 10,
			Beta1: 0.85, Beta2: 0.85, OrthWeight: 0.5},
		Train: TrainSection{Device: "auto", LR: 2e-4, Schedule: "cosine", Warmup: 10, MaxSteps: 200, BatchSize: 4,
			GradAccum: 1, MaxGradNorm: 1.0, Seed: 42, EvalEvery: 50, EvalBatches: 8},
		Output: OutputSection{Dir: "out"},
	}
}

// TrainShortcuts maps flag names to the config keys they set.
var TrainShortcuts = map[string]string{
	"out":        "output.dir",
	"max-steps":  "train.max_steps",
	"save-every": "train.save_every",
	"overwrite":  "output.overwrite",
}

// ResolveTrain builds the training configuration with precedence
// --set > flag shortcut > environment (LORACTL_TRAIN_LR for train.lr) > file > default.
// file may be empty. sets are "key=value" strings with dotted keys; values are parsed as YAML
// scalars or flow sequences ("[q_proj, v_proj]"). Unknown keys anywhere are an error with a
// "did you mean" hint.
func ResolveTrain(file string, sets []string, fs *pflag.FlagSet) (*Train, error) {
	def := DefaultTrain()
	keys := leafKeys(reflect.TypeOf(def), "")
	known := map[string]bool{}
	for _, k := range keys {
		known[k] = true
	}

	// Each layer is applied with Set in order of precedence, lowest first, so the last one wins.
	v := viper.New()
	for k, val := range flatten(def) {
		if !mapKeys[k] {
			v.SetDefault(k, val)
		}
	}
	patterns := map[string]map[string]int{} // mapKeys: key → pattern → rank
	if file != "" {
		if _, err := os.Stat(file); err != nil {
			return nil, fmt.Errorf("config file %s: %w", file, err)
		}
		raw, err := os.ReadFile(file)
		if err != nil {
			return nil, fmt.Errorf("config file %s: %w", file, err)
		}
		var tree map[string]any
		if err := yaml.Unmarshal(raw, &tree); err != nil {
			return nil, fmt.Errorf("config file %s: %v (fix the YAML syntax)", file, err)
		}
		fileKeys := map[string]any{}
		flattenMap(tree, "", fileKeys)
		for k := range mapKeys {
			if val, ok := fileKeys[k]; ok {
				if err := addPattern(patterns, k, val); err != nil {
					return nil, fmt.Errorf("config file %s: %v", file, err)
				}
				delete(fileKeys, k)
			}
		}
		var unknown []string
		for k := range fileKeys {
			if !known[k] {
				unknown = append(unknown, k)
			}
		}
		if len(unknown) > 0 {
			sort.Strings(unknown)
			return nil, fmt.Errorf("config file %s: %s", file, unknownKeys(unknown, keys))
		}
		for k, val := range fileKeys {
			if s, ok := val.(string); ok {
				if name := unsetVar(s); name != "" {
					return nil, fmt.Errorf("config file %s: %s refers to ${%s}, which is not set; export %s (e.g. export LORACTL_TESTDATA=$(realpath ../shared))", file, k, name, name)
				}
				val = ExpandEnv(s)
			}
			v.Set(k, val)
		}
	}
	for _, k := range keys {
		if mapKeys[k] {
			continue
		}
		envName := EnvPrefix + "_" + strings.ToUpper(strings.NewReplacer(".", "_").Replace(k))
		if s, ok := os.LookupEnv(envName); ok {
			val, err := parseValue(s)
			if err != nil {
				return nil, fmt.Errorf("environment %s: %v", envName, err)
			}
			v.Set(k, val)
		}
	}
	if fs != nil {
		for flag, key := range TrainShortcuts {
			if f := fs.Lookup(flag); f != nil && f.Changed {
				v.Set(key, f.Value.String())
			}
		}
	}
	for _, s := range sets {
		k, val, ok := strings.Cut(s, "=")
		k = strings.TrimSpace(k)
		if !ok || k == "" {
			return nil, fmt.Errorf("--set %q: want key=value, e.g. --set lora.r=16", s)
		}
		if mk, pat, ok := mapKeyOf(k); ok {
			parsed, err := parseValue(val)
			if err == nil {
				err = addPattern(patterns, mk, map[string]any{pat: parsed})
			}
			if err != nil {
				return nil, fmt.Errorf("--set %s: %v", s, err)
			}
			continue
		}
		if !known[k] {
			return nil, fmt.Errorf("--set %s: %s", k, unknownKeys([]string{k}, keys))
		}
		parsed, err := parseValue(val)
		if err != nil {
			return nil, fmt.Errorf("--set %s: %v", s, err)
		}
		v.Set(k, parsed)
	}

	out := DefaultTrain()
	dec, err := mapstructure.NewDecoder(&mapstructure.DecoderConfig{Result: &out, WeaklyTypedInput: true, ZeroFields: true})
	if err != nil {
		return nil, err
	}
	if err := dec.Decode(v.AllSettings()); err != nil {
		where := "training options"
		if file != "" {
			where = file
		}
		return nil, fmt.Errorf("%s: %v", where, err)
	}
	if len(out.LoRA.Layers) == 0 {
		out.LoRA.Layers = nil // "layers: []" and an absent key mean the same: every layer
	}
	if p := patterns["lora.rank_pattern"]; len(p) > 0 {
		out.LoRA.RankPattern = p
	}
	if err := out.Validate(); err != nil {
		if file != "" {
			return nil, fmt.Errorf("%s: %w", file, err)
		}
		return nil, err
	}
	return &out, nil
}

// Validate checks the values that can be checked without the model (module names and r ≤
// min(in, out) are checked by the trainer, which knows the model).
func (c *Train) Validate() error {
	var bad []string
	check := func(ok bool, format string, args ...any) {
		if !ok {
			bad = append(bad, fmt.Sprintf(format, args...))
		}
	}
	oneOf := func(key, val string, valid ...string) {
		for _, v := range valid {
			if val == v {
				return
			}
		}
		bad = append(bad, fmt.Sprintf("%s is %q; valid values: %s", key, val, strings.Join(valid, ", ")))
	}
	check(c.Model.Path != "", "model.path is empty; set it to a HuggingFace model folder")
	oneOf("model.dtype", c.Model.DType, "auto", "f32", "bf16")
	oneOf("model.quantize", c.Model.Quantize, "none", "nf4", "int8", "int4")
	if c.Model.Quantize != "none" {
		check(c.LoRA.Method == "lora", "model.quantize %s keeps the base frozen and quantized, but lora.method full trains every weight; use lora.method: lora (QLoRA) or model.quantize: none", c.Model.Quantize)
		check(c.Model.GroupSize >= 2 && c.Model.GroupSize%2 == 0, "model.group_size must be an even number of at least 2, got %d", c.Model.GroupSize)
		check(!c.Model.DoubleQuant || c.Model.Quantize == "nf4", "model.double_quant applies to model.quantize: nf4 only, not %s", c.Model.Quantize)
	}
	check(c.Data.Train != "", "data.train is empty; set it to a JSONL file")
	oneOf("data.format", c.Data.Format, "auto", "text", "prompt_completion", "messages")
	check(c.Data.SeqLen >= 2, "data.seq_len must be at least 2, got %d", c.Data.SeqLen)
	check(c.Data.EvalFraction >= 0 && c.Data.EvalFraction < 1, "data.eval_fraction must be in [0, 1), got %g", c.Data.EvalFraction)
	oneOf("lora.method", c.LoRA.Method, Methods...)
	if planned[c.LoRA.Method] {
		bad = append(bad, fmt.Sprintf("lora.method %s is not implemented yet (issue #7); implemented: %s", c.LoRA.Method, strings.Join(implemented(), ", ")))
	}
	c.validateVariants(check, oneOf)
	if c.LoRA.Method != "full" {
		check(c.LoRA.R >= 1, "lora.r must be at least 1, got %d", c.LoRA.R)
		check(c.LoRA.Alpha > 0, "lora.alpha must be positive, got %g", c.LoRA.Alpha)
		check(c.LoRA.Dropout >= 0 && c.LoRA.Dropout < 1, "lora.dropout must be in [0, 1), got %g", c.LoRA.Dropout)
		check(len(c.LoRA.Targets) > 0, "lora.targets is empty; name modules (q_proj, v_proj, ...) or use all-linear")
		oneOf("lora.init", c.LoRA.Init, "default", "gaussian", "loftq")
		if c.LoRA.Init == "loftq" {
			check(c.Model.Quantize != "none", "lora.init loftq fits the adapter to the quantization error of the base; set model.quantize (nf4, int8 or int4)")
			check(c.LoRA.LoftQIter >= 1, "lora.loftq_iter must be at least 1, got %d", c.LoRA.LoftQIter)
		}
		for _, l := range c.LoRA.Layers {
			check(l >= 0, "lora.layers has a negative layer index %d", l)
		}
	}
	check(c.Train.LR > 0, "train.lr must be positive, got %g", c.Train.LR)
	oneOf("train.schedule", c.Train.Schedule, "constant", "linear", "cosine")
	check(validDevice(c.Train.Device), "train.device is %q; valid values: auto, cpu, cuda, cuda:N", c.Train.Device)
	check(c.Train.Warmup >= 0, "train.warmup must not be negative, got %d", c.Train.Warmup)
	check(c.Train.MaxSteps >= 1, "train.max_steps must be at least 1, got %d", c.Train.MaxSteps)
	check(c.Train.BatchSize >= 1, "train.batch_size must be at least 1, got %d", c.Train.BatchSize)
	check(c.Train.GradAccum >= 1, "train.grad_accum must be at least 1, got %d", c.Train.GradAccum)
	check(c.Train.WeightDecay >= 0, "train.weight_decay must not be negative, got %g", c.Train.WeightDecay)
	check(c.Train.MaxGradNorm >= 0, "train.max_grad_norm must not be negative, got %g", c.Train.MaxGradNorm)
	check(c.Train.SaveEvery >= 0, "train.save_every must not be negative, got %d", c.Train.SaveEvery)
	check(c.Train.EvalEvery >= 0, "train.eval_every must not be negative, got %d", c.Train.EvalEvery)
	check(c.Output.Dir != "", "output.dir is empty; set it or pass --out DIR")
	if len(bad) > 0 {
		return fmt.Errorf("invalid training config: %s", strings.Join(bad, "; "))
	}
	return nil
}

// Methods are the values of lora.method: plain LoRA, full fine-tuning, and the LoRA variants
// of the survey (arXiv 2501.00365) that change the adapter's form.
var Methods = []string{"lora", "full", "dylora", "dora", "vera", "tied", "nola", "adalora", "sora"}

// planned are the methods of Methods that are accepted by name but not implemented yet.
var planned = map[string]bool{}

// implemented lists the methods that train today.
func implemented() []string {
	var out []string
	for _, m := range Methods {
		if !planned[m] {
			out = append(out, m)
		}
	}
	return out
}

// validateVariants checks the LoRA-variant keys and their combinations. An unsupported
// combination names both keys.
func (c *Train) validateVariants(check func(bool, string, ...any), oneOf func(string, string, ...string)) {
	l := c.LoRA
	oneOf("lora.rank_schedule", l.RankSchedule, "none", "linear")
	oneOf("lora.init_a", l.InitA, "default", "orthogonal")
	check(l.LoRAPlusRatio >= 0, "lora.lora_plus_ratio must be positive (η_B = λ·η_A; 16 in the LoRA+ paper), or 0 for off; got %g", l.LoRAPlusRatio)
	if l.Method == "full" {
		for _, k := range []struct {
			key string
			set bool
		}{{"lora.rank_pattern", len(l.RankPattern) > 0}, {"lora.rank_schedule", l.RankSchedule != "none"},
			{"lora.freeze_a", l.FreezeA}, {"lora.init_a", l.InitA != "default"}, {"lora.lora_plus_ratio", l.LoRAPlusRatio != 0}} {
			check(!k.set, "%s shapes a LoRA adapter, but lora.method full trains every weight and has none; drop %s or use another lora.method", k.key, k.key)
		}
		return
	}
	ranged := l.RankSchedule == "linear" || l.Method == "dylora"
	if ranged {
		what := "lora.rank_schedule linear"
		if l.Method == "dylora" {
			what = "lora.method dylora"
		}
		check(l.RMin >= 1, "%s needs lora.r_min ≥ 1, got %d", what, l.RMin)
		check(l.RMax >= l.RMin, "%s needs lora.r_max ≥ lora.r_min, got r_min %d and r_max %d", what, l.RMin, l.RMax)
	} else {
		check(l.RMin == 0 && l.RMax == 0, "lora.r_min and lora.r_max apply to lora.rank_schedule linear and lora.method dylora only; drop them or set one of those")
	}
	check(!(l.RankSchedule == "linear" && len(l.RankPattern) > 0), "lora.rank_schedule linear sets the rank of every module, so lora.rank_pattern would be overridden; use one of the two")
	if l.Method == "dylora" {
		check(len(l.RankPattern) == 0, "lora.method dylora samples one rank b for every module each step, so lora.rank_pattern cannot apply; drop lora.rank_pattern")
		check(l.RankSchedule == "none", "lora.method dylora samples one rank b for every module each step, so lora.rank_schedule %s cannot apply; use lora.rank_schedule: none", l.RankSchedule)
	}
	if l.Composed() {
		m := "lora.method " + l.Method
		check(len(l.RankPattern) == 0, "%s shapes every module alike, so lora.rank_pattern cannot apply; drop lora.rank_pattern or use lora.method lora", m)
		check(l.RankSchedule == "none", "%s shapes every module alike, so lora.rank_schedule %s cannot apply; use lora.rank_schedule: none", m, l.RankSchedule)
		check(!l.FreezeA, "%s trains its own parameters, so lora.freeze_a cannot apply; drop lora.freeze_a", m)
		check(l.InitA == "default", "%s initialises its own factors, so lora.init_a %s cannot apply; drop lora.init_a", m, l.InitA)
		check(l.LoRAPlusRatio == 0 || l.Method == "sora", "lora.lora_plus_ratio sets B's learning rate against A's, but %s has no trainable A and B pair; drop lora.lora_plus_ratio", m)
		check(l.Init == "default", "%s initialises its own factors, so lora.init %s cannot apply; use lora.init: default", m, l.Init)
	}
	if l.Method == "vera" || l.Method == "adalora" {
		check(!l.RSLoRA, "lora.method %s fixes its own scale (VeRA: 1, AdaLoRA: alpha/r), so lora.rslora cannot apply; drop lora.rslora", l.Method)
	}
	check(!l.VeRASaveProjection || l.Method == "vera", "lora.vera_save_projection applies to lora.method vera only; drop it")
	switch l.Method {
	case "vera":
		check(l.DInitial > 0, "lora.d_initial must be positive (PEFT's default 0.1), got %g", l.DInitial)
	case "nola":
		check(l.NolaK >= 1, "lora.nola_k must be at least 1, got %d", l.NolaK)
	case "sora":
		check(l.SoraLambda >= 0, "lora.sora_lambda must not be negative, got %g", l.SoraLambda)
	case "adalora":
		initR := l.InitR
		if initR == 0 {
			initR = l.R
		}
		check(l.TargetR >= 1 && l.TargetR <= initR, "lora.target_r must be in [1, lora.init_r = %d], got %d", initR, l.TargetR)
		check(l.TInit >= 0 && l.TFinal >= 0 && l.TInit+l.TFinal < c.Train.MaxSteps, "lora.tinit (%d) + lora.tfinal (%d) must be less than train.max_steps (%d), so that the budget has steps to fall in", l.TInit, l.TFinal, c.Train.MaxSteps)
		check(l.DeltaT >= 1, "lora.delta_t must be at least 1, got %d", l.DeltaT)
		check(l.Beta1 > 0 && l.Beta1 < 1 && l.Beta2 > 0 && l.Beta2 < 1, "lora.beta1 and lora.beta2 must be in (0, 1), got %g and %g", l.Beta1, l.Beta2)
		check(l.OrthWeight >= 0, "lora.orth_reg_weight must not be negative, got %g", l.OrthWeight)
	}
	if l.InitR != 0 {
		check(l.Method == "adalora", "lora.init_r applies to lora.method adalora only (other methods use lora.r); drop it")
	}
	check(!(l.FreezeA && l.LoRAPlusRatio != 0), "lora.lora_plus_ratio sets B's learning rate relative to A's, but lora.freeze_a trains no A; drop one of the two")
	if l.Init == "loftq" {
		check(len(l.RankPattern) == 0 && l.RankSchedule == "none", "lora.init loftq fits rank-r factors of one rank r, so lora.rank_pattern and lora.rank_schedule cannot apply; drop them or use lora.init: default")
		check(l.Method == "lora", "lora.init loftq is for lora.method lora, not %s; use lora.init: default", l.Method)
	}
	check(!(l.InitA == "orthogonal" && l.Init != "default"), "lora.init_a orthogonal replaces A's initialisation, but lora.init %s sets it too; use lora.init: default with lora.init_a: orthogonal", l.Init)
}

// RankOf returns the rank lora.rank_schedule linear gives to a module of layer (0-based) out of
// layers: r_min in the first layer, r_max in the last, linear and rounded in between.
func (l LoRASection) RankOf(layer, layers int) int {
	if layers <= 1 {
		return l.RMax
	}
	f := float64(layer) / float64(layers-1)
	return l.RMin + int(float64(l.RMax-l.RMin)*f+0.5)
}

// YAML renders the resolved configuration (for --dry-run and the run's config.yaml).
func (c *Train) YAML() ([]byte, error) { return yaml.Marshal(c) }

// leafKeys lists the dotted keys of a struct type's leaf fields.
func leafKeys(t reflect.Type, prefix string) []string {
	var keys []string
	for i := 0; i < t.NumField(); i++ {
		f := t.Field(i)
		name := prefix + f.Tag.Get("mapstructure")
		if f.Type.Kind() == reflect.Struct {
			keys = append(keys, leafKeys(f.Type, name+".")...)
		} else {
			keys = append(keys, name)
		}
	}
	return keys
}

// flatten returns the dotted-key values of a struct.
func flatten(s any) map[string]any {
	out := map[string]any{}
	var walk func(v reflect.Value, prefix string)
	walk = func(v reflect.Value, prefix string) {
		t := v.Type()
		for i := 0; i < t.NumField(); i++ {
			name := prefix + t.Field(i).Tag.Get("mapstructure")
			if t.Field(i).Type.Kind() == reflect.Struct {
				walk(v.Field(i), name+".")
			} else {
				out[name] = v.Field(i).Interface()
			}
		}
	}
	walk(reflect.ValueOf(s), "")
	return out
}

// mapKeyOf splits a --set key "lora.rank_pattern.<pattern>" into the map key and the pattern.
func mapKeyOf(k string) (key, pattern string, ok bool) {
	for mk := range mapKeys {
		if p, found := strings.CutPrefix(k, mk+"."); found && p != "" {
			return mk, p, true
		}
	}
	return "", "", false
}

// addPattern merges a YAML mapping of pattern → rank into patterns[key].
func addPattern(patterns map[string]map[string]int, key string, val any) error {
	m, ok := val.(map[string]any)
	if !ok {
		return fmt.Errorf("%s must be a mapping of module pattern to rank, e.g. {down_proj: 16, layers.0.self_attn.q_proj: 4}; got %v", key, val)
	}
	if patterns[key] == nil {
		patterns[key] = map[string]int{}
	}
	for pat, r := range m {
		n, ok := r.(int)
		if !ok || n < 1 {
			return fmt.Errorf("%s: %q has rank %v; want a whole number of at least 1", key, pat, r)
		}
		if _, err := regexp.Compile(pat); err != nil {
			return fmt.Errorf("%s: %q is not a valid pattern (a PEFT pattern is a regular expression): %v", key, pat, err)
		}
		patterns[key][pat] = n
	}
	return nil
}

// flattenMap turns a YAML tree into dotted keys; a mapping under a leaf key is kept whole
// so that it is reported as unknown rather than silently split (and so that a mapKeys value
// stays one mapping).
func flattenMap(m map[string]any, prefix string, out map[string]any) {
	for k, v := range m {
		key := prefix + k
		if sub, ok := v.(map[string]any); ok && len(sub) > 0 && !mapKeys[key] {
			flattenMap(sub, key+".", out)
			continue
		}
		out[key] = v
	}
}

// parseValue reads a --set or environment value as a YAML scalar or flow sequence.
func parseValue(s string) (any, error) {
	var v any
	if err := yaml.Unmarshal([]byte(s), &v); err != nil {
		return nil, fmt.Errorf("cannot parse value %q: %v", s, err)
	}
	if v == nil {
		return "", nil
	}
	return v, nil
}

// unknownKeys explains unknown keys with the closest known key of each.
func unknownKeys(unknown, known []string) string {
	parts := make([]string, len(unknown))
	for i, u := range unknown {
		parts[i] = fmt.Sprintf("unknown key %q", u)
		if best := closest(u, known); best != "" {
			parts[i] += fmt.Sprintf(" (did you mean %q?)", best)
		}
	}
	return strings.Join(parts, "; ") + "; see configs/README.md for every key"
}

// closest returns the known key nearest to k by edit distance, if it is near enough.
func closest(k string, known []string) string {
	best, bestD := "", len(k)/2+2
	for _, c := range known {
		d := editDistance(k, c)
		// Also compare against the leaf name alone: "lr" vs "train.lr".
		if i := strings.LastIndex(c, "."); i >= 0 {
			if d2 := editDistance(k, c[i+1:]); d2 < d {
				d = d2
			}
		}
		if d < bestD {
			best, bestD = c, d
		}
	}
	return best
}

// editDistance is the Levenshtein distance between a and b.
func editDistance(a, b string) int {
	prev := make([]int, len(b)+1)
	cur := make([]int, len(b)+1)
	for j := range prev {
		prev[j] = j
	}
	for i := 1; i <= len(a); i++ {
		cur[0] = i
		for j := 1; j <= len(b); j++ {
			cost := 1
			if a[i-1] == b[j-1] {
				cost = 0
			}
			cur[j] = min(prev[j]+1, cur[j-1]+1, prev[j-1]+cost)
		}
		prev, cur = cur, prev
	}
	return prev[len(b)]
}

// unsetVar returns the name of the first ${NAME} in s whose variable is not set, or "".
func unsetVar(s string) string {
	for _, m := range envRef.FindAllStringSubmatch(s, -1) {
		if _, ok := os.LookupEnv(m[1]); !ok {
			return m[1]
		}
	}
	return ""
}

// validDevice reports whether s is auto, cpu, cuda or cuda:N (the spellings internal/device opens).
func validDevice(s string) bool {
	switch s {
	case "auto", "cpu", "cuda":
		return true
	}
	n, ok := strings.CutPrefix(s, "cuda:")
	if !ok || n == "" {
		return false
	}
	for _, r := range n {
		if r < '0' || r > '9' {
			return false
		}
	}
	return true
}
