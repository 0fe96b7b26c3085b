// Package synth generates loractl's own training data: small synthetic tasks over a
// character vocabulary whose answers can be checked exactly, and the character-level
// tokenizer that goes with them. Together with scripts/tinymodel they give the repository
// a base model and data sets that contain no third-party weights or texts.
//
// Tasks (each sample is a prompt and its answer):
//
//	add   "12+7="    → "19"    a + b, with a, b in [0, 99]
//	sub   "19-7="    → "12"    a - b, with 0 ≤ b ≤ a ≤ 99
//	copy  "copy abc=" → "abc"  1 to 6 letters a-z, repeated
//	rev   "rev abc="  → "cba"  1 to 6 letters a-z, reversed
//
// The pretraining corpus (Pretrain) mixes add (3 in 4 lines) and copy as plain text lines
// ("12+7=19"); the fine-tuning data (Finetune) is a task the base model has not seen, sub by
// default, as prompt/completion pairs with the loss on the completion.
//
// Every sample belongs to the train or the eval split by a hash of its prompt, so an eval
// prompt never occurs in any train file, whatever the seeds and sizes. Generation is
// deterministic: the same task, split, size and seed give the same samples on every
// platform and Go release.
package synth

import (
	"fmt"
	"hash/fnv"
	"regexp"
	"sort"
	"strconv"
	"strings"
)

// Split selects the train or the eval part of a task's sample space.
type Split int

const (
	Train Split = iota // about 90% of the prompts
	Eval               // the other 10%, never in Train
)

// String returns "train" or "eval".
func (s Split) String() string {
	if s == Eval {
		return "eval"
	}
	return "train"
}

// evalBuckets: a prompt is in Eval when the FNV-1a hash of it is 0 modulo evalBuckets.
const evalBuckets = 10

// SplitOf returns the split a prompt belongs to.
func SplitOf(prompt string) Split {
	h := fnv.New64a()
	h.Write([]byte(prompt))
	if h.Sum64()%evalBuckets == 0 {
		return Eval
	}
	return Train
}

// PromptCompletion is one fine-tuning record, in the trainer's prompt/completion format
// (loss on the completion only).
type PromptCompletion struct {
	Prompt     string `json:"prompt"`
	Completion string `json:"completion"`
}

// Text is one pretraining record, in the trainer's text format (loss on every token).
type Text struct {
	Text string `json:"text"`
}

// Texts wraps lines as Text records.
func Texts(lines []string) []Text {
	out := make([]Text, len(lines))
	for i, l := range lines {
		out[i] = Text{Text: l}
	}
	return out
}

// Task is one synthetic task: a generator of prompts with their answers, and a solver that
// computes the exact answer of any prompt the task generates.
type Task struct {
	Name string // "add", "sub", "copy", "rev"
	Doc  string // one line: the format, with an example

	gen   func(r *Rand) (prompt, answer string)
	solve func(prompt string) (answer string, ok bool)
}

// Sample draws one prompt and its answer.
func (t *Task) Sample(r *Rand) PromptCompletion {
	p, a := t.gen(r)
	return PromptCompletion{Prompt: p, Completion: a}
}

// Answer returns the exact answer of prompt, and false when prompt is not of this task's
// form (e.g. "12+7=" for add; not "012+7=" or "12+7").
func (t *Task) Answer(prompt string) (string, bool) { return t.solve(prompt) }

// Score reports whether output answers prompt exactly. Leading and trailing white space of
// output is ignored; anything else (an extra character, a missing one) is wrong. A prompt
// that is not of this task's form scores false.
func (t *Task) Score(prompt, output string) bool {
	want, ok := t.solve(prompt)
	return ok && strings.TrimSpace(output) == want
}

// Generate returns n samples of the task from split, drawn with replacement (small sample
// spaces repeat prompts when n is large). It is deterministic in (task, split, n, seed), and
// the first k samples of a larger n are the samples of n = k.
func (t *Task) Generate(split Split, n int, seed uint64) []PromptCompletion {
	r := NewRand(streamSeed(seed, t.Name, split))
	out := make([]PromptCompletion, 0, max(n, 0))
	for len(out) < n {
		if s := t.Sample(r); SplitOf(s.Prompt) == split {
			out = append(out, s)
		}
	}
	return out
}

// streamSeed derives the generator seed of one (seed, name, split) stream, so that tasks and
// splits drawn with the same user seed are independent.
func streamSeed(seed uint64, name string, split Split) uint64 {
	h := fnv.New64a()
	fmt.Fprintf(h, "%s/%s", name, split)
	return seed*0x9e3779b97f4a7c15 ^ h.Sum64()
}

var tasks = map[string]*Task{}

func register(t *Task) *Task {
	tasks[t.Name] = t
	return t
}

// Lookup returns the task called name, or an error that lists the known tasks.
func Lookup(name string) (*Task, error) {
	if t, ok := tasks[name]; ok {
		return t, nil
	}
	return nil, fmt.Errorf("unknown synthetic task %q (known: %s)", name, strings.Join(TaskNames(), ", "))
}

// TaskNames returns the names of all tasks, sorted.
func TaskNames() []string {
	names := make([]string, 0, len(tasks))
	for n := range tasks {
		names = append(names, n)
	}
	sort.Strings(names)
	return names
}

// maxOperand is the largest number in add and sub prompts; maxLetters the longest word in
// copy and rev prompts.
const (
	maxOperand = 99
	maxLetters = 6
)

