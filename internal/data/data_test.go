package data

import (
	"os"
	"path/filepath"
	"reflect"
	"slices"
	"strings"
	"testing"

	"github.com/loractl/loractl/internal/chat"
	"github.com/loractl/loractl/internal/refdata"
	"github.com/loractl/loractl/internal/tokenizer"
)

// fakeTok encodes each byte as its value + 10, with BOS 1 and EOS 2.
type fakeTok struct{}

func (fakeTok) Encode(s string, addSpecial bool) []int {
	var ids []int
	if addSpecial {
		ids = append(ids, 1)
	}
	for _, c := range []byte(s) {
		ids = append(ids, int(c)+10)
	}
	return ids
}
func (fakeTok) Decode(ids []int) string { return "" }
func (fakeTok) VocabSize() int          { return 266 }
func (fakeTok) BOS() int                { return 1 }
func (fakeTok) EOS() int                { return 2 }

func writeFile(t *testing.T, content string) string {
	t.Helper()
	p := filepath.Join(t.TempDir(), "d.jsonl")
	if err := os.WriteFile(p, []byte(content), 0o644); err != nil {
		t.Fatal(err)
	}
	return p
}

func TestShapes(t *testing.T) {
	a, b := int('a')+10, int('b')+10
	p := writeFile(t, `{"text": "ab", "x": 1}`+"\n\n"+`{"text": ""}`+"\n")
	exs, st, err := ReadFile(p, fakeTok{}, Options{SeqLen: 8})
	if err != nil {
		t.Fatal(err)
	}
	// tokens [1 a b 2]: inputs [1 a b], labels [a b 2]
	want := []Example{{IDs: []int{1, a, b}, Labels: []int{a, b, 2}}, {IDs: []int{1}, Labels: []int{2}}}
	if !reflect.DeepEqual(exs, want) || st.Format != FormatText || st.Lines != 2 {
		t.Errorf("text: got %v %+v", exs, st)
	}

	p = writeFile(t, `{"prompt": "a", "completion": "b"}`)
	exs, _, err = ReadFile(p, fakeTok{}, Options{SeqLen: 8})
	if err != nil {
		t.Fatal(err)
	}
	// tokens [1 a | b 2], trained: b and EOS only
	if want := (Example{IDs: []int{1, a, b}, Labels: []int{Ignore, b, 2}}); !reflect.DeepEqual(exs[0], want) {
		t.Errorf("prompt/completion: got %v want %v", exs[0], want)
	}
	exs, _, _ = ReadFile(p, fakeTok{}, Options{SeqLen: 8, TrainOnPrompt: true})
	if want := (Example{IDs: []int{1, a, b}, Labels: []int{a, b, 2}}); !reflect.DeepEqual(exs[0], want) {
		t.Errorf("train on prompt: got %v want %v", exs[0], want)
	}
	// forced format: a text file read as prompt_completion is an error at line 1
	p = writeFile(t, `{"text": "ab"}`)
	if _, _, err := ReadFile(p, fakeTok{}, Options{SeqLen: 8, Format: FormatPromptCompletion}); err == nil || !strings.Contains(err.Error(), p+":1:") {
		t.Errorf("forced format: err = %v", err)
	}
}

func TestTruncation(t *testing.T) {
	p := writeFile(t, `{"text": "abcdefgh"}`+"\n"+`{"text": "ab"}`)
	exs, st, err := ReadFile(p, fakeTok{}, Options{SeqLen: 4})
	if err != nil {
		t.Fatal(err)
	}
	if st.Truncated != 1 || len(exs[0].IDs) != 4 || len(exs[1].IDs) != 3 {
		t.Errorf("truncated %d, lengths %d %d", st.Truncated, len(exs[0].IDs), len(exs[1].IDs))
	}
	// cut to 5 tokens [1 a b c d]: labels [a b c d], no EOS
	if exs[0].Labels[3] != 'd'+10 {
		t.Errorf("labels %v", exs[0].Labels)
	}
}

