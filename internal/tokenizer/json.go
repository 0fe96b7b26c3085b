package tokenizer

import (
	"bytes"
	"encoding/json"
	"fmt"
	"strings"
)

// fileJSON is the part of tokenizer.json this package reads.
type fileJSON struct {
	AddedTokens   []addedTokenJSON `json:"added_tokens"`
	Normalizer    json.RawMessage  `json:"normalizer"`
	PreTokenizer  json.RawMessage  `json:"pre_tokenizer"`
	Model         *modelJSON       `json:"model"`
	PostProcessor json.RawMessage  `json:"post_processor"`
	Decoder       json.RawMessage  `json:"decoder"`
}

// addedTokenJSON is one entry of "added_tokens".
type addedTokenJSON struct {
	ID         int    `json:"id"`
	Content    string `json:"content"`
	SingleWord bool   `json:"single_word"`
	LStrip     bool   `json:"lstrip"`
	RStrip     bool   `json:"rstrip"`
	Normalized bool   `json:"normalized"`
	Special    bool   `json:"special"`
}

// modelJSON is "model".
type modelJSON struct {
	Type                    string          `json:"type"`
	Vocab                   json.RawMessage `json:"vocab"`
	Merges                  json.RawMessage `json:"merges"`
	UnkToken                *string         `json:"unk_token"`
	ContinuingSubwordPrefix *string         `json:"continuing_subword_prefix"`
	EndOfWordSuffix         *string         `json:"end_of_word_suffix"`
	FuseUnk                 bool            `json:"fuse_unk"`
	ByteFallback            bool            `json:"byte_fallback"`
	IgnoreMerges            bool            `json:"ignore_merges"`
}

// patternJSON is a {"Regex": ...} or {"String": ...} pattern.
type patternJSON struct {
	Regex  *string `json:"Regex"`
	String *string `json:"String"`
}

// componentJSON holds the fields of every normalizer, pre-tokenizer, post-processor and
// decoder this package supports; "type" says which fields apply.
type componentJSON struct {
	Type string `json:"type"`

	// Sequences.
	Normalizers   []json.RawMessage `json:"normalizers"`
	Pretokenizers []json.RawMessage `json:"pretokenizers"`
	Processors    []json.RawMessage `json:"processors"`
	Decoders      []json.RawMessage `json:"decoders"`

	// Normalizers and decoders.
	Prepend    string       `json:"prepend"`
	Pattern    *patternJSON `json:"pattern"`
	Content    string       `json:"content"`
	StripLeft  bool         `json:"strip_left"`
	StripRight bool         `json:"strip_right"`
	Start      int          `json:"start"`
	Stop       int          `json:"stop"`

	// Pre-tokenizers.
	Behavior         string  `json:"behavior"`
	Invert           bool    `json:"invert"`
	AddPrefixSpace   *bool   `json:"add_prefix_space"`
	UseRegex         *bool   `json:"use_regex"`
	Replacement      string  `json:"replacement"`
	PrependScheme    *string `json:"prepend_scheme"`
	Split            *bool   `json:"split"`
	IndividualDigits bool    `json:"individual_digits"`

	// Post-processors.
	Single        []templateItemJSON             `json:"single"`
	SpecialTokens map[string]templateSpecialJSON `json:"special_tokens"`
	Cls           []json.RawMessage              `json:"cls"`
	Sep           []json.RawMessage              `json:"sep"`
}

// templateItemJSON is one item of a TemplateProcessing "single" list.
type templateItemJSON struct {
	SpecialToken *struct {
		ID string `json:"id"`
	} `json:"SpecialToken"`
	Sequence *struct {
		ID string `json:"id"`
	} `json:"Sequence"`
}

// templateSpecialJSON is one entry of TemplateProcessing "special_tokens".
type templateSpecialJSON struct {
	ID  string `json:"id"`
	IDs []int  `json:"ids"`
}

// isNull reports whether a raw JSON value is absent or null.
func isNull(raw json.RawMessage) bool {
	t := bytes.TrimSpace(raw)
	return len(t) == 0 || bytes.Equal(t, []byte("null"))
}

// parseComponent decodes a component object and checks it has a type.
func parseComponent(raw json.RawMessage, what string) (*componentJSON, error) {
	var c componentJSON
	if err := json.Unmarshal(raw, &c); err != nil {
		return nil, fmt.Errorf("%s: %v", what, err)
	}
	if c.Type == "" {
		return nil, fmt.Errorf("%s has no \"type\"", what)
	}
	return &c, nil
}

