package metrics

import (
	"fmt"
	"io"
	"math"
	"os"
	"sync"
	"time"

	"github.com/schollz/progressbar/v3"
	"golang.org/x/term"
)

// StepEvent is sent after every optimizer step.
type StepEvent struct {
	Step       int           // optimizer steps done, counting this one (1 after the first)
	Total      int           // steps of the whole run
	StartStep  int           // the step this process started from: 0, or the resumed checkpoint's
	Loss       float64       // mean train loss over the step's tokens
	LR         float64       // learning rate used for this step
	GradNorm   float64       // global gradient norm before clipping
	TokensPerS float64       // train tokens per second over this step
	Elapsed    time.Duration // wall time since this process started training
}

// ETA estimates the time left from the average time per step this process has taken so far;
// it is 0 when no step is done yet or the run is complete.
func (e StepEvent) ETA() time.Duration {
	done := e.Step - e.StartStep
	if done <= 0 || e.Step >= e.Total {
		return 0
	}
	return time.Duration(float64(e.Elapsed) / float64(done) * float64(e.Total-e.Step))
}

// EvalEvent is sent after an evaluation on the validation split.
type EvalEvent struct {
	Step int     // optimizer steps done when the evaluation ran
	Loss float64 // mean eval loss per token
}

// Summary is sent once when training ends.
type Summary struct {
	Steps      int           // optimizer steps done in total
	Loss       float64       // the last train loss
	HasEval    bool          // whether EvalLoss is set
	EvalLoss   float64       // the last eval loss
	TokensPerS float64       // average train tokens per second of this process
	Elapsed    time.Duration // wall time of this process's training
	OutputDir  string        // where the adapter was written
}

// Reporter receives training progress events. The trainer calls it from one goroutine.
type Reporter interface {
	OnStep(StepEvent)
	OnEval(EvalEvent)
	OnSave(path string) // a checkpoint or the final adapter was written at path
	OnDone(Summary)
}

// IsTerminal reports whether w is a terminal, where a progress bar can redraw itself.
func IsTerminal(w io.Writer) bool {
	f, ok := w.(*os.File)
	return ok && term.IsTerminal(int(f.Fd()))
}

// formatETA shows a duration rounded to the second, "?" when unknown.
func formatETA(d time.Duration) string {
	if d <= 0 {
		return "?"
	}
	return d.Round(time.Second).String()
}

// formatLoss shows a loss with 4 decimals (NaN and Inf as such).
func formatLoss(v float64) string {
	if math.IsNaN(v) || math.IsInf(v, 0) {
		return fmt.Sprint(v)
	}
	return fmt.Sprintf("%.4f", v)
}

// summaryLine is the last line both terminal reporters print.
func summaryLine(s Summary) string {
	line := fmt.Sprintf("done: %d steps in %s, loss %s", s.Steps, s.Elapsed.Round(time.Second), formatLoss(s.Loss))
	if s.HasEval {
		line += ", eval_loss " + formatLoss(s.EvalLoss)
	}
	line += fmt.Sprintf(", %.0f tok/s", s.TokensPerS)
	if s.OutputDir != "" {
		line += " → " + s.OutputDir
	}
	return line
}

// Bar is a terminal Reporter: a progressbar/v3 bar showing step/total, loss, lr, tokens/s and
// the ETA, with eval results and saves printed as lines above it.
type Bar struct {
	w   io.Writer
	bar *progressbar.ProgressBar
}

// NewBar returns a progress bar for a run of total steps that starts at step start (0, or the
// resumed step), drawn on w (a terminal).
func NewBar(w io.Writer, total, start int) *Bar {
	bar := progressbar.NewOptions(max(total, 1),
		progressbar.OptionSetWriter(w),
		progressbar.OptionSetDescription("train"),
		progressbar.OptionShowCount(),
		progressbar.OptionSetWidth(30),
		progressbar.OptionShowDescriptionAtLineEnd(),
		progressbar.OptionSetPredictTime(false), // our ETA ignores the resumed steps
		progressbar.OptionThrottle(100*time.Millisecond),
		progressbar.OptionSetRenderBlankState(false),
	)
	if start > 0 {
		bar.Set(min(start, total))
	}
	return &Bar{w: w, bar: bar}
}

