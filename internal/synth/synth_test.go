package synth

import (
	"bufio"
	"encoding/json"
	"math"
	"os"
	"path/filepath"
	"slices"
	"strconv"
	"strings"
	"testing"
)

func TestTaskAnswers(t *testing.T) {
	cases := []struct {
		task, prompt, want string
		ok                 bool
	}{
		{"add", "12+7=", "19", true},
		{"add", "99+99=", "198", true},
		{"add", "0+0=", "0", true},
		{"add", "012+7=", "", false}, // leading zero
		{"add", "100+1=", "", false}, // 3 digits
		{"add", "12+7", "", false},   // no "="
		{"add", "12-7=", "", false},  // other task
		{"sub", "19-7=", "12", true},
		{"sub", "7-7=", "0", true},
		{"sub", "7-19=", "", false}, // negative answers are not part of the task
		{"copy", "copy abc=", "abc", true},
		{"copy", "copy abcdefg=", "", false}, // 7 letters
		{"copy", "copy =", "", false},
		{"rev", "rev abc=", "cba", true},
		{"rev", "rev aB=", "", false},
	}
	for _, c := range cases {
		task, err := Lookup(c.task)
		if err != nil {
			t.Fatal(err)
		}
		got, ok := task.Answer(c.prompt)
		if ok != c.ok || (ok && got != c.want) {
			t.Errorf("%s.Answer(%q) = %q, %v; want %q, %v", c.task, c.prompt, got, ok, c.want, c.ok)
		}
	}
}

func TestScore(t *testing.T) {
	cases := []struct {
		prompt, output string
		want           bool
	}{
		{"12+7=", "19", true},
		{"12+7=", " 19\n", true}, // surrounding white space is ignored
		{"12+7=", "19 ", true},
		{"12+7=", "190", false},
		{"12+7=", "1 9", false},
		{"12+7=", "", false},
		{"19-7=", "12", true},
		{"19-7=", "26", false},
		{"rev abc=", "cba", true},
		{"rev abc=", "abc", false},
		{"copy abc=", "abc", true},
		{"hello", "hello", false}, // not a task prompt
	}
	for _, c := range cases {
		if got := Score(c.prompt, c.output); got != c.want {
			t.Errorf("Score(%q, %q) = %v, want %v", c.prompt, c.output, got, c.want)
		}
	}
}

func TestLookupUnknown(t *testing.T) {
	_, err := Lookup("mul")
	if err == nil || !strings.Contains(err.Error(), "add, copy, rev, sub") {
		t.Fatalf("Lookup(mul) error = %v; want one listing the tasks", err)
	}
}

// TestGenerate checks every task's samples: answers are exact, splits are respected, and
// generation is deterministic in the seed.
func TestGenerate(t *testing.T) {
	for _, name := range TaskNames() {
		task, _ := Lookup(name)
		for _, split := range []Split{Train, Eval} {
			s := task.Generate(split, 300, 7)
			if len(s) != 300 {
				t.Fatalf("%s %s: %d samples, want 300", name, split, len(s))
			}
			distinct := map[string]bool{}
			for _, pc := range s {
				if !task.Score(pc.Prompt, pc.Completion) || !Score(pc.Prompt, pc.Completion) {
					t.Errorf("%s: sample %q -> %q does not score", name, pc.Prompt, pc.Completion)
				}
				if SplitOf(pc.Prompt) != split {
					t.Errorf("%s: %s sample %q belongs to %s", name, split, pc.Prompt, SplitOf(pc.Prompt))
				}
				if strings.ContainsFunc(pc.Prompt+pc.Completion, func(r rune) bool { return !strings.ContainsRune(Chars, r) }) {
					t.Errorf("%s: sample %q -> %q has a character outside the vocabulary", name, pc.Prompt, pc.Completion)
				}
				distinct[pc.Prompt] = true
			}
			if len(distinct) < 100 {
				t.Errorf("%s %s: only %d distinct prompts in 300", name, split, len(distinct))
			}
			if again := task.Generate(split, 300, 7); !slices.Equal(s, again) {
				t.Errorf("%s %s: same seed, different samples", name, split)
			}
			if prefix := task.Generate(split, 10, 7); !slices.Equal(prefix, s[:10]) {
				t.Errorf("%s %s: n=10 is not a prefix of n=300", name, split)
			}
			if other := task.Generate(split, 300, 8); slices.Equal(s, other) {
				t.Errorf("%s %s: seeds 7 and 8 give the same samples", name, split)
			}
		}
	}
	if got := Sub.Generate(Train, 0, 1); len(got) != 0 {
		t.Errorf("n=0 gave %d samples", len(got))
	}
}

// TestSplitShare checks that about a tenth of the sub prompts are held out for eval.
func TestSplitShare(t *testing.T) {
	eval, all := 0, 0
	for a := 0; a <= 99; a++ {
		for b := 0; b <= a; b++ {
			all++
			p := strconv.Itoa(a) + "-" + strconv.Itoa(b) + "="
			if SplitOf(p) == Eval {
				eval++
			}
		}
	}
	if share := float64(eval) / float64(all); share < 0.07 || share > 0.13 {
		t.Errorf("eval share of sub prompts = %.3f (%d of %d), want about 0.1", share, eval, all)
	}
}

