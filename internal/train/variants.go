package train

import (
	"fmt"
	"math/rand/v2"
	"strings"

	"github.com/loractl/loractl/internal/config"
	"github.com/loractl/loractl/internal/lora"
	"github.com/loractl/loractl/internal/model"
	"github.com/loractl/loractl/internal/optim"
)

// This file holds what the LoRA variants of the survey (arXiv 2501.00365) change in the loop:
// the adapter's shape (rank_pattern, rank_schedule, DyLoRA's r_max), the optimizer groups
// (LoRA+), and DyLoRA's per-step rank. LoRA-FA (freeze_a) lives in the engine.

// adapterConfig returns the lora.Config of a fresh adapter over mods: the rank of every module
// (r, its rank_pattern entry, the linear rank_schedule, or DyLoRA's r_max), and the method.
func adapterConfig(c *config.Train, mc *model.Config, mods []lora.Module) (lora.Config, error) {
	l := c.LoRA
	lc := lora.Config{R: l.R, Alpha: l.Alpha, Dropout: l.Dropout, RSLoRA: l.RSLoRA, Layers: l.Layers,
		Base: c.Model.Path, Fingerprint: lora.Fingerprint(mc), Method: l.Method}
	switch {
	case l.Method == "dylora":
		lc.R, lc.RMin = l.RMax, l.RMin
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
	if l.Method == "dylora" {
		fmt.Fprintf(j.log, "dylora: each step trains the leading b ranks, b uniform in [%d, %d], at scale alpha/b; eval and the saved adapter use r %d; `eval --rank k` and `merge --rank k` truncate it\n", l.RMin, l.RMax, l.RMax)
	}
	if l.FreezeA {
		fmt.Fprintf(j.log, "freeze_a: A stays at its %s initialisation and is not a parameter; only B trains; Linear inputs that only dA would read are not kept (see activations)\n", l.InitA)
	}
	if l.LoRAPlusRatio > 0 {
		fmt.Fprintf(j.log, "lora+: B trains at %g × lr, A at lr (two AdamW groups)\n", l.LoRAPlusRatio)
	}
	fmt.Fprintf(j.log, "runs on %s: the base and LoRA products, forward and backward; on the host: the optimizer%s\n", j.m.Backend().Name(), hostParts(l))
}

// hostParts names what a variant adds on the host, for --dry-run's placement line.
func hostParts(l config.LoRASection) string {
	if l.Method == "dylora" {
		return ", DyLoRA's rank sampling (the masked A and B are uploaded once per step)"
	}
	return ""
}
