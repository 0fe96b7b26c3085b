package lora

import (
	"encoding/json"
	"errors"
	"fmt"
	"io/fs"
	"os"
	"path/filepath"
	"regexp"
	"sort"
	"strconv"
	"strings"

	"github.com/loractl/loractl/internal/atomicfile"
	"github.com/loractl/loractl/internal/safetensors"
)

// PEFT file names inside an adapter folder.
const (
	WeightsFile = "adapter_model.safetensors"
	ConfigFile  = "adapter_config.json"
)

// peftPrefix is what PEFT puts before the module path in adapter tensor names.
const peftPrefix = "base_model.model."

// peftConfig is adapter_config.json. It holds only keys that every PEFT version since 0.7
// (the first with use_rslora) knows, because older versions reject unknown keys.
type peftConfig struct {
	PeftType          string  `json:"peft_type"`
	TaskType          string  `json:"task_type"`
	R                 int     `json:"r"`
	LoraAlpha         float64 `json:"lora_alpha"`
	LoraDropout       float64 `json:"lora_dropout"`
	TargetModules     any     `json:"target_modules"` // []string, or a regex string
	UseRSLoRA         bool    `json:"use_rslora"`
	Bias              string  `json:"bias"`
	FanInFanOut       bool    `json:"fan_in_fan_out"`
	BaseModel         string  `json:"base_model_name_or_path"`
	InferenceMode     bool    `json:"inference_mode"`
	LayersToTransform []int   `json:"layers_to_transform"`
	InitLoraWeights   bool    `json:"init_lora_weights"`
	ModulesToSave     []any   `json:"modules_to_save"`
	// Per-module ranks and alphas (PEFT ≥ 0.6), written only when some module differs from r.
	// Keys are "layers.N.<part>.<name>", which every PEFT version's pattern match finds.
	RankPattern  map[string]int     `json:"rank_pattern,omitempty"`
	AlphaPattern map[string]float64 `json:"alpha_pattern,omitempty"`
	// UseDoRA marks a DoRA adapter (PEFT ≥ 0.9): each module has a lora_magnitude_vector.
	UseDoRA bool `json:"use_dora,omitempty"`
}

// Safetensors header metadata keys of loractl's own (PEFT ignores them).
const (
	MethodKey = "loractl.method" // the LoRA variant that trained the adapter
	RMinKey   = "loractl.r_min"  // DyLoRA's smallest trained rank
)

// patternKey is the rank_pattern / alpha_pattern key of a module path.
func patternKey(path string) string { return strings.TrimPrefix(path, "model.") }

// ResolvePattern maps a PEFT pattern map (rank_pattern, alpha_pattern) onto module paths:
// each module that some pattern matches gets that pattern's value, as PEFT matches them.
// A pattern that matches no module is an error naming it.
func ResolvePattern[V any](pat map[string]V, mods []Module, key string) (map[string]V, error) {
	out := map[string]V{}
	used := map[string]bool{}
	for _, m := range mods {
		if v, ok := patternLookup(pat, m.Path); ok {
			out[m.Path] = v
			for k := range pat {
				if re, err := regexp.Compile(`^(?:.*\.)?(?:` + k + `)$`); err == nil && re.MatchString(m.Path) {
					used[k] = true
				}
			}
		}
	}
	for k := range pat {
		if !used[k] {
			return nil, fmt.Errorf("%s: %q matches no adapted module; patterns match a dot-separated suffix of a path such as %s (e.g. down_proj or layers.0.self_attn.q_proj)", key, k, mods[0].Path)
		}
	}
	return out, nil
}

// patternLookup finds path's entry in a PEFT pattern map as PEFT matches it: the key is a
// regular expression that must match a dot-separated suffix of the path.
func patternLookup[V any](pat map[string]V, path string) (V, bool) {
	keys := make([]string, 0, len(pat))
	for k := range pat {
		keys = append(keys, k)
	}
	sort.Strings(keys)
	for _, k := range keys {
		if re, err := regexp.Compile(`^(?:.*\.)?(?:` + k + `)$`); err == nil && re.MatchString(path) {
			return pat[k], true
		}
	}
	var zero V
	return zero, false
}