// parseMerges reads "merges" in either encoding: "a b" strings (split at the first space,
// as transformers.js does) or [a, b] pairs (tokenizers >= 0.20). Large vocabularies have
// hundreds of thousands of merges, so the list is scanned directly rather than decoded
// item by item.
func parseMerges(raw json.RawMessage) ([][2]string, error) {
	if isNull(raw) {
		return nil, nil
	}
	sc := &scanner{b: raw}
	if !sc.consume('[') {
		return nil, fmt.Errorf("\"merges\" is not a list")
	}
	var out [][2]string
	for k := 0; ; k++ {
		if k == 0 && sc.consume(']') {
			break
		}
		var a, b string
		var err error
		switch {
		case sc.peek() == '"':
			var s string
			if s, err = sc.str(); err != nil {
				return nil, fmt.Errorf("merge %d: %v", k, err)
			}
			var ok bool
			if a, b, ok = strings.Cut(s, " "); !ok {
				return nil, fmt.Errorf("merge %d (%q) is not two tokens separated by a space", k, s)
			}
			// "a b c" keeps "a" and "b", like JavaScript's s.split(' ', 2).
			if i := strings.IndexByte(b, ' '); i >= 0 {
				b = b[:i]
			}
		case sc.consume('['):
			if a, err = sc.str(); err == nil && sc.consume(',') {
				b, err = sc.str()
			} else if err == nil {
				err = fmt.Errorf("expected ','")
			}
			if err == nil && !sc.consume(']') {
				err = fmt.Errorf("expected ']' after two strings")
			}
			if err != nil {
				return nil, fmt.Errorf("merge %d is not a pair [\"a\", \"b\"]: %v", k, err)
			}
		default:
			return nil, fmt.Errorf("merge %d is neither \"a b\" nor [\"a\", \"b\"]", k)
		}
		out = append(out, [2]string{a, b})
		if sc.consume(']') {
			break
		}
		if !sc.consume(',') {
			return nil, fmt.Errorf("\"merges\": expected ',' or ']' after merge %d", k)
		}
	}
	return out, nil
}

// scanner reads JSON tokens from an already validated document.
type scanner struct {
	b []byte
	i int
}

func (s *scanner) skipSpace() {
	for s.i < len(s.b) && (s.b[s.i] == ' ' || s.b[s.i] == '\n' || s.b[s.i] == '\t' || s.b[s.i] == '\r') {
		s.i++
	}
}

// peek returns the next non-space byte (0 at the end).
func (s *scanner) peek() byte {
	s.skipSpace()
	if s.i < len(s.b) {
		return s.b[s.i]
	}
	return 0
}

// consume skips c (after spaces) if it is next.
func (s *scanner) consume(c byte) bool {
	if s.peek() == c && c != 0 {
		s.i++
		return true
	}
	return false
}

// str reads a JSON string.
func (s *scanner) str() (string, error) {
	if s.peek() != '"' {
		return "", fmt.Errorf("expected a string")
	}
	start := s.i
	escaped := false
	for j := start + 1; j < len(s.b); j++ {
		switch s.b[j] {
		case '\\':
			escaped = true
			j++
		case '"':
			s.i = j + 1
			if !escaped {
				return string(s.b[start+1 : j]), nil
			}
			var out string
			err := json.Unmarshal(s.b[start:j+1], &out)
			return out, err
		}
	}
	return "", fmt.Errorf("unterminated string")
}

// configJSON is the part of tokenizer_config.json this package reads.
type configJSON struct {
	BOSToken                specialTokenJSON   `json:"bos_token"`
	EOSToken                specialTokenJSON   `json:"eos_token"`
	AddBOSToken             *bool              `json:"add_bos_token"`
	AddEOSToken             *bool              `json:"add_eos_token"`
	AdditionalSpecialTokens []specialTokenJSON `json:"additional_special_tokens"`
	ChatTemplate            json.RawMessage    `json:"chat_template"`
}

// specialTokenJSON is a special token in tokenizer_config.json: a string, an object
// {"content": ...}, or null. Set reports whether the key was present at all.
type specialTokenJSON struct {
	Set     bool
	Null    bool
	Content string
}

// UnmarshalJSON implements json.Unmarshaler.
func (s *specialTokenJSON) UnmarshalJSON(b []byte) error {
	s.Set = true
	b = bytes.TrimSpace(b)
	switch {
	case bytes.Equal(b, []byte("null")):
		s.Null = true
		return nil
	case len(b) > 0 && b[0] == '"':
		return json.Unmarshal(b, &s.Content)
	}
	var obj struct {
		Content *string `json:"content"`
	}
	if err := json.Unmarshal(b, &obj); err != nil {
		return fmt.Errorf("a special token must be a string, {\"content\": ...} or null, got %s", b)
	}
	if obj.Content == nil {
		return fmt.Errorf("special token object %s has no \"content\"", b)
	}
	s.Content = *obj.Content
	return nil
}

// chatTemplate returns the default template: the string, or the entry named "default"
// (else the first) of a list of {"name", "template"}.
func (c *configJSON) chatTemplate() string {
	if isNull(c.ChatTemplate) {
		return ""
	}
	var s string
	if json.Unmarshal(c.ChatTemplate, &s) == nil {
		return s
	}
	var list []struct {
		Name     string `json:"name"`
		Template string `json:"template"`
	}
	if json.Unmarshal(c.ChatTemplate, &list) != nil || len(list) == 0 {
		return ""
	}
	for _, t := range list {
		if t.Name == "default" {
			return t.Template
		}
	}
	return list[0].Template
}
