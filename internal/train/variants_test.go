package train

import (
	"context"
	"errors"
	"math"
	"path/filepath"
	"slices"
	"strings"
	"testing"

	"github.com/loractl/loractl/internal/config"
	"github.com/loractl/loractl/internal/lora"
	"github.com/loractl/loractl/internal/optim"
)

// variants are the LoRA variants of issue #7 that train today, as config edits of tinyConfig.
var variants = []struct {
	name string
	set  func(c *config.Train)
}{
	{"lora+", func(c *config.Train) { c.LoRA.LoRAPlusRatio, c.Train.LR = 16, 1e-3 }}, // B at 1.6e-2
	{"freeze_a orthogonal", func(c *config.Train) { c.LoRA.FreezeA, c.LoRA.InitA = true, "orthogonal" }},
	{"rank_schedule linear", func(c *config.Train) { c.LoRA.RankSchedule, c.LoRA.RMin, c.LoRA.RMax = "linear", 1, 6 }},
	{"rank_pattern", func(c *config.Train) {
		c.LoRA.RankPattern = map[string]int{"down_proj": 2, "layers.4.self_attn.q_proj": 8}
	}},
	{"dylora", func(c *config.Train) { c.LoRA.Method, c.LoRA.RMin, c.LoRA.RMax = "dylora", 1, 6 }},
	{"dora", func(c *config.Train) { c.LoRA.Method = "dora" }},
	{"vera", func(c *config.Train) { c.LoRA.Method, c.LoRA.R, c.Train.LR = "vera", 16, 5e-2 }},
	{"tied", func(c *config.Train) { c.LoRA.Method = "tied" }},
	{"nola", func(c *config.Train) { c.LoRA.Method, c.LoRA.NolaK, c.Train.LR = "nola", 16, 5e-3 }},
	{"sora", func(c *config.Train) { c.LoRA.Method, c.LoRA.SoraLambda = "sora", 10 }},
	{"adalora", func(c *config.Train) {
		c.LoRA.Method, c.LoRA.TargetR, c.LoRA.TInit, c.LoRA.TFinal, c.LoRA.DeltaT, c.Train.LR = "adalora", 2, 2, 2, 1, 2e-2
	}},
}

// TestVariantsLearnAndReload: every variant lowers the eval loss, and its saved adapter loaded
// into a new run (--init-adapter) scores exactly the final eval loss (save → load → forward).
func TestVariantsLearnAndReload(t *testing.T) {
	for _, v := range variants {
		t.Run(v.name, func(t *testing.T) {
			out := filepath.Join(t.TempDir(), "run")
			c := tinyConfig(t, out, 8)
			v.set(c)
			if err := c.Validate(); err != nil {
				t.Fatal(err)
			}
			res, err := Run(context.Background(), c, Options{})
			if err != nil {
				t.Fatal(err)
			}
			if !(res.EvalLoss < res.EvalLossStart) {
				t.Errorf("eval loss %.4f -> %.4f: did not learn", res.EvalLossStart, res.EvalLoss)
			}
			a, err := lora.Load(out)
			if err != nil {
				t.Fatal(err)
			}
			c2 := tinyConfig(t, filepath.Join(t.TempDir(), "again"), 1)
			c2.Data.Train = c.Data.Train
			v.set(c2)
			c2.LoRA.TInit, c2.LoRA.TFinal = 0, 0 // AdaLoRA's schedule must fit the one step
			res2, err := Run(context.Background(), c2, Options{InitAdapter: out})
			if err != nil {
				t.Fatal(err)
			}
			if res2.EvalLossStart != res.EvalLoss {
				t.Errorf("the reloaded adapter scores %v, the run ended at %v", res2.EvalLossStart, res.EvalLoss)
			}
			if c.LoRA.Composed() {
				// The adapter file alone, read as a plain PEFT LoRA adapter, gives the same model.
				c3 := tinyConfig(t, filepath.Join(t.TempDir(), "plain"), 1)
				c3.Data.Train = c.Data.Train
				res3, err := Run(context.Background(), c3, Options{InitAdapter: out})
				if err != nil {
					t.Fatal(err)
				}
				if d := math.Abs(res3.EvalLossStart - res.EvalLoss); d > 1e-6*res.EvalLoss {
					t.Errorf("the saved PEFT adapter scores %v as plain LoRA, the run ended at %v", res3.EvalLossStart, res.EvalLoss)
				}
			}
			t.Logf("eval %.4f -> %.4f; %d pairs, ranks %d..%d", res.EvalLossStart, res.EvalLoss, len(a.Pairs), minRank(a), a.MaxRank())
			switch v.name {
			case "dylora":
				if a.Config.Method != "dylora" || a.Config.RMin != 1 || a.MaxRank() != 6 {
					t.Errorf("dylora adapter: method %q r_min %d r %d", a.Config.Method, a.Config.RMin, a.MaxRank())
				}
			case "rank_schedule linear":
				if minRank(a) != 1 || a.MaxRank() != 6 || a.RankOf(a.Pairs[0]) != 1 || a.RankOf(a.Pairs[len(a.Pairs)-1]) != 6 {
					t.Errorf("ranks %d..%d, first %d last %d", minRank(a), a.MaxRank(), a.RankOf(a.Pairs[0]), a.RankOf(a.Pairs[len(a.Pairs)-1]))
				}
			}
		})
	}
}

