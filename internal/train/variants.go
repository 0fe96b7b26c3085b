package train

import (
	"errors"
	"fmt"
	"io/fs"
	"math/rand/v2"
	"os"
	"path/filepath"
	"strings"

	"github.com/loractl/loractl/internal/config"
	"github.com/loractl/loractl/internal/lora"
	"github.com/loractl/loractl/internal/model"
	"github.com/loractl/loractl/internal/optim"
	"github.com/loractl/loractl/internal/safetensors"
	"github.com/loractl/loractl/internal/variant"
)

// VariantStateFile holds a composed variant's own parameters and state (the adapter file holds
// only the effective factors), in a checkpoint and beside the final adapter, so that a run can
// resume or continue (--init-adapter) from it.
const VariantStateFile = "variant_state.safetensors"

// newVariant builds the composed method of lora.method over the fresh adapter a, or restores
// it from --init-adapter's variant state.
func (j *job) newVariant(a *lora.Adapter) (variant.Method, error) {
	c := j.cfg
	l := c.LoRA
	initR := l.InitR
	if initR == 0 {
		initR = l.R
	}
	o := variant.Options{Seed: c.Train.Seed, DInitial: l.DInitial, SaveProjection: l.VeRASaveProjection, NolaK: l.NolaK, SoraLambda: l.SoraLambda,
		InitR: initR, TargetR: l.TargetR, TInit: l.TInit, TFinal: l.TFinal, DeltaT: l.DeltaT, TotalSteps: c.Train.MaxSteps,
		Beta1: l.Beta1, Beta2: l.Beta2, OrthWeight: l.OrthWeight}
	var m variant.Method
	var err error
	switch l.Method {
	case "vera":
		m, err = variant.NewVeRA(a, o)
	case "tied":
		m, err = variant.NewTied(a, o)
	case "nola":
		m, err = variant.NewNOLA(a, o)
	case "sora":
		m, err = variant.NewSoRA(a, o)
	case "adalora":
		m, err = variant.NewAdaLoRA(a, o)
	default:
		return nil, fmt.Errorf("lora.method %s is not a composed variant", l.Method)
	}
	if err != nil {
		return nil, fmt.Errorf("%s: %w", c.Model.Path, err)
	}
	if dir := j.opt.InitAdapter; dir != "" {
		if err := loadVariantState(m, dir); err != nil {
			return nil, err
		}
	}
	return m, nil
}

// saveVariantState writes m's state into dir.
func saveVariantState(m variant.Method, dir string) error {
	st := m.State()
	names := make([]string, 0, len(st))
	for k := range st {
		names = append(names, k)
	}
	var ts []safetensors.Tensor
	for _, k := range names {
		b, err := safetensors.EncodeFloat32(safetensors.F32, st[k])
		if err != nil {
			return err
		}
		ts = append(ts, safetensors.Tensor{Name: k, DType: safetensors.F32, Shape: []int{len(st[k])}, Data: b})
	}
	return safetensors.Write(filepath.Join(dir, VariantStateFile), ts, map[string]string{"format": "pt", lora.MethodKey: m.Name()})
}

// loadVariantState restores m's state from dir.
func loadVariantState(m variant.Method, dir string) error {
	path := filepath.Join(dir, VariantStateFile)
	if _, err := os.Stat(path); errors.Is(err, fs.ErrNotExist) {
		return fmt.Errorf("%s: no %s; lora.method %s continues only from a folder a %s run wrote (its adapter file holds only the composed factors)", dir, VariantStateFile, m.Name(), m.Name())
	}
	f, err := safetensors.Open(path)
	if err != nil {
		return err
	}
	defer f.Close()
	if got := f.Metadata()[lora.MethodKey]; got != m.Name() {
		return fmt.Errorf("%s: written by lora.method %q, this run is %s", path, got, m.Name())
	}
	st := map[string][]float32{}
	for _, t := range f.Tensors() {
		v, err := f.Float32(t.Name)
		if err != nil {
			return err
		}
		st[t.Name] = v
	}
	if err := m.SetState(st); err != nil {
		return fmt.Errorf("%s: %w", path, err)
	}
	return nil
}

