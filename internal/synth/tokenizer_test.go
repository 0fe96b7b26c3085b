package synth

import (
	"encoding/json"
	"os"
	"path/filepath"
	"slices"
	"testing"

	"github.com/loractl/loractl/internal/tokenizer"
)

// openTokenizer writes the tokenizer files into a temporary folder and loads them with
// tokenizer.Open, as the trainer does.
func openTokenizer(t *testing.T) tokenizer.Encoder {
	t.Helper()
	dir := t.TempDir()
	if err := WriteTokenizer(dir, 64); err != nil {
		t.Fatal(err)
	}
	enc, err := tokenizer.Open(dir)
	if err != nil {
		t.Fatal(err)
	}
	return enc
}

func TestTokenizerSpecials(t *testing.T) {
	enc := openTokenizer(t)
	if enc.VocabSize() != VocabSize() || VocabSize() != len(Vocab()) || VocabSize() != 47 {
		t.Errorf("VocabSize: loaded %d, synth %d, len(Vocab) %d; want 47", enc.VocabSize(), VocabSize(), len(Vocab()))
	}
	if enc.BOS() != BOSID || enc.EOS() != EOSID {
		t.Errorf("BOS, EOS = %d, %d; want %d, %d", enc.BOS(), enc.EOS(), BOSID, EOSID)
	}
	for id, tok := range Vocab() {
		if got := tokenizer.TokenString(enc, id); got != tok {
			t.Errorf("token %d = %q, want %q", id, got, tok)
		}
	}
	// Characters outside the vocabulary are <unk>; special tokens in the text are recognised.
	if got := enc.Encode("1A2", false); !slices.Equal(got, []int{idOf('1'), UnkID, idOf('2')}) {
		t.Errorf("Encode(1A2) = %v", got)
	}
	if got := enc.Encode("7</s>", false); !slices.Equal(got, []int{idOf('7'), EOSID}) {
		t.Errorf("Encode(7</s>) = %v", got)
	}
}

// idOf is the id of a character of Chars.
func idOf(c rune) int {
	for i, r := range Chars {
		if r == c {
			return len(specialTokens) + i
		}
	}
	return -1
}

// TestTokenizerRoundTrip encodes samples of every task, and every character, through the
// loaded tokenizer: one token per character, <s> in front with special tokens, and Decode
// gives the text back.
func TestTokenizerRoundTrip(t *testing.T) {
	enc := openTokenizer(t)
	texts := []string{Chars, "", " leading and trailing ", "a\nb", "99+99=198"}
	texts = append(texts, Pretrain(Train, 100, 1)...)
	for _, name := range TaskNames() {
		task, _ := Lookup(name)
		for _, pc := range task.Generate(Eval, 50, 1) {
			texts = append(texts, pc.Prompt, pc.Completion, pc.Prompt+pc.Completion)
		}
	}
	for _, s := range texts {
		ids := enc.Encode(s, false)
		want := make([]int, 0, len(s))
		for _, c := range s {
			want = append(want, idOf(c))
		}
		if !slices.Equal(ids, want) {
			t.Fatalf("Encode(%q) = %v, want %v", s, ids, want)
		}
		if got := enc.Decode(ids); got != s {
			t.Fatalf("Decode(Encode(%q)) = %q", s, got)
		}
		withBOS := enc.Encode(s, true)
		if !slices.Equal(withBOS, append([]int{BOSID}, want...)) {
			t.Fatalf("Encode(%q, special) = %v, want <s> then %v", s, withBOS, want)
		}
	}
	// A prompt encoded with specials followed by its completion without is the whole text,
	// as the trainer builds prompt/completion samples.
	pc := Finetune(Train, 1, 1)[0]
	joined := append(enc.Encode(pc.Prompt, true), enc.Encode(pc.Completion, false)...)
	if !slices.Equal(joined, enc.Encode(pc.Prompt+pc.Completion, true)) {
		t.Errorf("prompt + completion tokens differ from the tokens of the joined text")
	}
}

// TestTokenizerFiles checks the written files: the fields Hugging Face's tokenizers library
// needs, and tokenizer_config.json's special tokens.
func TestTokenizerFiles(t *testing.T) {
	dir := t.TempDir()
	if err := WriteTokenizer(dir, 64); err != nil {
		t.Fatal(err)
	}
	var tj struct {
		Version     string `json:"version"`
		AddedTokens []struct {
			ID      int    `json:"id"`
			Content string `json:"content"`
			Special bool   `json:"special"`
		} `json:"added_tokens"`
		Model struct {
			Type   string         `json:"type"`
			Vocab  map[string]int `json:"vocab"`
			Merges []string       `json:"merges"`
			Unk    string         `json:"unk_token"`
		} `json:"model"`
		Decoder struct {
			Type string `json:"type"`
		} `json:"decoder"`
	}
	readJSON(t, filepath.Join(dir, "tokenizer.json"), &tj)
	if tj.Version != "1.0" || tj.Model.Type != "BPE" || len(tj.Model.Merges) != 0 || tj.Model.Unk != "<unk>" || tj.Decoder.Type != "Fuse" {
		t.Errorf("tokenizer.json header fields: %+v", tj)
	}
	if len(tj.Model.Vocab) != VocabSize() || tj.Model.Vocab["<s>"] != 1 || tj.Model.Vocab["a"] != idOf('a') {
		t.Errorf("vocab has %d entries, <s>=%d, a=%d", len(tj.Model.Vocab), tj.Model.Vocab["<s>"], tj.Model.Vocab["a"])
	}
	if len(tj.AddedTokens) != 3 || tj.AddedTokens[2].Content != "</s>" || tj.AddedTokens[2].ID != 2 || !tj.AddedTokens[2].Special {
		t.Errorf("added_tokens = %+v", tj.AddedTokens)
	}
	var tc map[string]any
	readJSON(t, filepath.Join(dir, "tokenizer_config.json"), &tc)
	if tc["bos_token"] != "<s>" || tc["eos_token"] != "</s>" || tc["add_bos_token"] != true || tc["model_max_length"] != 64.0 {
		t.Errorf("tokenizer_config.json = %v", tc)
	}
}

func readJSON(t *testing.T, path string, v any) {
	t.Helper()
	data, err := os.ReadFile(path)
	if err != nil {
		t.Fatal(err)
	}
	if err := json.Unmarshal(data, v); err != nil {
		t.Fatalf("%s: %v", path, err)
	}
}