func TestBadLines(t *testing.T) {
	content := `{"text": "ab"}` + "\n" + `{"text": ` + "\n" + `{"title": "x"}` + "\n" + `{"text": 5}` + "\n" + `{"text": "c"}`
	p := writeFile(t, content)
	_, _, err := ReadFile(p, fakeTok{}, Options{SeqLen: 8})
	if err == nil || !strings.Contains(err.Error(), p+":2:") || !strings.Contains(err.Error(), "skip_bad_lines") {
		t.Errorf("err = %v, want %s:2 and the skip_bad_lines hint", err, p)
	}
	exs, st, err := ReadFile(p, fakeTok{}, Options{SeqLen: 8, SkipBadLines: true})
	if err != nil || len(exs) != 2 || st.Skipped != 3 {
		t.Errorf("skip: %d examples, %d skipped, err %v; want 2, 3", len(exs), st.Skipped, err)
	}
	p = writeFile(t, `{"title": "x"}`+"\n"+`not json`)
	if _, _, err := ReadFile(p, fakeTok{}, Options{SeqLen: 8, SkipBadLines: true}); err == nil || !strings.Contains(err.Error(), "no usable samples") || !strings.Contains(err.Error(), p) {
		t.Errorf("0 samples: err = %v", err)
	}
	p = writeFile(t, `{"messages": [{"role": "user", "content": "hi"}]}`)
	if _, _, err := ReadFile(p, fakeTok{}, Options{SeqLen: 8}); err == nil || !strings.Contains(err.Error(), "chat template") {
		t.Errorf("messages without template: err = %v", err)
	}
}

// checkBatch verifies the layout invariants of a batch built from examples of the given
// vocabulary size and returns the examples found in it, one per segment.
func checkBatch(t *testing.T, bt Batch, vocab int) []Example {
	t.Helper()
	var found []Example
	for r := range bt.B {
		seg := -1
		for c := range bt.T {
			i := r*bt.T + c
			s := bt.Segments[i]
			if bt.Targets[i] != Ignore && (bt.Targets[i] < 0 || bt.Targets[i] >= vocab) {
				t.Fatalf("target %d out of range", bt.Targets[i])
			}
			if s == -1 {
				if bt.Targets[i] != Ignore {
					t.Fatalf("padding with a target")
				}
				continue
			}
			if s != seg { // a new segment starts at position 0 and is the next number
				if s != seg+1 || bt.Positions[i] != 0 {
					t.Fatalf("row %d col %d: segment %d after %d at position %d", r, c, s, seg, bt.Positions[i])
				}
				seg = s
				found = append(found, Example{})
			} else if bt.Positions[i] != bt.Positions[i-1]+1 {
				t.Fatalf("positions do not count up within a segment")
			}
			e := &found[len(found)-1]
			e.IDs = append(e.IDs, bt.Tokens[i])
			e.Labels = append(e.Labels, bt.Targets[i])
		}
	}
	return found
}

func TestLoader(t *testing.T) {
	var exs []Example
	for i := range 23 {
		n := 1 + (i*7)%9
		ex := Example{}
		for k := range n {
			ex.IDs = append(ex.IDs, 10+i)
			ex.Labels = append(ex.Labels, 10+k)
		}
		exs = append(exs, ex)
	}
	for _, packing := range []bool{true, false} {
		l, err := NewLoader(exs, 3, 12, packing, 7)
		if err != nil {
			t.Fatal(err)
		}
		// two epochs: every example exactly once per epoch, intact
		seen := map[int]int{}
		var epoch0 []int
		for l.Epoch() < 2 {
			before := l.Epoch()
			for _, e := range checkBatch(t, l.Next(), 100) {
				i := e.IDs[0] - 10
				if !reflect.DeepEqual(e, exs[i]) {
					t.Fatalf("example %d changed in the batch", i)
				}
				if before == 0 && l.Epoch() == 0 {
					epoch0 = append(epoch0, i)
				}
				seen[i]++
			}
		}
		if len(epoch0) == 0 || len(seen) != len(exs) {
			t.Errorf("packing=%v: saw %d distinct examples of %d", packing, len(seen), len(exs))
		}
		// same seed, same batches; another seed, another order
		a, _ := NewLoader(exs, 3, 12, packing, 7)
		b, _ := NewLoader(exs, 3, 12, packing, 7)
		c, _ := NewLoader(exs, 3, 12, packing, 8)
		differ := false
		for range 20 {
			x, y, z := a.Next(), b.Next(), c.Next()
			if !reflect.DeepEqual(x, y) {
				t.Fatal("same seed gave different batches")
			}
			differ = differ || !reflect.DeepEqual(x, z)
		}
		if !differ {
			t.Error("seeds 7 and 8 gave the same batches")
		}
		// State/Restore mid-epoch and across epochs continue identically
		for _, k := range []int{0, 3, 11} {
			a, _ := NewLoader(exs, 3, 12, packing, 7)
			for range k {
				a.Next()
			}
			st := a.State()
			b, _ := NewLoader(exs, 3, 12, packing, 7)
			if err := b.Restore(st); err != nil {
				t.Fatal(err)
			}
			for range 15 {
				if !reflect.DeepEqual(a.Next(), b.Next()) {
					t.Fatalf("packing=%v: resume after %d batches diverged", packing, k)
				}
			}
		}
		if err := c.Restore(a.State()); err == nil {
			t.Error("restoring another seed's state should fail")
		}
	}
	if !slices.Equal(permutation(50, 3, 1), permutation(50, 3, 1)) || slices.Equal(permutation(50, 3, 1), permutation(50, 3, 2)) {
		t.Error("permutation is not a function of (seed, stream)")
	}
}