func TestPretrain(t *testing.T) {
	lines := Pretrain(Train, 2000, 1)
	if len(lines) != 2000 {
		t.Fatalf("%d lines, want 2000", len(lines))
	}
	counts := map[string]int{}
	for _, l := range lines {
		i := strings.IndexByte(l, '=')
		if i < 0 || !Score(l[:i+1], l[i+1:]) {
			t.Fatalf("line %q is not a correct task sample", l)
		}
		if SplitOf(l[:i+1]) != Train {
			t.Errorf("train line %q has an eval prompt", l)
		}
		switch {
		case strings.Contains(l, "+"):
			counts["add"]++
		case strings.HasPrefix(l, "copy "):
			counts["copy"]++
		default:
			t.Errorf("line %q is neither add nor copy", l)
		}
	}
	if share := float64(counts["add"]) / 2000; share < 0.7 || share > 0.8 {
		t.Errorf("add share %.3f, want about 0.75", share)
	}
	if !slices.Equal(lines, Pretrain(Train, 2000, 1)) || slices.Equal(lines, Pretrain(Train, 2000, 2)) {
		t.Error("Pretrain is not deterministic in the seed")
	}
	for _, l := range Pretrain(Eval, 200, 1) {
		if SplitOf(l[:strings.IndexByte(l, '=')+1]) != Eval {
			t.Errorf("eval line %q has a train prompt", l)
		}
	}
	if !slices.Equal(PretrainTaskNames(), []string{"add", "copy"}) {
		t.Errorf("PretrainTaskNames = %v", PretrainTaskNames())
	}
}

func TestFinetuneIsUnseen(t *testing.T) {
	pre := map[string]bool{}
	for _, l := range Pretrain(Train, 5000, 1) {
		pre[l[:strings.IndexByte(l, '=')+1]] = true
	}
	for _, pc := range Finetune(Train, 500, 1) {
		if pre[pc.Prompt] {
			t.Fatalf("fine-tuning prompt %q occurs in pretraining", pc.Prompt)
		}
		if _, ok := Sub.Answer(pc.Prompt); !ok {
			t.Fatalf("fine-tuning prompt %q is not a sub prompt", pc.Prompt)
		}
	}
}

func TestWriteJSONL(t *testing.T) {
	dir := t.TempDir()
	path := filepath.Join(dir, "sub.jsonl")
	recs := []PromptCompletion{{"19-7=", "12"}, {"5-5=", "0"}}
	if err := WriteJSONL(path, recs); err != nil {
		t.Fatal(err)
	}
	data, err := os.ReadFile(path)
	if err != nil {
		t.Fatal(err)
	}
	want := `{"prompt":"19-7=","completion":"12"}` + "\n" + `{"prompt":"5-5=","completion":"0"}` + "\n"
	if string(data) != want {
		t.Errorf("file:\n%s\nwant:\n%s", data, want)
	}
	textPath := filepath.Join(dir, "pre.jsonl")
	if err := WriteJSONL(textPath, Texts([]string{"1+1=2", "copy a<b=a<b"})); err != nil {
		t.Fatal(err)
	}
	f, err := os.Open(textPath)
	if err != nil {
		t.Fatal(err)
	}
	defer f.Close()
	var got []string
	sc := bufio.NewScanner(f)
	for sc.Scan() {
		var r map[string]string
		if err := json.Unmarshal(sc.Bytes(), &r); err != nil {
			t.Fatal(err)
		}
		got = append(got, r["text"])
	}
	if !slices.Equal(got, []string{"1+1=2", "copy a<b=a<b"}) {
		t.Errorf("read back %q", got)
	}
	if ents, _ := os.ReadDir(dir); len(ents) != 2 {
		t.Errorf("folder holds %d entries, want the 2 files (no temporary files left)", len(ents))
	}
	if err := WriteJSONL(filepath.Join(dir, "missing", "x.jsonl"), recs); err == nil {
		t.Error("writing into a missing folder did not fail")
	}
}

func TestRand(t *testing.T) {
	r := NewRand(3)
	var sum, sum2 float64
	const n = 20000
	seen := make([]int, 7)
	for i := 0; i < n; i++ {
		x := r.NormFloat64()
		sum += x
		sum2 += x * x
		seen[r.IntN(7)]++
	}
	mean, std := sum/n, math.Sqrt(sum2/n-(sum/n)*(sum/n))
	if math.Abs(mean) > 0.03 || math.Abs(std-1) > 0.03 {
		t.Errorf("normal samples: mean %.4f std %.4f", mean, std)
	}
	for k, c := range seen {
		if c < n/7*9/10 || c > n/7*11/10 {
			t.Errorf("IntN(7) gave %d %d times of %d", k, c, n)
		}
	}
	r3a, r3b := NewRand(3), NewRand(3)
	if r3a.Uint64() != r3b.Uint64() || NewRand(3).Uint64() == NewRand(4).Uint64() {
		t.Error("Rand is not deterministic in its seed")
	}
	// Pinned values: the generated data must not change between releases.
	if got := NewRand(0).Uint64(); got != 0xe220a8397b1dcdaf {
		t.Errorf("splitmix64(0) first value %#x", got)
	}
}

// TestPinnedSamples pins the first samples of the default streams: the committed data and
// model recipe depend on them, so a change to the generators must be deliberate.
func TestPinnedSamples(t *testing.T) {
	if got, want := Pretrain(Train, 3, 1), []string{"51+3=54", "35+42=77", "76+4=80"}; !slices.Equal(got, want) {
		t.Errorf("Pretrain(Train, 3, 1) = %q, want %q", got, want)
	}
	want := []PromptCompletion{{"79-70=", "9"}, {"66-53=", "13"}, {"84-75=", "9"}}
	if got := Finetune(Train, 3, 1); !slices.Equal(got, want) {
		t.Errorf("Finetune(Train, 3, 1) = %q, want %q", got, want)
	}
}
