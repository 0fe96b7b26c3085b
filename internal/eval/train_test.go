package eval

import (
	"context"
	"path/filepath"
	"testing"

	"github.com/loractl/loractl/internal/backend/cpu"
	"github.com/loractl/loractl/internal/config"
	"github.com/loractl/loractl/internal/refdata"
	"github.com/loractl/loractl/internal/train"
)

// TestMatchesTrainingEval trains a few steps on stories260K with an eval file, then evaluates
// the base and the saved adapter on that file: the rows must equal training's eval loss before
// the first step and after the last one.
func TestMatchesTrainingEval(t *testing.T) {
	words := corpusWords(t)
	rng := newRNG(t)
	var trainRecs, evalRecs []map[string]string
	for range 40 {
		trainRecs = append(trainRecs, map[string]string{"prompt": snippet(rng, words, 6), "completion": " " + snippet(rng, words, 6)})
	}
	for range 9 {
		evalRecs = append(evalRecs, map[string]string{"prompt": snippet(rng, words, 6), "completion": " " + snippet(rng, words, 6)})
	}
	c := config.DefaultTrain()
	c.Model.Path = refdata.Stories260K(t)
	c.Data.Train = writeJSONL(t, trainRecs)
	c.Data.Eval = writeJSONL(t, evalRecs)
	c.Data.SeqLen = 48
	c.LoRA.R = 4
	c.LoRA.Targets = []string{"all-linear"}
	c.LoRA.Dropout = 0.1
	c.Train.Device = "cpu"
	c.Train.LR = 1e-2
	c.Train.Warmup = 1
	c.Train.MaxSteps = 4
	c.Train.BatchSize = 2
	c.Train.EvalEvery = 2
	c.Train.EvalBatches = 100 // every eval example
	c.Output.Dir = filepath.Join(t.TempDir(), "run")
	if err := c.Validate(); err != nil {
		t.Fatal(err)
	}
	res, err := train.Run(context.Background(), &c, train.Options{})
	if err != nil {
		t.Fatal(err)
	}
	// Other batch shapes than training's: the per-token losses do not depend on the layout, so the
	// only difference can be the float64 summation order (in practice the results are bitwise equal).
	rep, err := Run(c.Model.Path, []string{c.Output.Dir}, cpu.New(), Options{Data: c.Data.Eval, SeqLen: c.Data.SeqLen, BatchTokens: 3 * c.Data.SeqLen})
	if err != nil {
		t.Fatal(err)
	}
	base, tuned := rep.Rows[0].Loss, rep.Rows[1].Loss
	t.Logf("training eval loss %.9f → %.9f; eval base %.9f, adapter %.9f (differences %.3g, %.3g)", res.EvalLossStart, res.EvalLoss, base, tuned, base-res.EvalLossStart, tuned-res.EvalLoss)
	if d := relDiff(base, res.EvalLossStart); d > 1e-9 {
		t.Errorf("base row %.9f, training's eval loss at step 0 %.9f (rel %.2g)", base, res.EvalLossStart, d)
	}
	if d := relDiff(tuned, res.EvalLoss); d > 1e-9 {
		t.Errorf("adapter row %.9f, training's eval loss at step %d %.9f (rel %.2g)", tuned, res.Steps, res.EvalLoss, d)
	}
	if tuned == base {
		t.Errorf("training did not change the eval loss (%v)", base)
	}
}