// OnStep moves the bar and updates its description.
func (b *Bar) OnStep(e StepEvent) {
	b.bar.Describe(fmt.Sprintf("loss %s  lr %.2e  %.0f tok/s  eta %s", formatLoss(e.Loss), e.LR, e.TokensPerS, formatETA(e.ETA())))
	b.bar.Set(min(e.Step, b.bar.GetMax()))
}

// OnEval prints the eval loss above the bar.
func (b *Bar) OnEval(e EvalEvent) {
	progressbar.Bprintln(b.bar, fmt.Sprintf("step %d: eval_loss %s", e.Step, formatLoss(e.Loss)))
}

// OnSave prints the saved path above the bar.
func (b *Bar) OnSave(path string) {
	progressbar.Bprintln(b.bar, "saved "+path)
}

// OnDone completes the bar (or leaves it where it stopped, for a run that stopped early) and
// prints the summary.
func (b *Bar) OnDone(s Summary) {
	if s.Steps >= b.bar.GetMax() {
		b.bar.Finish()
	} else {
		b.bar.Exit()
	}
	fmt.Fprintln(b.w)
	fmt.Fprintln(b.w, summaryLine(s))
}

// Log is a Reporter for non-terminal output (CI logs, files): one plain line every Every
// steps, plus the first and the last step, every eval and every save.
type Log struct {
	w     io.Writer
	every int
}

// NewLog returns a plain-log reporter writing to w every every steps (1 if every < 1).
func NewLog(w io.Writer, every int) *Log {
	return &Log{w: w, every: max(every, 1)}
}

// OnStep prints
//
//	step 10/200  loss 2.3456  lr 2.00e-04  grad_norm 0.840  5120 tok/s  eta 1m20s
//
// when the step is a multiple of Every, the first of this process, or the last.
func (l *Log) OnStep(e StepEvent) {
	if e.Step%l.every != 0 && e.Step != e.StartStep+1 && e.Step != e.Total {
		return
	}
	fmt.Fprintf(l.w, "step %d/%d  loss %s  lr %.2e  grad_norm %.3f  %.0f tok/s  eta %s\n",
		e.Step, e.Total, formatLoss(e.Loss), e.LR, e.GradNorm, e.TokensPerS, formatETA(e.ETA()))
}

// OnEval prints "step N: eval_loss X".
func (l *Log) OnEval(e EvalEvent) {
	fmt.Fprintf(l.w, "step %d: eval_loss %s\n", e.Step, formatLoss(e.Loss))
}

// OnSave prints "saved PATH".
func (l *Log) OnSave(path string) { fmt.Fprintf(l.w, "saved %s\n", path) }

// OnDone prints the summary line.
func (l *Log) OnDone(s Summary) { fmt.Fprintln(l.w, summaryLine(s)) }

// Quiet is a Reporter that prints nothing (--quiet).
type Quiet struct{}

// OnStep does nothing.
func (Quiet) OnStep(StepEvent) {}

// OnEval does nothing.
func (Quiet) OnEval(EvalEvent) {}

// OnSave does nothing.
func (Quiet) OnSave(string) {}

// OnDone does nothing.
func (Quiet) OnDone(Summary) {}

// Recorder is a Reporter that keeps every event, for tests. It is safe for concurrent use.
type Recorder struct {
	mu    sync.Mutex
	Steps []StepEvent
	Evals []EvalEvent
	Saves []string
	Done  []Summary
}

// OnStep records e.
func (r *Recorder) OnStep(e StepEvent) { r.mu.Lock(); r.Steps = append(r.Steps, e); r.mu.Unlock() }

// OnEval records e.
func (r *Recorder) OnEval(e EvalEvent) { r.mu.Lock(); r.Evals = append(r.Evals, e); r.mu.Unlock() }

// OnSave records path.
func (r *Recorder) OnSave(path string) { r.mu.Lock(); r.Saves = append(r.Saves, path); r.mu.Unlock() }

// OnDone records s.
func (r *Recorder) OnDone(s Summary) { r.mu.Lock(); r.Done = append(r.Done, s); r.mu.Unlock() }