func TestSplitAndEval(t *testing.T) {
	var exs []Example
	for i := range 40 {
		exs = append(exs, Example{IDs: []int{i, i}, Labels: []int{i, i}})
	}
	tr, ev := Split(exs, 0.1, 5)
	tr2, ev2 := Split(exs, 0.1, 5)
	_, ev3 := Split(exs, 0.1, 6)
	if len(ev) != 4 || len(tr) != 36 || !reflect.DeepEqual(ev, ev2) || !reflect.DeepEqual(tr, tr2) || reflect.DeepEqual(ev, ev3) {
		t.Errorf("split: %d/%d, deterministic %v, seed-dependent %v", len(tr), len(ev), reflect.DeepEqual(ev, ev2), !reflect.DeepEqual(ev, ev3))
	}
	batches, err := EvalBatches(exs, 2, 5, true)
	if err != nil {
		t.Fatal(err)
	}
	var got []Example
	for _, b := range batches {
		got = append(got, checkBatch(t, b, 100)...)
	}
	if !reflect.DeepEqual(got, exs) {
		t.Errorf("eval batches do not hold every example once in order")
	}
}

// TestCorpora reads the shared corpora with the stories260K tokenizer.
func TestCorpora(t *testing.T) {
	dir := refdata.Stories260K(t)
	tok, err := tokenizer.Open(dir)
	if err != nil {
		t.Fatal(err)
	}
	const seqLen = 256
	for _, c := range []struct {
		file  string
		lines int
	}{{"moby-dick.jsonl", 139}, {"sotu.jsonl", 233}} {
		path := refdata.Path(t, "data", c.file)
		exs, st, err := ReadFile(path, tok, Options{SeqLen: seqLen})
		if err != nil {
			t.Fatal(err)
		}
		t.Logf("%s: %+v", c.file, st)
		if st.Format != FormatText || st.Lines != c.lines || st.Samples != c.lines || st.Skipped != 0 {
			t.Errorf("%s: %+v, want %d text samples", c.file, st, c.lines)
		}
		// expected truncations, counted from the tokenizer independently of ReadFile
		recs := refdata.ReadJSONL[struct{ Text string }](t, path)
		long := 0
		for i, r := range recs {
			n := len(tok.Encode(r.Text, true)) + 1
			if n > seqLen+1 {
				long++
			} else if len(exs[i].IDs) != n-1 {
				t.Fatalf("%s line %d: %d positions, want %d", c.file, i+1, len(exs[i].IDs), n-1)
			}
		}
		if st.Truncated != long || long == 0 {
			t.Errorf("%s: truncated %d, want %d (> 0)", c.file, st.Truncated, long)
		}
		for i, ex := range exs {
			if ex.IDs[0] != tok.BOS() {
				t.Fatalf("%s line %d: first id %d, want BOS", c.file, i+1, ex.IDs[0])
			}
			for p, l := range ex.Labels {
				if l < 0 || l >= tok.VocabSize() {
					t.Fatalf("%s line %d pos %d: label %d", c.file, i+1, p, l)
				}
				if p+1 < len(ex.IDs) && l != ex.IDs[p+1] {
					t.Fatalf("%s line %d: labels are not the next tokens", c.file, i+1)
				}
			}
		}
		if c.file != "moby-dick.jsonl" {
			continue
		}
		l, err := NewLoader(exs, 4, seqLen, true, 42)
		if err != nil {
			t.Fatal(err)
		}
		for l.Epoch() == 0 {
			checkBatch(t, l.Next(), tok.VocabSize())
		}
	}
}