var (
	// Add is a + b, both in [0, 99]: "12+7=" → "19".
	Add = register(&Task{Name: "add", Doc: `"12+7=" -> "19": a+b, a and b in 0..99`,
		gen: func(r *Rand) (string, string) {
			a, b := r.IntN(maxOperand+1), r.IntN(maxOperand+1)
			return fmt.Sprintf("%d+%d=", a, b), strconv.Itoa(a + b)
		},
		solve: func(p string) (string, bool) {
			a, b, ok := parseOperands(p, '+')
			return strconv.Itoa(a + b), ok
		}})
	// Sub is a - b with 0 ≤ b ≤ a ≤ 99: "19-7=" → "12".
	Sub = register(&Task{Name: "sub", Doc: `"19-7=" -> "12": a-b, 0 <= b <= a <= 99`,
		gen: func(r *Rand) (string, string) {
			a, b := r.IntN(maxOperand+1), r.IntN(maxOperand+1)
			if a < b {
				a, b = b, a
			}
			return fmt.Sprintf("%d-%d=", a, b), strconv.Itoa(a - b)
		},
		solve: func(p string) (string, bool) {
			a, b, ok := parseOperands(p, '-')
			return strconv.Itoa(a - b), ok && b <= a
		}})
	// Copy repeats a word of 1 to 6 letters: "copy abc=" → "abc".
	Copy = register(&Task{Name: "copy", Doc: `"copy abc=" -> "abc": 1 to 6 letters a-z, repeated`,
		gen: func(r *Rand) (string, string) {
			w := word(r)
			return "copy " + w + "=", w
		},
		solve: func(p string) (string, bool) { return parseWord(p, "copy ") }})
	// Rev reverses a word of 1 to 6 letters: "rev abc=" → "cba".
	Rev = register(&Task{Name: "rev", Doc: `"rev abc=" -> "cba": 1 to 6 letters a-z, reversed`,
		gen: func(r *Rand) (string, string) {
			w := word(r)
			return "rev " + w + "=", reverse(w)
		},
		solve: func(p string) (string, bool) {
			w, ok := parseWord(p, "rev ")
			return reverse(w), ok
		}})
)

// operandRE matches "a<op>b=" with canonical numbers of 1 or 2 digits (no leading zeros).
var operandRE = regexp.MustCompile(`^(0|[1-9][0-9]?)([+-])(0|[1-9][0-9]?)=$`)

// parseOperands parses "a<op>b=".
func parseOperands(p string, op byte) (a, b int, ok bool) {
	m := operandRE.FindStringSubmatch(p)
	if m == nil || m[2][0] != op {
		return 0, 0, false
	}
	a, _ = strconv.Atoi(m[1])
	b, _ = strconv.Atoi(m[3])
	return a, b, true
}

// parseWord parses prefix + word + "=" with a word of 1 to maxLetters letters a-z.
func parseWord(p, prefix string) (string, bool) {
	w, ok := strings.CutPrefix(p, prefix)
	if !ok {
		return "", false
	}
	if w, ok = strings.CutSuffix(w, "="); !ok || len(w) < 1 || len(w) > maxLetters {
		return "", false
	}
	for i := 0; i < len(w); i++ {
		if w[i] < 'a' || w[i] > 'z' {
			return "", false
		}
	}
	return w, true
}

// word draws 1 to maxLetters letters a-z.
func word(r *Rand) string {
	b := make([]byte, 1+r.IntN(maxLetters))
	for i := range b {
		b[i] = byte('a' + r.IntN(26))
	}
	return string(b)
}

// reverse reverses an ASCII string.
func reverse(s string) string {
	b := []byte(s)
	for i, j := 0, len(b)-1; i < j; i, j = i+1, j-1 {
		b[i], b[j] = b[j], b[i]
	}
	return string(b)
}

// pretrainMix lists the tasks of the pretraining corpus with their weights.
var pretrainMix = []struct {
	task   *Task
	weight int
}{{Add, 3}, {Copy, 1}}

// Pretrain returns n pretraining lines from split: add (3 in 4) and copy samples written as
// one text each ("12+7=19", "copy abc=abc"). Deterministic in (split, n, seed).
func Pretrain(split Split, n int, seed uint64) []string {
	r := NewRand(streamSeed(seed, "pretrain", split))
	total := 0
	for _, m := range pretrainMix {
		total += m.weight
	}
	out := make([]string, 0, max(n, 0))
	for len(out) < n {
		k, t := r.IntN(total), pretrainMix[0].task
		for _, m := range pretrainMix {
			if k < m.weight {
				t = m.task
				break
			}
			k -= m.weight
		}
		if s := t.Sample(r); SplitOf(s.Prompt) == split {
			out = append(out, s.Prompt+s.Completion)
		}
	}
	return out
}

// PretrainTaskNames returns the names of the tasks mixed into Pretrain.
func PretrainTaskNames() []string {
	var names []string
	for _, m := range pretrainMix {
		names = append(names, m.task.Name)
	}
	return names
}

// DefaultFinetuneTask is the fine-tuning task of the quickstart: one the base model has not
// seen in pretraining.
const DefaultFinetuneTask = "sub"

// Finetune returns n prompt/completion samples of the default fine-tuning task (sub) from
// split. Deterministic in (split, n, seed).
func Finetune(split Split, n int, seed uint64) []PromptCompletion {
	return Sub.Generate(split, n, seed)
}

// Score reports whether output is the exact answer to prompt, for a prompt of any task
// (leading and trailing white space of output ignored). An unrecognised prompt scores false.
func Score(prompt, output string) bool {
	for _, name := range TaskNames() {
		if t := tasks[name]; t.Score(prompt, output) {
			return true
		}
	}
	return false
}
