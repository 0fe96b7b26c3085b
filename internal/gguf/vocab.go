package gguf

import (
	"encoding/json"
	"errors"
	"fmt"
	"io/fs"
	"os"
	"path/filepath"
	"sort"
	"strconv"
	"strings"

	"github.com/loractl/loractl/internal/model"
	"github.com/loractl/loractl/internal/tokenizer/sentencepiece"
)

// GGUF token types (llama.cpp's llama_token_type; the same numbers as sentencepiece's).
const (
	tokNormal      int32 = 1
	tokUnknown     int32 = 2
	tokControl     int32 = 3
	tokUserDefined int32 = 4
	tokUnused      int32 = 5
	tokByte        int32 = 6
)

// Vocab is the tokenizer metadata of a GGUF model.
type Vocab struct {
	Model  string   // tokenizer.ggml.model: "llama" (sentencepiece) or "gpt2" (byte-level BPE)
	Pre    string   // tokenizer.ggml.pre
	Tokens []string // one per id, vocab_size of them
	Scores []float32
	Types  []int32
	Merges []string // gpt2 only, "left right"

	BOS, EOS, UNK, PAD int // -1 when unknown
	AddBOS, AddEOS     *bool
	ChatTemplates      map[string]string // "" is the default template
	Source             string            // the file the tokens came from
}

// KV returns the tokenizer.* metadata entries.
func (v *Vocab) KV() []KV {
	kv := []KV{{"tokenizer.ggml.model", v.Model}, {"tokenizer.ggml.pre", v.Pre}, {"tokenizer.ggml.tokens", v.Tokens}}
	if v.Scores != nil {
		kv = append(kv, KV{"tokenizer.ggml.scores", v.Scores})
	}
	kv = append(kv, KV{"tokenizer.ggml.token_type", v.Types})
	if v.Merges != nil {
		kv = append(kv, KV{"tokenizer.ggml.merges", v.Merges})
	}
	for _, id := range []struct {
		key string
		id  int
	}{{"bos_token_id", v.BOS}, {"eos_token_id", v.EOS}, {"unknown_token_id", v.UNK}, {"padding_token_id", v.PAD}} {
		if id.id >= 0 {
			kv = append(kv, KV{"tokenizer.ggml." + id.key, uint32(id.id)})
		}
	}
	if v.AddBOS != nil {
		kv = append(kv, KV{"tokenizer.ggml.add_bos_token", *v.AddBOS})
	}
	if v.AddEOS != nil {
		kv = append(kv, KV{"tokenizer.ggml.add_eos_token", *v.AddEOS})
	}
	names := make([]string, 0, len(v.ChatTemplates))
	for n := range v.ChatTemplates {
		names = append(names, n)
	}
	sort.Strings(names)
	for _, n := range names {
		key := "tokenizer.chat_template"
		if n != "" {
			key += "." + n
		}
		kv = append(kv, KV{key, v.ChatTemplates[n]})
	}
	return kv
}

// tokenizerConfig is the part of tokenizer_config.json the converter reads.
type tokenizerConfig struct {
	AddBOS       *bool                      `json:"add_bos_token"`
	AddEOS       *bool                      `json:"add_eos_token"`
	BOS          json.RawMessage            `json:"bos_token"`
	EOS          json.RawMessage            `json:"eos_token"`
	UNK          json.RawMessage            `json:"unk_token"`
	PAD          json.RawMessage            `json:"pad_token"`
	ChatTemplate json.RawMessage            `json:"chat_template"`
	AddedDecoder map[string]addedTokenEntry `json:"added_tokens_decoder"`
	path         string
}

type addedTokenEntry struct {
	ID         int    `json:"id"`
	Content    string `json:"content"`
	Special    bool   `json:"special"`
	Normalized bool   `json:"normalized"`
}

// tokenText reads a special-token field: a string, an AddedToken object or null.
func tokenText(raw json.RawMessage) string {
	var s string
	if json.Unmarshal(raw, &s) == nil {
		return s
	}
	var o struct {
		Content string `json:"content"`
	}
	if json.Unmarshal(raw, &o) == nil {
		return o.Content
	}
	return ""
}