// TestConversation checks the assistant spans on the reference conversations: the trained
// tokens of each turn must decode to the text between the assistant header and the
// end-of-turn token (inclusive), as found by string search in the reference text.
func TestConversation(t *testing.T) {
	for _, c := range []struct{ name, header, eot string }{
		{"llama3", "<|start_header_id|>assistant<|end_header_id|>\n\n", "<|eot_id|>"},
		{"qwen3", "<|im_start|>assistant\n", "<|im_end|>"},
	} {
		dir := refdata.Path(t, "tokenizers", c.name)
		tpl, err := chat.Load(dir)
		if err != nil {
			t.Fatal(err)
		}
		tok, err := tokenizer.Open(dir)
		if err != nil {
			t.Fatal(err)
		}
		type ref struct {
			Messages            []chat.Message
			AddGenerationPrompt bool `json:"add_generation_prompt"`
			Text                string
			IDs                 []int
		}
		turns := 0
		for i, r := range refdata.ReadJSONL[ref](t, filepath.Join(dir, "chat_reference.jsonl")) {
			ids, train, err := Conversation(tpl, nil, tok, r.Messages)
			if err != nil {
				t.Fatalf("%s line %d: %v", c.name, i+1, err)
			}
			text := r.Text
			if r.AddGenerationPrompt {
				// the reference renders with the generation prompt; training data never
				// does, so search our own rendering (checked exact in package chat)
				if text, err = tpl.Render(r.Messages, false, nil); err != nil {
					t.Fatal(err)
				}
			} else if !slices.Equal(ids, r.IDs) {
				t.Fatalf("%s line %d: ids differ from the reference", c.name, i+1)
			}
			var want []string
			for rest := text; ; {
				k := strings.Index(rest, c.header)
				if k < 0 {
					break
				}
				rest = rest[k+len(c.header):]
				if e := strings.Index(rest, c.eot); e >= 0 {
					want = append(want, rest[:e+len(c.eot)])
				}
			}
			var got []string
			for s := 0; s < len(ids); s++ {
				if !train[s] {
					continue
				}
				e := s
				for e < len(ids) && train[e] {
					e++
				}
				got = append(got, tok.Decode(ids[s:e]))
				s = e
			}
			if !slices.Equal(got, want) {
				t.Errorf("%s line %d: trained spans\n got %q\nwant %q", c.name, i+1, got, want)
			}
			turns += len(want)
		}
		t.Logf("%s: %d assistant turns checked", c.name, turns)
		if turns == 0 {
			t.Errorf("%s: no assistant turns checked", c.name)
		}
	}
}

// TestMessagesFile reads a messages file through ReadFile: labels are the trained tokens of
// Conversation, shifted by one.
func TestMessagesFile(t *testing.T) {
	dir := refdata.Path(t, "tokenizers", "qwen3")
	tpl, err := chat.Load(dir)
	if err != nil {
		t.Fatal(err)
	}
	tok, err := tokenizer.Open(dir)
	if err != nil {
		t.Fatal(err)
	}
	p := writeFile(t, `{"messages": [{"role": "user", "content": "Hi"}, {"role": "assistant", "content": "Hello!"}]}`)
	exs, st, err := ReadFile(p, tok, Options{SeqLen: 64, Chat: tpl})
	if err != nil {
		t.Fatal(err)
	}
	ids, train, _ := Conversation(tpl, nil, tok, []chat.Message{{Role: "user", Content: "Hi"}, {Role: "assistant", Content: "Hello!"}})
	var want []int
	for k := 1; k < len(ids); k++ {
		if train[k] {
			want = append(want, ids[k])
		}
	}
	var got []int
	for _, l := range exs[0].Labels {
		if l != Ignore {
			got = append(got, l)
		}
	}
	if st.Format != FormatMessages || !slices.Equal(got, want) || tok.Decode(got) != "<think>\n\n</think>\n\nHello!<|im_end|>" {
		t.Errorf("format %s, trained %q", st.Format, tok.Decode(got))
	}
}
