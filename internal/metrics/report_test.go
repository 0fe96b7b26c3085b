package metrics

import (
	"bytes"
	"math"
	"strings"
	"testing"
	"time"
)

func TestStepEventETA(t *testing.T) {
	// Resumed at 100, 10 steps done in 20 s: 2 s/step, 90 left → 180 s.
	e := StepEvent{Step: 110, Total: 200, StartStep: 100, Elapsed: 20 * time.Second}
	if got := e.ETA(); got != 180*time.Second {
		t.Errorf("ETA = %v, want 3m0s", got)
	}
	if got := (StepEvent{Step: 200, Total: 200, Elapsed: time.Minute}).ETA(); got != 0 {
		t.Errorf("ETA at the last step = %v, want 0", got)
	}
	if got := (StepEvent{Step: 5, Total: 10, StartStep: 5}).ETA(); got != 0 {
		t.Errorf("ETA with no step done = %v, want 0", got)
	}
}

func runEvents(r Reporter) {
	for s := 1; s <= 10; s++ {
		r.OnStep(StepEvent{Step: s, Total: 10, Loss: 3 - 0.1*float64(s), LR: 2e-4, GradNorm: 0.5, TokensPerS: 1000, Elapsed: time.Duration(s) * time.Second})
		if s%5 == 0 {
			r.OnEval(EvalEvent{Step: s, Loss: 3.1 - 0.1*float64(s)})
			r.OnSave("out/checkpoint-" + string(rune('0'+s/5)))
		}
	}
	r.OnDone(Summary{Steps: 10, Loss: 2, HasEval: true, EvalLoss: 2.1, TokensPerS: 1000, Elapsed: 10 * time.Second, OutputDir: "out"})
}

func TestLogReporter(t *testing.T) {
	var buf bytes.Buffer
	runEvents(NewLog(&buf, 4))
	want := `step 1/10  loss 2.9000  lr 2.00e-04  grad_norm 0.500  1000 tok/s  eta 9s
step 4/10  loss 2.6000  lr 2.00e-04  grad_norm 0.500  1000 tok/s  eta 6s
step 5: eval_loss 2.6000
saved out/checkpoint-1
step 8/10  loss 2.2000  lr 2.00e-04  grad_norm 0.500  1000 tok/s  eta 2s
step 10/10  loss 2.0000  lr 2.00e-04  grad_norm 0.500  1000 tok/s  eta ?
step 10: eval_loss 2.1000
saved out/checkpoint-2
done: 10 steps in 10s, loss 2.0000, eval_loss 2.1000, 1000 tok/s → out
`
	if got := buf.String(); got != want {
		t.Errorf("log output:\n%s\nwant:\n%s", got, want)
	}
}

func TestLogReporterNaN(t *testing.T) {
	var buf bytes.Buffer
	NewLog(&buf, 1).OnStep(StepEvent{Step: 3, Total: 10, Loss: math.NaN()})
	if !strings.Contains(buf.String(), "loss NaN") {
		t.Errorf("NaN loss printed as %q", buf.String())
	}
}

func TestBarReporter(t *testing.T) {
	var buf bytes.Buffer
	runEvents(NewBar(&buf, 10, 0))
	out := buf.String()
	for _, want := range []string{"10/10", "loss 2.0000", "lr 2.00e-04", "1000 tok/s", "eta", "step 5: eval_loss 2.6000",
		"saved out/checkpoint-2", "done: 10 steps in 10s"} {
		if !strings.Contains(out, want) {
			t.Errorf("bar output lacks %q:\n%q", want, out)
		}
	}
}

func TestBarReporterResumed(t *testing.T) {
	var buf bytes.Buffer
	b := NewBar(&buf, 10, 6)
	b.OnStep(StepEvent{Step: 7, Total: 10, StartStep: 6, Loss: 1, LR: 1e-4, Elapsed: 2 * time.Second})
	b.OnDone(Summary{Steps: 7})
	out := buf.String()
	if !strings.Contains(out, "(6/10)") || strings.Contains(out, "(0/10)") || strings.Contains(out, "(10/10)") {
		t.Errorf("a bar resumed at 6 and stopped at 7 should start at 6/10 and not fill up:\n%q", out)
	}
	if !strings.Contains(out, "done: 7 steps") {
		t.Errorf("no summary line:\n%q", out)
	}
}

func TestRecorderAndQuiet(t *testing.T) {
	var rec Recorder
	runEvents(&rec)
	if len(rec.Steps) != 10 || len(rec.Evals) != 2 || len(rec.Saves) != 2 || len(rec.Done) != 1 {
		t.Fatalf("recorded %d steps, %d evals, %d saves, %d done", len(rec.Steps), len(rec.Evals), len(rec.Saves), len(rec.Done))
	}
	if rec.Steps[9].Step != 10 || rec.Evals[1].Loss != 3.1-1.0 || rec.Saves[0] != "out/checkpoint-1" {
		t.Errorf("recorded %+v %+v %v", rec.Steps[9], rec.Evals[1], rec.Saves)
	}
	var _ Reporter = Quiet{}
	runEvents(Quiet{})
	if IsTerminal(&bytes.Buffer{}) {
		t.Error("a bytes.Buffer is not a terminal")
	}
}