func readTokenizerConfig(dir string) (*tokenizerConfig, error) {
	p := filepath.Join(dir, "tokenizer_config.json")
	data, err := os.ReadFile(p)
	if errors.Is(err, fs.ErrNotExist) {
		return &tokenizerConfig{path: p}, nil
	}
	if err != nil {
		return nil, err
	}
	var c tokenizerConfig
	if err := json.Unmarshal(data, &c); err != nil {
		return nil, fmt.Errorf("%s: not valid JSON: %v; fix or remove the file", p, err)
	}
	c.path = p
	return &c, nil
}

// chatTemplates reads the chat template(s): tokenizer_config.json's chat_template (a string, or
// a list of {name, template}), else a chat_template.jinja file.
func (c *tokenizerConfig) chatTemplates(dir string) (map[string]string, error) {
	out := map[string]string{}
	if len(c.ChatTemplate) > 0 && string(c.ChatTemplate) != "null" {
		var s string
		if json.Unmarshal(c.ChatTemplate, &s) == nil {
			out[""] = s
			return out, nil
		}
		var list []struct {
			Name     string `json:"name"`
			Template string `json:"template"`
		}
		if err := json.Unmarshal(c.ChatTemplate, &list); err != nil {
			return nil, fmt.Errorf("%s: chat_template is neither a string nor a list of {name, template}", c.path)
		}
		for _, t := range list {
			name := t.Name
			if name == "default" {
				name = ""
			}
			out[name] = t.Template
		}
		return out, nil
	}
	if b, err := os.ReadFile(filepath.Join(dir, "chat_template.jinja")); err == nil {
		out[""] = string(b)
	}
	return out, nil
}

// looksSpecial is the converter's does_token_look_special.
func looksSpecial(t string) bool {
	switch t {
	case "<pad>", "<mask>", "<2mass>", "[@BOS@]":
		return true
	}
	return (strings.HasPrefix(t, "<|") && strings.HasSuffix(t, "|>")) ||
		(strings.HasPrefix(t, "<｜") && strings.HasSuffix(t, "｜>")) ||
		(strings.HasPrefix(t, "<unused") && strings.HasSuffix(t, ">"))
}

// LoadVocab builds the GGUF tokenizer metadata of a model folder as llama.cpp's converter does
// for a Llama model: tokenizer.model (sentencepiece) when present, else a byte-level BPE
// tokenizer.json. vocabSize is the model's vocab_size; the token list is padded to it.
func LoadVocab(dir string, cfg *model.Config) (*Vocab, error) {
	tc, err := readTokenizerConfig(dir)
	if err != nil {
		return nil, err
	}
	var v *Vocab
	spm := filepath.Join(dir, "tokenizer.model")
	if _, err := os.Stat(spm); err == nil {
		v, err = sentencepieceVocab(spm, tc, cfg.VocabSize)
		if err != nil {
			return nil, err
		}
	} else {
		v, err = bpeVocab(filepath.Join(dir, "tokenizer.json"), tc, cfg.VocabSize)
		if err != nil {
			return nil, err
		}
	}
	// Special ids as gguf-py's SpecialVocab: the *_token strings of tokenizer_config.json looked
	// up in the vocabulary, else config.json's *_token_id.
	ids := map[string]int{}
	for i, t := range v.Tokens {
		if _, dup := ids[t]; !dup {
			ids[t] = i
		}
	}
	lookup := func(raw json.RawMessage, fallback int) int {
		if t := tokenText(raw); t != "" {
			if id, ok := ids[t]; ok {
				return id
			}
		}
		return fallback
	}
	eos := -1
	if len(cfg.EOSTokenIDs) > 0 {
		eos = cfg.EOSTokenIDs[0]
	}
	v.BOS = lookup(tc.BOS, cfg.BOSTokenID)
	v.EOS = lookup(tc.EOS, eos)
	v.UNK = lookup(tc.UNK, v.UNK)
	v.PAD = lookup(tc.PAD, -1)
	if tc.AddBOS != nil {
		v.AddBOS = tc.AddBOS
	}
	if tc.AddEOS != nil {
		v.AddEOS = tc.AddEOS
	}
	if v.ChatTemplates, err = tc.chatTemplates(dir); err != nil {
		return nil, err
	}
	return v, nil
}