// This file holds what the LoRA variants of the survey (arXiv 2501.00365) change in the loop:
// the adapter's shape (rank_pattern, rank_schedule, DyLoRA's r_max), the optimizer groups
// (LoRA+), and DyLoRA's per-step rank. LoRA-FA (freeze_a) lives in the engine.

// adapterConfig returns the lora.Config of a fresh adapter over mods: the rank of every module
// (r, its rank_pattern entry, the linear rank_schedule, or DyLoRA's r_max), and the method.
func adapterConfig(c *config.Train, mc *model.Config, mods []lora.Module) (lora.Config, error) {
	l := c.LoRA
	lc := lora.Config{R: l.R, Alpha: l.Alpha, Dropout: l.Dropout, RSLoRA: l.RSLoRA, Layers: l.Layers,
		Base: c.Model.Path, Fingerprint: lora.Fingerprint(mc), Method: l.Method, NumLayers: mc.NumHiddenLayers}
	switch {
	case l.Method == "dylora":
		lc.R, lc.RMin = l.RMax, l.RMin
	case l.Method == "adalora" && l.InitR > 0:
		lc.R = l.InitR
	case l.RankSchedule == "linear":
		// PEFT's r is the default rank; the pattern lists every module whose rank differs.
		lc.R = l.RMax
		lc.RankPattern = map[string]int{}
		for _, m := range mods {
			if r := l.RankOf(m.Layer, mc.NumHiddenLayers); r != lc.R {
				lc.RankPattern[m.Path] = r
			}
		}
	case len(l.RankPattern) > 0:
		pat, err := lora.ResolvePattern(l.RankPattern, mods, "lora.rank_pattern")
		if err != nil {
			return lc, err
		}
		lc.RankPattern = pat
	}
	return lc, nil
}

// paramGroups returns the AdamW groups: one group, or with LoRA+ the A matrices at lr and the
// B matrices at λ·lr (LoRA+, Hayou et al. 2024).
func paramGroups(c *config.Train, ps []optim.Param) []optim.Group {
	λ := c.LoRA.LoRAPlusRatio
	if λ == 0 || c.LoRA.Method == "full" {
		return []optim.Group{{Params: ps, LRScale: 1}}
	}
	var a, b []optim.Param
	for _, p := range ps {
		if strings.HasSuffix(p.Name, ".lora_B.weight") {
			b = append(b, p)
		} else {
			a = append(a, p)
		}
	}
	return []optim.Group{{Params: a, LRScale: 1}, {Params: b, LRScale: λ}}
}

// dyloraRank returns DyLoRA's rank b for a step: uniform in [r_min, r_max], from the run's
// seed and the step, so that a resumed run draws the same ranks.
func dyloraRank(c *config.Train, step int) int {
	rng := rand.New(rand.NewPCG(c.Train.Seed^0xd71a, uint64(step)))
	return c.LoRA.RMin + rng.IntN(c.LoRA.RMax-c.LoRA.RMin+1)
}

// beforeStep prepares the engine for a training step: DyLoRA's sampled rank.
func (j *job) beforeStep(step int) error {
	if j.cfg.LoRA.Method != "dylora" {
		return nil
	}
	return j.eng.SetRankLimit(dyloraRank(j.cfg, step))
}

// beforeEval makes evaluation see the whole adapter (DyLoRA: rank r_max).
func (j *job) beforeEval() error {
	if j.cfg.LoRA.Method != "dylora" {
		return nil
	}
	return j.eng.SetRankLimit(0)
}

