package tokenizer

import (
	"errors"
	"path/filepath"

	"github.com/loractl/loractl/internal/tokenizer/sentencepiece"
)

// Open returns the tokenizer of a model folder: tokenizer.json (with tokenizer_config.json) or
// GPT-2's encoder.json + vocab.bpe when present (see Load), else the sentencepiece
// tokenizer.model. The folder needs only the tokenizer files, not the weights.
func Open(dir string) (Encoder, error) {
	t, err := Load(dir)
	if err == nil {
		return t, nil
	}
	if !errors.Is(err, ErrNoTokenizerJSON) {
		return nil, err
	}
	return sentencepiece.Load(filepath.Join(dir, "tokenizer.model"))
}

// TokenString returns the vocabulary string of id ("▁Once", "<0x0A>", "Ġthe"), or "" if the
// tokenizer has no such id.
func TokenString(e Encoder, id int) string {
	var s string
	switch t := e.(type) {
	case *Tokenizer:
		s, _ = t.IDToToken(id)
	case *sentencepiece.Model:
		s, _ = t.IDToPiece(id)
	}
	return s
}