// minRank returns the smallest rank of any pair.
func minRank(a *lora.Adapter) int {
	r := a.MaxRank()
	for _, p := range a.Pairs {
		r = min(r, a.RankOf(p))
	}
	return r
}

// TestFreezeAKeepsA: with freeze_a the saved A equals the initial A bit for bit.
func TestFreezeAKeepsA(t *testing.T) {
	out := filepath.Join(t.TempDir(), "run")
	c := tinyConfig(t, out, 4)
	c.LoRA.FreezeA, c.LoRA.InitA = true, "orthogonal"
	j := &job{cfg: c, log: nil}
	j.log = discard{}
	if err := j.setup(); err != nil {
		t.Fatal(err)
	}
	var initA [][]float32
	for _, p := range j.eng.Adapter().Pairs {
		initA = append(initA, slices.Clone(p.A))
	}
	j.eng.Close()
	if _, err := Run(context.Background(), c, Options{}); err != nil {
		t.Fatal(err)
	}
	a, err := lora.Load(out)
	if err != nil {
		t.Fatal(err)
	}
	for i, p := range a.Pairs {
		if !slices.Equal(p.A, initA[i]) {
			t.Fatalf("%s: A changed under freeze_a", p.Module.Path)
		}
	}
}

type discard struct{}

func (discard) Write(p []byte) (int, error) { return len(p), nil }

// TestLoRAPlusGroups: LoRA+ puts the B matrices in a group at λ·lr.
func TestLoRAPlusGroups(t *testing.T) {
	c := config.DefaultTrain()
	ps := []optim.Param{{Name: "m.q_proj.lora_A.weight"}, {Name: "m.q_proj.lora_B.weight"}, {Name: "m.v_proj.lora_A.weight"}, {Name: "m.v_proj.lora_B.weight"}}
	if g := paramGroups(&c, ps); len(g) != 1 || g[0].LRScale != 1 || len(g[0].Params) != 4 {
		t.Fatalf("plain groups %+v", g)
	}
	c.LoRA.LoRAPlusRatio = 16
	g := paramGroups(&c, ps)
	if len(g) != 2 || g[0].LRScale != 1 || g[1].LRScale != 16 || len(g[0].Params) != 2 || len(g[1].Params) != 2 {
		t.Fatalf("lora+ groups %+v", g)
	}
	for _, p := range g[1].Params {
		if !strings.HasSuffix(p.Name, "lora_B.weight") {
			t.Fatalf("%s in the B group", p.Name)
		}
	}
}

// TestVariantResumeIsBitwiseExact: DyLoRA's sampled ranks and LoRA+'s groups resume exactly,
// and a checkpoint is refused by a run with another lora_plus_ratio.
func TestVariantResumeIsBitwiseExact(t *testing.T) {
	set := func(c *config.Train) {
		c.LoRA.Method, c.LoRA.RMin, c.LoRA.RMax, c.LoRA.LoRAPlusRatio = "dylora", 1, 4, 4
	}
	mk := func(out string) *config.Train {
		c := tinyConfig(t, out, 6)
		set(c)
		return c
	}
	straight := filepath.Join(t.TempDir(), "straight")
	cs := mk(straight)
	if _, err := Run(context.Background(), cs, Options{}); err != nil {
		t.Fatal(err)
	}
	split := filepath.Join(t.TempDir(), "split")
	ctx, cancel := context.WithCancel(context.Background())
	c1 := mk(split)
	c1.Data.Train = cs.Data.Train
	if _, err := Run(ctx, c1, Options{Reporter: &stopAt{step: 3, cancel: cancel}}); !errors.Is(err, ErrInterrupted) {
		t.Fatalf("interrupted run: %v", err)
	}
	ckpt := filepath.Join(split, "checkpoint-3")
	other := mk(split)
	other.Data.Train = cs.Data.Train
	other.LoRA.LoRAPlusRatio = 8
	if _, err := Run(context.Background(), other, Options{Resume: ckpt}); err == nil || !strings.Contains(err.Error(), "differs") {
		t.Fatalf("resume with another lora_plus_ratio: %v", err)
	}
	c2 := mk(split)
	c2.Data.Train = cs.Data.Train
	if _, err := Run(context.Background(), c2, Options{Resume: ckpt}); err != nil {
		t.Fatal(err)
	}
	a, _ := lora.Load(straight)
	b, err := lora.Load(split)
	if err != nil {
		t.Fatal(err)
	}
	for i := range a.Pairs {
		if !slices.Equal(a.Pairs[i].A, b.Pairs[i].A) || !slices.Equal(a.Pairs[i].B, b.Pairs[i].B) {
			t.Fatalf("%s differs between straight and resumed runs", a.Pairs[i].Module.Path)
		}
	}
	// The sampled ranks cover the range and repeat with the seed.
	seen := map[int]bool{}
	for s := 0; s < 200; s++ {
		b := dyloraRank(cs, s)
		if b < 1 || b > 4 || b != dyloraRank(cs, s) {
			t.Fatalf("step %d: rank %d", s, b)
		}
		seen[b] = true
	}
	if len(seen) != 4 {
		t.Fatalf("ranks drawn: %v", seen)
	}
}