// sentencepieceVocab is the converter's _create_vocab_sentencepiece: vocab_size slots that
// start as "[PADid]" UNUSED tokens with score -10000, every piece with its score and type, then
// added_tokens.json (USER_DEFINED) and the added tokens of tokenizer_config.json (CONTROL when
// special or special-looking, else USER_DEFINED), both with score -1000.
func sentencepieceVocab(path string, tc *tokenizerConfig, vocabSize int) (*Vocab, error) {
	sp, err := sentencepiece.Load(path)
	if err != nil {
		return nil, err
	}
	n := sp.VocabSize()
	if n > vocabSize {
		return nil, fmt.Errorf("%s has %d pieces but the model's vocab_size is %d; the tokenizer belongs to another model", path, n, vocabSize)
	}
	v := &Vocab{Model: "llama", Pre: "default", Source: path, UNK: sp.UNK(), BOS: -1, EOS: -1, PAD: -1,
		Tokens: make([]string, vocabSize), Scores: make([]float32, vocabSize), Types: make([]int32, vocabSize)}
	for id := range v.Tokens {
		v.Tokens[id], v.Scores[id], v.Types[id] = fmt.Sprintf("[PAD%d]", id), -10000, tokUnused
	}
	for id := 0; id < n; id++ {
		text, score, typ, _ := sp.Piece(id)
		tt := tokNormal
		switch typ {
		case sentencepiece.Unknown:
			tt = tokUnknown
		case sentencepiece.Control:
			tt = tokControl
		case sentencepiece.Unused:
			tt = tokUnused
		case sentencepiece.Byte:
			tt = tokByte
		}
		v.Tokens[id], v.Scores[id], v.Types[id] = text, score, tt
	}
	addedPath := filepath.Join(filepath.Dir(path), "added_tokens.json")
	if data, err := os.ReadFile(addedPath); err == nil {
		var added map[string]int
		if err := json.Unmarshal(data, &added); err != nil {
			return nil, fmt.Errorf("%s: want an object of token → id: %v", addedPath, err)
		}
		for text, id := range added {
			if id >= 0 && id < vocabSize {
				v.Tokens[id], v.Scores[id], v.Types[id] = text, -1000, tokUserDefined
			}
		}
	}
	for key, e := range tc.AddedDecoder {
		id, err := strconv.Atoi(key)
		if err != nil || id < 0 {
			return nil, fmt.Errorf("%s: added_tokens_decoder key %q is not a token id", tc.path, key)
		}
		if id >= vocabSize {
			return nil, fmt.Errorf("%s: added token %q has id %d, outside the model's vocab_size %d", tc.path, e.Content, id, vocabSize)
		}
		text := e.Content
		if e.Special || looksSpecial(text) {
			v.Types[id] = tokControl
		} else {
			text = strings.ReplaceAll(text, "\u2581", " ")
			v.Types[id] = tokUserDefined
		}
		v.Scores[id] = -1000
		v.Tokens[id] = text
	}
	return v, nil
}

// hfTokenizer is the part of tokenizer.json a GGUF vocabulary needs.
type hfTokenizer struct {
	Model struct {
		Type   string          `json:"type"`
		Vocab  map[string]int  `json:"vocab"`
		Merges json.RawMessage `json:"merges"`
	} `json:"model"`
	AddedTokens  []addedTokenEntry `json:"added_tokens"`
	PreTokenizer json.RawMessage   `json:"pre_tokenizer"`
	Decoder      struct {
		Type string `json:"type"`
	} `json:"decoder"`
}

// Pre-tokenizer split patterns and the tokenizer.ggml.pre names llama.cpp gives them.
var preNames = []struct{ pattern, name string }{
	{`(?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}{1,3}| ?[^\s\p{L}\p{N}]+[\r\n]*|\s*[\r\n]+|\s+(?!\S)|\s+`, "llama-bpe"},
	{`(?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}| ?[^\s\p{L}\p{N}]+[\r\n]*|\s*[\r\n]+|\s+(?!\S)|\s+`, "qwen2"},
}

