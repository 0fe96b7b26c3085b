package lora

import (
	"encoding/json"
	"errors"
	"fmt"
	"os"
	"path/filepath"
	"regexp"
	"slices"
	"sort"
	"strconv"

	"github.com/loractl/loractl/internal/atomicfile"
	"github.com/loractl/loractl/internal/model"
	"github.com/loractl/loractl/internal/safetensors"
)

// VeRA is an adapter in PEFT's VeRA form: frozen A (r, maxIn) and B (maxOut, r) shared by every
// module, each using A[:, :in] and B[:out], and per module the trained vectors b (out) and
// d (r): ΔW = diag(b)·B[:out]·diag(d)·A[:, :in], no scaling.
type VeRA struct {
	Config Config // R, Dropout, Base, Fingerprint, Layers (Alpha and RSLoRA are unused)
	A, B   []float32
	MaxIn  int
	MaxOut int
	Pairs  []VeRAPair
	// DInitial is PEFT's d_initial (the start of d), recorded in the config.
	DInitial float64
	// PRNGKey is PEFT's projection_prng_key: A and B are what PyTorch's CPU generator seeded
	// with it draws (PEFT's releases up to 0.20 rebuild them from the key and ignore the saved
	// matrices).
	PRNGKey uint64
	// SaveProjection stores A and B in the file (PEFT's save_projection). Without it they are
	// left out for PEFT and loractl to regenerate from PRNGKey; SaveVeRA stores them anyway when
	// they are not that draw.
	SaveProjection bool
}

// VeRAPair is one module's trained vectors.
type VeRAPair struct {
	Module  Module
	LambdaB []float32 // (out)
	LambdaD []float32 // (r)
}

// veraConfig is a PEFT VeRA adapter_config.json.
type veraConfig struct {
	PeftType          string  `json:"peft_type"`
	TaskType          string  `json:"task_type"`
	R                 int     `json:"r"`
	TargetModules     any     `json:"target_modules"`
	ProjectionPRNGKey uint64  `json:"projection_prng_key"`
	SaveProjection    bool    `json:"save_projection"`
	VeraDropout       float64 `json:"vera_dropout"`
	DInitial          float64 `json:"d_initial"`
	FanInFanOut       bool    `json:"fan_in_fan_out"`
	Bias              string  `json:"bias"`
	ModulesToSave     []any   `json:"modules_to_save"`
	InitWeights       bool    `json:"init_weights"`
	LayersToTransform []int   `json:"layers_to_transform"`
	BaseModel         string  `json:"base_model_name_or_path"`
	InferenceMode     bool    `json:"inference_mode"`
}

// Shared VeRA tensor names in PEFT's file (the adapter name removed on save), and loractl's
// header key for the modules' input widths.
const (
	veraAName = "base_model.vera_A"
	veraBName = "base_model.vera_B"
	veraInKey = "loractl.vera_in"
)

