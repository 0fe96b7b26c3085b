package data

import (
	"encoding/json"
	"errors"
	"io"
	"math/rand/v2"
	"os"
	"path/filepath"
	"reflect"
	"strings"
	"testing"
)

// randomWord is a short random lowercase word.
func randomWord(rng *rand.Rand) string {
	b := make([]byte, 1+rng.IntN(6))
	for i := range b {
		b[i] = byte('a' + rng.IntN(26))
	}
	return string(b)
}

// TestReaderMatchesReadFile reads random text and prompt/completion files both ways: the
// Examples, order and counts must be the same, and records without a trained position are
// returned by the Reader but dropped by ReadFile.
func TestReaderMatchesReadFile(t *testing.T) {
	rng := rand.New(rand.NewPCG(rand.Uint64(), 3))
	for _, shape := range []string{"text", "pc"} {
		var lines []string
		for i := 0; i < 40; i++ {
			var rec map[string]string
			n := rng.IntN(12)
			var words []string
			for range n {
				words = append(words, randomWord(rng))
			}
			s := strings.Join(words, " ")
			if shape == "text" {
				rec = map[string]string{"text": s}
			} else {
				// Some prompts are long enough that truncation leaves no completion token.
				rec = map[string]string{"prompt": s + strings.Repeat("p", rng.IntN(30)), "completion": randomWord(rng)}
			}
			b, _ := json.Marshal(rec)
			lines = append(lines, string(b))
			if rng.IntN(5) == 0 {
				lines = append(lines, "") // blank lines are skipped by both
			}
		}
		p := filepath.Join(t.TempDir(), "d.jsonl")
		if err := os.WriteFile(p, []byte(strings.Join(lines, "\n")+"\n"), 0o644); err != nil {
			t.Fatal(err)
		}
		opt := Options{SeqLen: 16}
		want, wst, err := ReadFile(p, fakeTok{}, opt)
		if err != nil {
			t.Fatal(err)
		}
		r, err := OpenReader(p, fakeTok{}, opt)
		if err != nil {
			t.Fatal(err)
		}
		var got []Example
		noLoss, prevLine := 0, 0
		for {
			rec, err := r.Next()
			if errors.Is(err, io.EOF) {
				break
			}
			if err != nil {
				t.Fatal(err)
			}
			if rec.Line <= prevLine || lines[rec.Line-1] == "" {
				t.Fatalf("%s: record line %d after %d points at a blank or earlier line", shape, rec.Line, prevLine)
			}
			prevLine = rec.Line
			if rec.HasCompletion != (shape == "pc") {
				t.Fatalf("%s: HasCompletion %v", shape, rec.HasCompletion)
			}
			if rec.HasCompletion {
				var raw map[string]string
				_ = json.Unmarshal([]byte(lines[rec.Line-1]), &raw)
				if rec.Prompt != raw["prompt"] || rec.Completion != raw["completion"] {
					t.Fatalf("line %d: prompt/completion %q/%q, want %q/%q", rec.Line, rec.Prompt, rec.Completion, raw["prompt"], raw["completion"])
				}
			}
			if rec.Trained == 0 {
				noLoss++
				continue
			}
			got = append(got, rec.Example)
		}
		r.Close()
		st := r.Stats()
		if !reflect.DeepEqual(got, want) {
			t.Fatalf("%s: the Reader's examples differ from ReadFile's", shape)
		}
		if st.Format != wst.Format || st.Truncated != wst.Truncated || st.NoLoss != wst.NoLoss || st.NoLoss != noLoss ||
			st.Trained != wst.Trained || st.Lines != wst.Lines || st.Samples != wst.Samples+noLoss {
			t.Fatalf("%s: stats %+v, ReadFile %+v", shape, st, wst)
		}
		if fi, _ := os.Stat(p); r.Offset() != fi.Size() {
			t.Fatalf("%s: offset %d after the last line, file has %d bytes", shape, r.Offset(), fi.Size())
		}
	}
}

func TestReaderErrors(t *testing.T) {
	p := writeFile(t, `{"text": "a"}`+"\n"+`{"text": 3}`+"\n")
	r, err := OpenReader(p, fakeTok{}, Options{SeqLen: 8})
	if err != nil {
		t.Fatal(err)
	}
	defer r.Close()
	if _, err := r.Next(); err != nil {
		t.Fatal(err)
	}
	if _, err := r.Next(); err == nil || !strings.Contains(err.Error(), p+":2:") {
		t.Fatalf("bad line: %v", err)
	}
	if _, err := OpenReader(filepath.Join(t.TempDir(), "none.jsonl"), fakeTok{}, Options{SeqLen: 8}); err == nil {
		t.Fatal("a missing file opened")
	}
	if _, err := OpenReader(p, fakeTok{}, Options{SeqLen: 0}); err == nil {
		t.Fatal("seq_len 0 accepted")
	}
}