// Save writes the adapter to dir in the exact PEFT layout: adapter_model.safetensors with
// tensors base_model.model.<module path>.lora_A.weight (r, in) and .lora_B.weight (out, r),
// and adapter_config.json. The header metadata is {"format":"pt"} plus the base model's
// fingerprint when known (FingerprintKey). Each file is written to a temporary file, synced and renamed.
func (a *Adapter) Save(dir string) error {
	if err := os.MkdirAll(dir, 0o755); err != nil {
		return fmt.Errorf("adapter folder %s: %w", dir, err)
	}
	a.sortPairs()
	var ts []safetensors.Tensor
	var mods []Module
	rankPat, alphaPat := map[string]int{}, map[string]float64{}
	for _, p := range a.Pairs {
		m := p.Module
		mods = append(mods, m)
		r := a.RankOf(p)
		if r != a.Config.R {
			rankPat[patternKey(m.Path)] = r
		}
		if al := a.AlphaOf(p); al != a.Config.Alpha {
			alphaPat[patternKey(m.Path)] = al
		}
		for _, t := range []struct {
			suffix string
			data   []float32
			shape  []int
		}{{"lora_A.weight", p.A, []int{r, m.In}}, {"lora_B.weight", p.B, []int{m.Out, r}}, {"lora_magnitude_vector", p.M, []int{m.Out}}} {
			if t.data == nil {
				continue // no magnitude: LoRA
			}
			b, err := safetensors.EncodeFloat32(safetensors.F32, t.data)
			if err != nil {
				return err
			}
			ts = append(ts, safetensors.Tensor{Name: peftPrefix + m.Path + "." + t.suffix, DType: safetensors.F32, Shape: t.shape, Data: b})
		}
	}
	meta := map[string]string{"format": "pt"}
	if a.Config.Fingerprint != "" {
		meta[FingerprintKey] = a.Config.Fingerprint
	}
	if a.Config.Method != "" && a.Config.Method != "lora" {
		meta[MethodKey] = a.Config.Method
	}
	if a.Config.RMin > 0 {
		meta[RMinKey] = strconv.Itoa(a.Config.RMin)
	}
	if err := safetensors.Write(filepath.Join(dir, WeightsFile), ts, meta); err != nil {
		return err
	}
	targets, layers := peftTargets(mods, a.Config.Layers, a.Config.NumLayers)
	cfg := peftConfig{
		PeftType: "LORA", TaskType: "CAUSAL_LM", R: a.Config.R, LoraAlpha: a.Config.Alpha, LoraDropout: a.Config.Dropout,
		TargetModules: targets, UseRSLoRA: a.Config.RSLoRA, Bias: "none", BaseModel: a.Config.Base,
		InferenceMode: true, LayersToTransform: layers, InitLoraWeights: true,
	}
	if len(rankPat) > 0 {
		cfg.RankPattern = rankPat
	}
	if len(alphaPat) > 0 {
		cfg.AlphaPattern = alphaPat
	}
	for _, p := range a.Pairs {
		cfg.UseDoRA = cfg.UseDoRA || p.M != nil
	}
	js, err := json.MarshalIndent(cfg, "", "  ")
	if err != nil {
		return err
	}
	return atomicfile.Write(filepath.Join(dir, ConfigFile), append(js, '\n'))
}

// tensorName matches PEFT LoRA tensor names; PEFT strips the adapter name on save, but files
// saved from a live model may still carry it (".lora_A.default.weight").
var tensorName = regexp.MustCompile(`^(?:base_model\.model\.)?(.+)\.lora_([AB])(?:\.[A-Za-z0-9_]+)?\.weight$`)

// layerPath matches the module paths loractl can adapt.
var layerPath = regexp.MustCompile(`^model\.layers\.(\d+)\.(self_attn|mlp)\.(q_proj|k_proj|v_proj|o_proj|gate_proj|up_proj|down_proj)$`)