// SaveVeRA writes v in PEFT's VeRA layout, atomically: the per-module vera_lambda_b/d and,
// with v.SaveProjection (or when A and B are not PEFT's draw for v.PRNGKey), the shared
// projections with save_projection true.
func SaveVeRA(dir string, v *VeRA) error {
	if err := os.MkdirAll(dir, 0o755); err != nil {
		return fmt.Errorf("adapter folder %s: %w", dir, err)
	}
	r := v.Config.R
	enc := func(name string, data []float32, shape ...int) (safetensors.Tensor, error) {
		b, err := safetensors.EncodeFloat32(safetensors.F32, data)
		return safetensors.Tensor{Name: name, DType: safetensors.F32, Shape: shape, Data: b}, err
	}
	store := v.SaveProjection
	if !store {
		A, B := VeRAProjections(v.PRNGKey, r, v.MaxIn, v.MaxOut)
		store = !slices.Equal(A, v.A) || !slices.Equal(B, v.B)
	}
	var ts []safetensors.Tensor
	if store {
		t, err := enc(veraAName, v.A, r, v.MaxIn)
		if err != nil {
			return err
		}
		ts = append(ts, t)
		if t, err = enc(veraBName, v.B, v.MaxOut, r); err != nil {
			return err
		}
		ts = append(ts, t)
	}
	ins := map[string]int{}
	var mods []Module
	for _, p := range v.Pairs {
		mods = append(mods, p.Module)
		ins[p.Module.Path] = p.Module.In
		for _, x := range []struct {
			s string
			d []float32
		}{{"vera_lambda_b", p.LambdaB}, {"vera_lambda_d", p.LambdaD}} {
			t, err := enc(peftPrefix+p.Module.Path+"."+x.s, x.d, len(x.d))
			if err != nil {
				return err
			}
			ts = append(ts, t)
		}
	}
	inJS, _ := json.Marshal(ins)
	meta := map[string]string{"format": "pt", MethodKey: "vera", veraInKey: string(inJS)}
	if v.Config.Fingerprint != "" {
		meta[FingerprintKey] = v.Config.Fingerprint
	}
	if err := safetensors.Write(filepath.Join(dir, WeightsFile), ts, meta); err != nil {
		return err
	}
	targets, layers := peftTargets(mods, v.Config.Layers, v.Config.NumLayers)
	cfg := veraConfig{PeftType: "VERA", TaskType: "CAUSAL_LM", R: r, TargetModules: targets, SaveProjection: store, ProjectionPRNGKey: v.PRNGKey,
		VeraDropout: v.Config.Dropout, DInitial: v.DInitial, Bias: "none", InitWeights: true,
		LayersToTransform: layers, BaseModel: v.Config.Base, InferenceMode: true}
	js, err := json.MarshalIndent(cfg, "", "  ")
	if err != nil {
		return err
	}
	return atomicfile.Write(filepath.Join(dir, ConfigFile), append(js, '\n'))
}

// errVeRANeedsBase says that a VeRA file written by another tool does not record its modules'
// input widths; LoadFor supplies them from the base.
var errVeRANeedsBase = errors.New("the VeRA adapter does not record its modules' input widths")

// veraShared matches the shared projections, with or without an adapter name.
var veraShared = regexp.MustCompile(`^base_model\.vera_([AB])(?:\.[A-Za-z0-9_]+)?$`)

// veraTensor matches PEFT VeRA per-module tensor names.
var veraTensor = regexp.MustCompile(`^(?:base_model\.model\.)?(.+)\.vera_lambda_([bd])(?:\.[A-Za-z0-9_]+)?$`)

