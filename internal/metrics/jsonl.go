// Package metrics records and shows training progress: the metrics.jsonl log (one JSON object
// per optimizer step), the loss.png chart of train and eval loss, and the Reporter
// implementations that print progress to the terminal (a progress bar, a plain log for
// non-TTY output, a recorder for tests).
package metrics

import (
	"bufio"
	"bytes"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"math"
	"os"
	"strconv"

	"github.com/loractl/loractl/internal/atomicfile"
)

// Record is one line of metrics.jsonl:
//
//	{"step":10,"loss":2.31,"lr":0.0002,"grad_norm":0.84,"tokens_per_s":5120,"eval_loss":2.4}
//
// eval_loss is present only on steps where an evaluation ran. A value that is NaN or infinite
// (a diverged loss) is written as null and read back as NaN.
type Record struct {
	Step       int     `json:"step"`
	Loss       float64 `json:"loss"`
	LR         float64 `json:"lr"`
	GradNorm   float64 `json:"grad_norm"`
	TokensPerS float64 `json:"tokens_per_s"`
	HasEval    bool    `json:"-"` // whether EvalLoss is set
	EvalLoss   float64 `json:"eval_loss"`
}

// appendFloat appends v as a JSON number, or null when it is not finite.
func appendFloat(b []byte, v float64) []byte {
	if math.IsNaN(v) || math.IsInf(v, 0) {
		return append(b, "null"...)
	}
	return strconv.AppendFloat(b, v, 'g', -1, 64)
}

// MarshalJSON writes the record as one JSON object in the documented field order.
func (r Record) MarshalJSON() ([]byte, error) {
	b := make([]byte, 0, 128)
	b = append(b, `{"step":`...)
	b = strconv.AppendInt(b, int64(r.Step), 10)
	b = append(b, `,"loss":`...)
	b = appendFloat(b, r.Loss)
	b = append(b, `,"lr":`...)
	b = appendFloat(b, r.LR)
	b = append(b, `,"grad_norm":`...)
	b = appendFloat(b, r.GradNorm)
	b = append(b, `,"tokens_per_s":`...)
	b = appendFloat(b, r.TokensPerS)
	if r.HasEval {
		b = append(b, `,"eval_loss":`...)
		b = appendFloat(b, r.EvalLoss)
	}
	return append(b, '}'), nil
}

// UnmarshalJSON reads a record; step and loss are required, null numbers become NaN.
func (r *Record) UnmarshalJSON(data []byte) error {
	var raw struct {
		Step       *int     `json:"step"`
		Loss       *float64 `json:"loss"`
		LR         *float64 `json:"lr"`
		GradNorm   *float64 `json:"grad_norm"`
		TokensPerS *float64 `json:"tokens_per_s"`
	}
	// Detect "eval_loss" (possibly null) separately from its value.
	var fields map[string]json.RawMessage
	if err := json.Unmarshal(data, &fields); err != nil {
		return err
	}
	if err := json.Unmarshal(data, &raw); err != nil {
		return err
	}
	if raw.Step == nil {
		return errors.New(`missing "step"`)
	}
	if _, ok := fields["loss"]; !ok {
		return errors.New(`missing "loss"`)
	}
	orNaN := func(p *float64) float64 {
		if p == nil {
			return math.NaN()
		}
		return *p
	}
	*r = Record{Step: *raw.Step, Loss: orNaN(raw.Loss), LR: orNaN(raw.LR), GradNorm: orNaN(raw.GradNorm), TokensPerS: orNaN(raw.TokensPerS)}
	if ev, ok := fields["eval_loss"]; ok {
		var v *float64
		if err := json.Unmarshal(ev, &v); err != nil {
			return fmt.Errorf("eval_loss: %w", err)
		}
		r.HasEval, r.EvalLoss = true, orNaN(v)
	}
	return nil
}

// Writer appends records to a metrics.jsonl file. Each Write is one write(2) of one whole
// line, so the file is current after every step and a crash loses at most the line being
// written.
type Writer struct {
	path string
	f    *os.File
}

// Create creates (or truncates) the metrics file at path for a new run.
func Create(path string) (*Writer, error) {
	f, err := os.OpenFile(path, os.O_WRONLY|os.O_CREATE|os.O_TRUNC, 0o644)
	if err != nil {
		return nil, fmt.Errorf("metrics: create %s: %w", path, err)
	}
	return &Writer{path: path, f: f}, nil
}

// Reopen continues the metrics file at path for a run resumed after step lastStep: it keeps
// the records with Step ≤ lastStep (those after the checkpoint will be run again), rewrites
// the file with them atomically, and appends from there. A missing file starts empty.
func Reopen(path string, lastStep int) (*Writer, error) {
	recs, err := ReadFile(path)
	if err != nil && !errors.Is(err, os.ErrNotExist) {
		return nil, err
	}
	var buf bytes.Buffer
	for _, r := range recs {
		if r.Step <= lastStep {
			line, _ := r.MarshalJSON()
			buf.Write(line)
			buf.WriteByte('\n')
		}
	}
	if err := atomicfile.Write(path, buf.Bytes()); err != nil {
		return nil, fmt.Errorf("metrics: %w", err)
	}
	f, err := os.OpenFile(path, os.O_WRONLY|os.O_APPEND, 0o644)
	if err != nil {
		return nil, fmt.Errorf("metrics: open %s: %w", path, err)
	}
	return &Writer{path: path, f: f}, nil
}

// Write appends r as one line.
func (w *Writer) Write(r Record) error {
	line, _ := r.MarshalJSON()
	line = append(line, '\n')
	if _, err := w.f.Write(line); err != nil {
		return fmt.Errorf("metrics: write %s: %w", w.path, err)
	}
	return nil
}

// Path returns the file the writer appends to.
func (w *Writer) Path() string { return w.path }

// Close closes the file.
func (w *Writer) Close() error {
	if err := w.f.Close(); err != nil {
		return fmt.Errorf("metrics: close %s: %w", w.path, err)
	}
	return nil
}

// ReadFile reads a metrics.jsonl file. A line that is not a record is an error naming
// file:line. Blank lines are skipped.
func ReadFile(path string) ([]Record, error) {
	f, err := os.Open(path)
	if err != nil {
		return nil, fmt.Errorf("metrics: %w", err)
	}
	defer f.Close()
	recs, err := Read(f, path)
	if err != nil {
		return nil, err
	}
	return recs, nil
}

// Read reads metrics.jsonl records from r; name is used in error messages.
func Read(r io.Reader, name string) ([]Record, error) {
	var recs []Record
	sc := bufio.NewScanner(r)
	sc.Buffer(make([]byte, 0, 64*1024), 1<<20)
	for n := 1; sc.Scan(); n++ {
		line := bytes.TrimSpace(sc.Bytes())
		if len(line) == 0 {
			continue
		}
		var rec Record
		if err := json.Unmarshal(line, &rec); err != nil {
			return nil, fmt.Errorf("%s:%d: not a metrics record: %v", name, n, err)
		}
		recs = append(recs, rec)
	}
	if err := sc.Err(); err != nil {
		return nil, fmt.Errorf("metrics: read %s: %w", name, err)
	}
	return recs, nil
}