// Load reads a PEFT LoRA adapter folder written by loractl or by PEFT itself.
func Load(dir string) (*Adapter, error) {
	cfgPath := filepath.Join(dir, ConfigFile)
	raw, err := os.ReadFile(cfgPath)
	if errors.Is(err, fs.ErrNotExist) {
		return nil, fmt.Errorf("adapter %s: no %s; point --adapter at a PEFT adapter folder", dir, ConfigFile)
	}
	if err != nil {
		return nil, fmt.Errorf("adapter %s: %w", dir, err)
	}
	var cfg peftConfig
	if err := json.Unmarshal(raw, &cfg); err != nil {
		return nil, fmt.Errorf("%s: not a valid adapter config: %v", cfgPath, err)
	}
	var extra map[string]any
	_ = json.Unmarshal(raw, &extra)
	if cfg.PeftType == "VERA" {
		a, err := loadVeRA(dir, raw, nil)
		if errors.Is(err, errVeRANeedsBase) {
			return nil, fmt.Errorf("%s: %w; loractl reads it together with its base model (generate, eval and merge do)", cfgPath, err)
		}
		return a, err
	}
	switch {
	case cfg.PeftType != "LORA":
		return nil, fmt.Errorf("%s: peft_type %q is not supported (LORA and VERA are)", cfgPath, cfg.PeftType)
	case cfg.R < 1:
		return nil, fmt.Errorf("%s: r must be at least 1, got %d", cfgPath, cfg.R)
	case cfg.FanInFanOut:
		return nil, fmt.Errorf("%s: fan_in_fan_out adapters (GPT-2 Conv1D) are not supported", cfgPath)
	case cfg.Bias != "" && cfg.Bias != "none":
		return nil, fmt.Errorf("%s: bias %q is not supported (only none)", cfgPath, cfg.Bias)
	}

	wPath := filepath.Join(dir, WeightsFile)
	f, err := safetensors.Open(wPath)
	if err != nil {
		return nil, err
	}
	defer f.Close()
	a := &Adapter{Config: Config{R: cfg.R, Alpha: cfg.LoraAlpha, Dropout: cfg.LoraDropout, RSLoRA: cfg.UseRSLoRA,
		Layers: cfg.LayersToTransform, Base: cfg.BaseModel, Fingerprint: f.Metadata()[FingerprintKey],
		Method: f.Metadata()[MethodKey]}}
	if v := f.Metadata()[RMinKey]; v != "" {
		if a.Config.RMin, err = strconv.Atoi(v); err != nil || a.Config.RMin < 1 {
			return nil, fmt.Errorf("%s: metadata %s = %q is not a positive rank", wPath, RMinKey, v)
		}
	}
	pairs := map[string]*Pair{}
	mags := map[string][]float32{}
	for _, info := range f.Tensors() {
		if mm := magnitudeName.FindStringSubmatch(info.Name); mm != nil && cfg.UseDoRA {
			if len(info.Shape) != 1 {
				return nil, fmt.Errorf("%s: tensor %q has shape %v, want a vector", wPath, info.Name, info.Shape)
			}
			v, err := f.Float32(info.Name)
			if err != nil {
				return nil, err
			}
			mags[mm[1]] = v
			continue
		}
		m := tensorName.FindStringSubmatch(info.Name)
		if m == nil {
			return nil, fmt.Errorf("%s: tensor %q is not a LoRA A/B weight; this adapter holds something loractl cannot apply", wPath, info.Name)
		}
		path, which := m[1], m[2]
		lm := layerPath.FindStringSubmatch(path)
		if lm == nil {
			return nil, fmt.Errorf("%s: tensor %q adapts %s, which is not a decoder Linear layer loractl supports", wPath, info.Name, path)
		}
		if len(info.Shape) != 2 {
			return nil, fmt.Errorf("%s: tensor %q has shape %v, want a matrix", wPath, info.Name, info.Shape)
		}
		vals, err := f.Float32(info.Name)
		if err != nil {
			return nil, err
		}
		p := pairs[path]
		if p == nil {
			layer, _ := strconv.Atoi(lm[1])
			p = &Pair{Module: Module{Path: path, Layer: layer, Name: lm[3]}, R: cfg.R}
			if pr, ok := patternLookup(cfg.RankPattern, path); ok {
				p.R = pr
			}
			if pa, ok := patternLookup(cfg.AlphaPattern, path); ok {
				p.Alpha = pa
			}
			pairs[path] = p
		}
		rdim := 0
		if which == "A" {
			rdim = info.Shape[0]
			p.A, p.Module.In = vals, info.Shape[1]
		} else {
			rdim = info.Shape[1]
			p.B, p.Module.Out = vals, info.Shape[0]
		}
		if rdim != p.R {
			src := "r"
			if _, ok := patternLookup(cfg.RankPattern, path); ok {
				src = "its rank_pattern entry"
			}
			return nil, fmt.Errorf("%s: %s has shape %v but %s is %d", wPath, info.Name, info.Shape, src, p.R)
		}
	}
	paths := make([]string, 0, len(pairs))
	for path := range pairs {
		paths = append(paths, path)
	}
	sort.Strings(paths)
	for _, path := range paths {
		p := pairs[path]
		if p.A == nil || p.B == nil {
			return nil, fmt.Errorf("%s: %s has only one of lora_A and lora_B; the adapter file is incomplete", wPath, path)
		}
		if cfg.UseDoRA {
			p.M = mags[path]
			if len(p.M) != p.Module.Out {
				return nil, fmt.Errorf("%s: use_dora is set but %s has no lora_magnitude_vector of %d values; the adapter file is incomplete", wPath, path, p.Module.Out)
			}
			delete(mags, path)
		}
		a.Pairs = append(a.Pairs, p)
	}
	if len(a.Pairs) == 0 {
		return nil, fmt.Errorf("%s: no LoRA tensors", wPath)
	}
	for path := range mags {
		return nil, fmt.Errorf("%s: %s has a lora_magnitude_vector but no lora_A/lora_B", wPath, path)
	}
	if cfg.UseDoRA && a.Config.Method == "" {
		a.Config.Method = "dora"
	}
	a.sortPairs()
	return a, nil
}

// magnitudeName matches PEFT's DoRA magnitude tensor names (with or without an adapter name, and
// with the ".weight" of PEFT's ModuleDict form).
var magnitudeName = regexp.MustCompile(`^(?:base_model\.model\.)?(.+)\.lora_magnitude_vector(?:\.[A-Za-z0-9_]+)?(?:\.weight)?$`)