// bpeVocab is the converter's _set_vocab_gpt2 for a byte-level BPE tokenizer.json: tokens by
// id ([PADn] UNUSED where an id has none), added tokens CONTROL when special (or when they
// look special) else USER_DEFINED, and the merges. tokenizer.ggml.pre is chosen from the
// pre-tokenizer's split pattern (the converter hashes an encoding instead; the patterns it
// names are those of llama-bpe, qwen2 and gpt-2).
func bpeVocab(path string, tc *tokenizerConfig, vocabSize int) (*Vocab, error) {
	data, err := os.ReadFile(path)
	if errors.Is(err, fs.ErrNotExist) {
		return nil, fmt.Errorf("%s: no tokenizer.model or tokenizer.json in %s; a GGUF model needs its tokenizer, copy the tokenizer files into the model folder", path, filepath.Dir(path))
	}
	if err != nil {
		return nil, err
	}
	var t hfTokenizer
	if err := json.Unmarshal(data, &t); err != nil {
		return nil, fmt.Errorf("%s: not valid JSON: %v", path, err)
	}
	pre := string(t.PreTokenizer)
	if t.Model.Type != "BPE" || !strings.Contains(pre, `"ByteLevel"`) {
		return nil, fmt.Errorf("%s: a %s tokenizer without a byte-level pre-tokenizer (sentencepiece-style); GGUF export needs the sentencepiece tokenizer.model for it: put tokenizer.model in the model folder", path, t.Model.Type)
	}
	v := &Vocab{Model: "gpt2", Pre: "default", Source: path, BOS: -1, EOS: -1, UNK: -1, PAD: -1}
	for _, p := range preNames {
		if js, _ := json.Marshal(p.pattern); strings.Contains(pre, string(js[1:len(js)-1])) {
			v.Pre = p.name
		}
	}
	if v.Pre == "default" && !strings.Contains(pre, `"Split"`) {
		v.Pre = "gpt-2" // a plain ByteLevel pre-tokenizer uses GPT-2's regex
	}
	byID := map[int]string{}
	for tok, id := range t.Model.Vocab {
		byID[id] = tok
	}
	added := map[int]addedTokenEntry{}
	for _, a := range t.AddedTokens {
		byID[a.ID] = a.Content
		added[a.ID] = a
	}
	maxID := -1
	for id := range byID {
		maxID = max(maxID, id)
	}
	if maxID >= vocabSize {
		return nil, fmt.Errorf("%s has token id %d but the model's vocab_size is %d; the tokenizer belongs to another model", path, maxID, vocabSize)
	}
	for i := 0; i < vocabSize; i++ {
		tok, ok := byID[i]
		switch {
		case !ok:
			v.Tokens = append(v.Tokens, fmt.Sprintf("[PAD%d]", i))
			v.Types = append(v.Types, tokUnused)
		case added[i].Content != "" && (added[i].Special || looksSpecial(tok)):
			v.Tokens = append(v.Tokens, tok)
			v.Types = append(v.Types, tokControl)
		case added[i].Content != "":
			v.Tokens = append(v.Tokens, strings.ReplaceAll(tok, "\u2581", " "))
			v.Types = append(v.Types, tokUserDefined)
		default:
			v.Tokens = append(v.Tokens, tok)
			v.Types = append(v.Types, tokNormal)
		}
	}
	// Merges: "a b" strings, or [a, b] pairs (tokenizers >= 0.20).
	var ms []string
	if err := json.Unmarshal(t.Model.Merges, &ms); err != nil {
		ms = nil // a failed Unmarshal may have filled part of it
		var pairs [][2]string
		if err := json.Unmarshal(t.Model.Merges, &pairs); err != nil {
			return nil, fmt.Errorf("%s: model.merges is neither a list of strings nor of pairs", path)
		}
		// A space inside a part is written as U+0120, as gguf-py does, so that the single
		// space of "left right" stays the separator.
		sp := strings.NewReplacer(" ", "\u0120")
		for _, p := range pairs {
			ms = append(ms, sp.Replace(p[0])+" "+sp.Replace(p[1]))
		}
	}
	v.Merges = ms
	if v.Merges == nil {
		v.Merges = []string{}
	}
	// add_bos_token when tokenizer_config.json does not say: a post-processor template that
	// starts with the BOS token adds it.
	if tc.AddBOS == nil {
		var pp struct {
			PostProcessor struct {
				Type   string `json:"type"`
				Single []struct {
					SpecialToken *struct {
						ID string `json:"id"`
					} `json:"SpecialToken"`
				} `json:"single"`
			} `json:"post_processor"`
		}
		if json.Unmarshal(data, &pp) == nil && pp.PostProcessor.Type == "TemplateProcessing" {
			b := len(pp.PostProcessor.Single) > 0 && pp.PostProcessor.Single[0].SpecialToken != nil &&
				pp.PostProcessor.Single[0].SpecialToken.ID == tokenText(tc.BOS) && tokenText(tc.BOS) != ""
			v.AddBOS = &b
		}
	}
	return v, nil
}
