package metrics

import (
	"math"
	"os"
	"path/filepath"
	"strings"
	"testing"
)

func sameFloat(a, b float64) bool {
	return a == b || (math.IsNaN(a) && math.IsNaN(b))
}

func sameRecord(a, b Record) bool {
	return a.Step == b.Step && sameFloat(a.Loss, b.Loss) && sameFloat(a.LR, b.LR) &&
		sameFloat(a.GradNorm, b.GradNorm) && sameFloat(a.TokensPerS, b.TokensPerS) &&
		a.HasEval == b.HasEval && sameFloat(a.EvalLoss, b.EvalLoss)
}

func TestWriteReadRoundTrip(t *testing.T) {
	path := filepath.Join(t.TempDir(), "metrics.jsonl")
	a, b := 0.1, 0.2 // variables, so a+b is computed in float64: 0.30000000000000004
	recs := []Record{
		{Step: 1, Loss: 5.5451774, LR: 2e-5, GradNorm: 3.25, TokensPerS: 1234.5},
		{Step: 2, Loss: 4.0, LR: 4e-5, GradNorm: a + b, TokensPerS: 1300, HasEval: true, EvalLoss: 4.25},
		{Step: 3, Loss: math.NaN(), LR: 6e-5, GradNorm: math.Inf(1), TokensPerS: 0},
		{Step: 4, Loss: 3, LR: 1e-300, HasEval: true, EvalLoss: math.NaN()},
	}
	w, err := Create(path)
	if err != nil {
		t.Fatal(err)
	}
	for i, r := range recs {
		if err := w.Write(r); err != nil {
			t.Fatal(err)
		}
		// Flushed after every write: the file already holds i+1 lines.
		got, err := ReadFile(path)
		if err != nil {
			t.Fatal(err)
		}
		if len(got) != i+1 {
			t.Fatalf("after %d writes the file holds %d records", i+1, len(got))
		}
	}
	if err := w.Close(); err != nil {
		t.Fatal(err)
	}
	got, err := ReadFile(path)
	if err != nil {
		t.Fatal(err)
	}
	recs[2].GradNorm = math.NaN() // +Inf is written as null, read back as NaN
	for i := range recs {
		if !sameRecord(got[i], recs[i]) {
			t.Errorf("record %d: read %+v, wrote %+v", i, got[i], recs[i])
		}
	}

	data, _ := os.ReadFile(path)
	lines := strings.Split(strings.TrimSuffix(string(data), "\n"), "\n")
	want := []string{
		`{"step":1,"loss":5.5451774,"lr":2e-05,"grad_norm":3.25,"tokens_per_s":1234.5}`,
		`{"step":2,"loss":4,"lr":4e-05,"grad_norm":0.30000000000000004,"tokens_per_s":1300,"eval_loss":4.25}`,
		`{"step":3,"loss":null,"lr":6e-05,"grad_norm":null,"tokens_per_s":0}`,
		`{"step":4,"loss":3,"lr":1e-300,"grad_norm":0,"tokens_per_s":0,"eval_loss":null}`,
	}
	if len(lines) != len(want) {
		t.Fatalf("file has %d lines, want %d:\n%s", len(lines), len(want), data)
	}
	for i := range want {
		if lines[i] != want[i] {
			t.Errorf("line %d = %s\nwant     %s", i+1, lines[i], want[i])
		}
	}
}

func TestReopenKeepsStepsUpToCheckpoint(t *testing.T) {
	path := filepath.Join(t.TempDir(), "metrics.jsonl")
	w, err := Create(path)
	if err != nil {
		t.Fatal(err)
	}
	for s := 1; s <= 7; s++ {
		w.Write(Record{Step: s, Loss: float64(10 - s)})
	}
	w.Close()

	w, err = Reopen(path, 4)
	if err != nil {
		t.Fatal(err)
	}
	w.Write(Record{Step: 5, Loss: 0.5})
	w.Close()
	got, err := ReadFile(path)
	if err != nil {
		t.Fatal(err)
	}
	var steps []int
	for _, r := range got {
		steps = append(steps, r.Step)
	}
	if len(got) != 5 || got[4].Loss != 0.5 || got[3].Loss != 6 {
		t.Fatalf("after Reopen(4) and one write: steps %v, records %+v", steps, got)
	}

	// A missing file starts empty.
	fresh := filepath.Join(t.TempDir(), "new.jsonl")
	w, err = Reopen(fresh, 10)
	if err != nil {
		t.Fatal(err)
	}
	w.Close()
	if got, err := ReadFile(fresh); err != nil || len(got) != 0 {
		t.Fatalf("Reopen of a missing file: %v, %d records", err, len(got))
	}
}

func TestReadErrorsNameFileAndLine(t *testing.T) {
	dir := t.TempDir()
	for _, tc := range []struct{ content, want string }{
		{"{\"step\":1,\"loss\":2}\nnot json\n", "bad.jsonl:2: not a metrics record"},
		{"{\"step\":1,\"loss\":2}\n\n{\"loss\":2}\n", `bad.jsonl:3: not a metrics record: missing "step"`},
		{"{\"step\":1}\n", `bad.jsonl:1: not a metrics record: missing "loss"`},
		{"{\"step\":1,\"loss\":\"x\"}\n", "bad.jsonl:1:"},
	} {
		path := filepath.Join(dir, "bad.jsonl")
		os.WriteFile(path, []byte(tc.content), 0o644)
		_, err := ReadFile(path)
		if err == nil || !strings.Contains(err.Error(), tc.want) {
			t.Errorf("ReadFile(%q) error = %v, want one containing %q", tc.content, err, tc.want)
		}
	}
	if _, err := ReadFile(filepath.Join(dir, "missing.jsonl")); err == nil || !strings.Contains(err.Error(), "missing.jsonl") {
		t.Errorf("missing file error = %v, want one naming the file", err)
	}
}

func TestCreateBadPath(t *testing.T) {
	path := filepath.Join(t.TempDir(), "no", "such", "dir", "metrics.jsonl")
	_, err := Create(path)
	if err == nil || !strings.Contains(err.Error(), path) {
		t.Fatalf("Create(%s) error = %v, want one naming the path", path, err)
	}
}