// loadVeRA reads a PEFT VeRA folder as the equivalent LoRA adapter: A' = diag(d)·A[:, :in],
// B' = diag(b)·B[:out], scale 1. ins gives the input widths by module path when the file does
// not (nil: use the file's).
func loadVeRA(dir string, raw []byte, ins map[string]int) (*Adapter, error) {
	cfgPath := filepath.Join(dir, ConfigFile)
	var cfg veraConfig
	if err := json.Unmarshal(raw, &cfg); err != nil {
		return nil, fmt.Errorf("%s: not a valid adapter config: %v", cfgPath, err)
	}
	if cfg.R < 1 {
		return nil, fmt.Errorf("%s: r must be at least 1, got %d", cfgPath, cfg.R)
	}
	wPath := filepath.Join(dir, WeightsFile)
	f, err := safetensors.Open(wPath)
	if err != nil {
		return nil, err
	}
	defer f.Close()
	if ins == nil {
		js := f.Metadata()[veraInKey]
		if js == "" {
			return nil, errVeRANeedsBase
		}
		if err := json.Unmarshal([]byte(js), &ins); err != nil {
			return nil, fmt.Errorf("%s: metadata %s is not valid: %v", wPath, veraInKey, err)
		}
	}
	r := cfg.R
	var A, B []float32
	var maxIn, maxOut int
	type vec struct{ b, d []float32 }
	vecs := map[string]*vec{}
	for _, info := range f.Tensors() {
		name := info.Name
		switch {
		case veraShared.MatchString(name) && veraShared.FindStringSubmatch(name)[1] == "A":
			if len(info.Shape) != 2 || info.Shape[0] != r {
				return nil, fmt.Errorf("%s: %s has shape %v, want [%d, in]", wPath, name, info.Shape, r)
			}
			maxIn = info.Shape[1]
			if A, err = f.Float32(name); err != nil {
				return nil, err
			}
		case veraShared.MatchString(name) && veraShared.FindStringSubmatch(name)[1] == "B":
			if len(info.Shape) != 2 || info.Shape[1] != r {
				return nil, fmt.Errorf("%s: %s has shape %v, want [out, %d]", wPath, name, info.Shape, r)
			}
			maxOut = info.Shape[0]
			if B, err = f.Float32(name); err != nil {
				return nil, err
			}
		default:
			m := veraTensor.FindStringSubmatch(name)
			if m == nil {
				return nil, fmt.Errorf("%s: tensor %q is not a VeRA tensor loractl can apply", wPath, name)
			}
			if !layerPath.MatchString(m[1]) {
				return nil, fmt.Errorf("%s: tensor %q adapts %s, which is not a decoder Linear layer loractl supports", wPath, name, m[1])
			}
			v, err := f.Float32(name)
			if err != nil {
				return nil, err
			}
			if vecs[m[1]] == nil {
				vecs[m[1]] = &vec{}
			}
			if m[2] == "b" {
				vecs[m[1]].b = v
			} else {
				vecs[m[1]].d = v
			}
		}
	}
	switch {
	case A == nil && B == nil && !cfg.SaveProjection:
		// Not saved: PEFT regenerates them from projection_prng_key, and so does loractl, at the
		// largest input and output widths of the adapted modules (PEFT's _find_dim).
		for path, v := range vecs {
			maxIn, maxOut = max(maxIn, ins[path]), max(maxOut, len(v.b))
		}
		A, B = VeRAProjections(cfg.ProjectionPRNGKey, r, maxIn, maxOut)
	case A == nil || B == nil:
		return nil, fmt.Errorf("%s: the shared vera_A and vera_B are missing (save_projection is true in %s); the adapter file is incomplete", wPath, ConfigFile)
	}
	a := &Adapter{Config: Config{R: r, Alpha: float64(r), Dropout: cfg.VeraDropout, Layers: cfg.LayersToTransform,
		Base: cfg.BaseModel, Fingerprint: f.Metadata()[FingerprintKey], Method: "vera"}}
	paths := make([]string, 0, len(vecs))
	for p := range vecs {
		paths = append(paths, p)
	}
	sort.Strings(paths)
	for _, path := range paths {
		v := vecs[path]
		lm := layerPath.FindStringSubmatch(path)
		layer, _ := strconv.Atoi(lm[1])
		in, ok := ins[path]
		out := len(v.b)
		switch {
		case v.b == nil || v.d == nil:
			return nil, fmt.Errorf("%s: %s has only one of vera_lambda_b and vera_lambda_d", wPath, path)
		case len(v.d) != r:
			return nil, fmt.Errorf("%s: %s.vera_lambda_d has %d values, want r = %d", wPath, path, len(v.d), r)
		case !ok:
			return nil, fmt.Errorf("%s: no input width for %s", wPath, path)
		case in > maxIn || out > maxOut:
			return nil, fmt.Errorf("%s: %s is %d×%d, larger than the shared projections (%d×%d)", wPath, path, out, in, maxOut, maxIn)
		}
		p := &Pair{Module: Module{Path: path, Layer: layer, Name: lm[3], In: in, Out: out}, R: r,
			A: make([]float32, r*in), B: make([]float32, out*r)}
		for k := 0; k < r; k++ {
			for c := 0; c < in; c++ {
				p.A[k*in+c] = v.d[k] * A[k*maxIn+c]
			}
		}
		for o := 0; o < out; o++ {
			for k := 0; k < r; k++ {
				p.B[o*r+k] = v.b[o] * B[o*r+k]
			}
		}
		a.Pairs = append(a.Pairs, p)
	}
	if len(a.Pairs) == 0 {
		return nil, fmt.Errorf("%s: no VeRA modules", wPath)
	}
	a.sortPairs()
	return a, nil
}

// veraInputs returns the input widths of a model's adaptable modules, by path.
func veraInputs(c *model.Config) map[string]int {
	ins := map[string]int{}
	for _, m := range Modules(c) {
		ins[m.Path] = m.In
	}
	return ins
}
