package synth

import (
	"bytes"
	"encoding/json"
	"fmt"
	"path/filepath"
)

// Special token ids of the character tokenizer.
const (
	UnkID = 0 // <unk>: any character outside the vocabulary
	BOSID = 1 // <s>: added in front of every encoded text
	EOSID = 2 // </s>: ends every training sample
)

// Special token strings, in id order.
var specialTokens = []string{"<unk>", "<s>", "</s>"}

// Chars are the characters of the tokenizer, one token each, with ids 3, 4, ... in this
// order: newline, space, the punctuation the tasks use or may use, the digits and the
// lower-case letters.
const Chars = "\n *+,-.=0123456789abcdefghijklmnopqrstuvwxyz"

// Vocab returns the tokens of the character tokenizer by id: the three special tokens, then
// one token per character of Chars.
func Vocab() []string {
	v := append([]string{}, specialTokens...)
	for _, c := range Chars {
		v = append(v, string(c))
	}
	return v
}

// VocabSize is the number of tokens of the character tokenizer (the model's vocab_size).
func VocabSize() int { return len(specialTokens) + len(Chars) }

// orderedVocab marshals as a JSON object of token -> id in id order (encoding/json would
// sort the keys).
type orderedVocab []string

func (v orderedVocab) MarshalJSON() ([]byte, error) {
	var b bytes.Buffer
	b.WriteByte('{')
	for id, tok := range v {
		if id > 0 {
			b.WriteByte(',')
		}
		k, err := json.Marshal(tok)
		if err != nil {
			return nil, err
		}
		fmt.Fprintf(&b, "%s:%d", k, id)
	}
	b.WriteByte('}')
	return b.Bytes(), nil
}

// TokenizerJSON returns the Hugging Face tokenizer.json of the character tokenizer: a BPE
// model whose vocabulary is the special tokens plus one token per character and which has
// no merges, so every character is one token. There is no normalizer and no pre-tokenizer
// (spaces and newlines are ordinary characters); the post-processor puts <s> in front, and
// the Fuse decoder joins the tokens back into the text. The file carries every field the
// Hugging Face tokenizers library expects, so transformers loads it as well.
func TokenizerJSON() ([]byte, error) {
	type added struct {
		ID         int    `json:"id"`
		Content    string `json:"content"`
		SingleWord bool   `json:"single_word"`
		LStrip     bool   `json:"lstrip"`
		RStrip     bool   `json:"rstrip"`
		Normalized bool   `json:"normalized"`
		Special    bool   `json:"special"`
	}
	var addedTokens []added
	for id, s := range specialTokens {
		addedTokens = append(addedTokens, added{ID: id, Content: s, Special: true})
	}
	bos := specialTokens[BOSID]
	seq := func(id string) map[string]any {
		return map[string]any{"Sequence": map[string]any{"id": id, "type_id": 0}}
	}
	special := map[string]any{"SpecialToken": map[string]any{"id": bos, "type_id": 0}}
	file := struct {
		Version       string         `json:"version"`
		Truncation    any            `json:"truncation"`
		Padding       any            `json:"padding"`
		AddedTokens   []added        `json:"added_tokens"`
		Normalizer    any            `json:"normalizer"`
		PreTokenizer  any            `json:"pre_tokenizer"`
		PostProcessor map[string]any `json:"post_processor"`
		Decoder       map[string]any `json:"decoder"`
		Model         map[string]any `json:"model"`
	}{
		Version:     "1.0",
		AddedTokens: addedTokens,
		PostProcessor: map[string]any{
			"type":   "TemplateProcessing",
			"single": []any{special, seq("A")},
			"pair":   []any{special, seq("A"), special, seq("B")},
			"special_tokens": map[string]any{
				bos: map[string]any{"id": bos, "ids": []int{BOSID}, "tokens": []string{bos}},
			},
		},
		Decoder: map[string]any{"type": "Fuse"},
		Model: map[string]any{
			"type":                      "BPE",
			"dropout":                   nil,
			"unk_token":                 specialTokens[UnkID],
			"continuing_subword_prefix": nil,
			"end_of_word_suffix":        nil,
			"fuse_unk":                  false,
			"byte_fallback":             false,
			"ignore_merges":             false,
			"vocab":                     orderedVocab(Vocab()),
			"merges":                    []string{},
		},
	}
	return json.MarshalIndent(file, "", "  ")
}

// TokenizerConfigJSON returns the tokenizer_config.json that goes with TokenizerJSON: the
// special tokens, add_bos_token true and add_eos_token false (the trainer appends EOS to
// each sample itself), and a model_max_length of maxLen (the model's context).
func TokenizerConfigJSON(maxLen int) ([]byte, error) {
	return json.MarshalIndent(map[string]any{
		"tokenizer_class":              "PreTrainedTokenizerFast",
		"bos_token":                    specialTokens[BOSID],
		"eos_token":                    specialTokens[EOSID],
		"unk_token":                    specialTokens[UnkID],
		"add_bos_token":                true,
		"add_eos_token":                false,
		"model_max_length":             maxLen,
		"clean_up_tokenization_spaces": false,
	}, "", "  ")
}

// WriteTokenizer writes tokenizer.json and tokenizer_config.json into dir (which must
// exist), each atomically. maxLen is the model's context length.
func WriteTokenizer(dir string, maxLen int) error {
	tj, err := TokenizerJSON()
	if err != nil {
		return err
	}
	tc, err := TokenizerConfigJSON(maxLen)
	if err != nil {
		return err
	}
	if err := WriteFileAtomic(filepath.Join(dir, "tokenizer.json"), append(tj, '\n')); err != nil {
		return err
	}
	return WriteFileAtomic(filepath.Join(dir, "tokenizer_config.json"), append(tc, '\n'))
}