// describeAdapter prints the adapter's shape for --dry-run: modules, ranks and scales, and
// what the variant changes.
func (j *job) describeAdapter(a *lora.Adapter) {
	l := j.cfg.LoRA
	rmin, rmax := a.MaxRank(), 0
	for _, p := range a.Pairs {
		rmin, rmax = min(rmin, a.RankOf(p)), max(rmax, a.RankOf(p))
	}
	if rmin == rmax {
		fmt.Fprintf(j.log, "adapters: %d modules, r %d, scale %g\n", len(a.Pairs), rmax, a.ScaleOf(a.Pairs[0]))
	} else {
		count := map[int][]string{} // rank → module paths
		for _, p := range a.Pairs {
			r := a.RankOf(p)
			count[r] = append(count[r], strings.TrimPrefix(p.Module.Path, "model."))
		}
		var parts []string
		for r := rmin; r <= rmax; r++ {
			if ms := count[r]; len(ms) > 0 {
				parts = append(parts, fmt.Sprintf("r %d × %d (%s, …)", r, len(ms), ms[0]))
			}
		}
		fmt.Fprintf(j.log, "adapters: %d modules, r %d to %d: %s\n", len(a.Pairs), rmin, rmax, strings.Join(parts, "; "))
	}
	if l.Method == "dora" {
		fmt.Fprintf(j.log, "dora: trains A, B and a magnitude m (out) per module, started at ‖W0‖ per row; the norm is detached in backward (DoRA's memory-saving form, as PEFT)\n")
	}
	if l.Method == "dylora" {
		fmt.Fprintf(j.log, "dylora: each step trains the leading b ranks, b uniform in [%d, %d], at scale alpha/b; eval and the saved adapter use r %d; `eval --rank k` and `merge --rank k` truncate it\n", l.RMin, l.RMax, l.RMax)
	}
	if l.FreezeA {
		fmt.Fprintf(j.log, "freeze_a: A stays at its %s initialisation and is not a parameter; only B trains; Linear inputs that only dA would read are not kept (see activations)\n", l.InitA)
	}
	if l.LoRAPlusRatio > 0 {
		fmt.Fprintf(j.log, "lora+: B trains at %g × lr, A at lr (two AdamW groups)\n", l.LoRAPlusRatio)
	}
	if j.variant != nil {
		fmt.Fprintln(j.log, j.variant.Describe())
	}
	fmt.Fprintf(j.log, "runs on %s: the base and LoRA products, forward and backward; on the host: the optimizer%s\n", j.m.Backend().Name(), hostParts(l))
}

// hostParts names what a variant adds on the host, for --dry-run's placement line.
func hostParts(l config.LoRASection) string {
	switch {
	case l.Method == "dylora":
		return ", DyLoRA's rank sampling (the masked A and B are uploaded once per step)"
	case l.Method == "dora":
		return "; DoRA: the column scaling by m/‖W0 + s·BA‖ with the bias, and its reduction for m's gradient, on the device (ColScale ops); the norms once per step from A·W0ᵀ (device) and A·Aᵀ (host), O(r·out) per module"
	case l.Composed():
		return fmt.Sprintf(", factor composition: host (%s's parameters → A', B' each step, uploaded; dA', dB' downloaded and back-propagated into them: O(r·(in+out)) per module)", l.Method)
	}
	return ""
}

// variantReport logs what a pruning variant ended with: the effective rank of every module.
func (j *job) variantReport() {
	if j.variant == nil {
		return
	}
	type ranked interface{ Ranks() []int }
	type gated interface{ EffectiveRanks() []int }
	var ranks []int
	switch v := j.variant.(type) {
	case ranked:
		ranks = v.Ranks()
	case gated:
		ranks = v.EffectiveRanks()
	default:
		return
	}
	a := j.variant.Adapter()
	total := 0
	var parts []string
	for i, p := range a.Pairs {
		total += ranks[i]
		parts = append(parts, fmt.Sprintf("%s %d", strings.TrimPrefix(p.Module.Path, "model."), ranks[i]))
	}
	fmt.Fprintf(j.log, "%s: effective ranks (total %d of %d): %s\n", j.variant.Name(), total, a.Config.R*len(a.Pairs), strings.Join(parts, ", "))
}
