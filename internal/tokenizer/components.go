package tokenizer

import (
	"encoding/json"
	"fmt"
	"strconv"
	"strings"

	"golang.org/x/text/unicode/norm"
)

// A normalizer rewrites the text of one section before pre-tokenization.
type normalizer func(string) string

// A preTokenizer cuts words into smaller words. section is the index of the text section
// (sections are separated by added tokens), which Metaspace's prepend_scheme "first" uses.
type preTokenizer func(words []string, section int) []string

// A postProcessor adds special tokens around the ids of a text.
type postProcessor func(ids []int) []int

// A decoder rewrites a list of token strings (one step of a decoder chain).
type decoder func(tokens []string) []string

// buildNormalizer builds a normalizer from its tokenizer.json object (nil for null).
func buildNormalizer(raw json.RawMessage) (normalizer, error) {
	if isNull(raw) {
		return nil, nil
	}
	c, err := parseComponent(raw, "normalizer")
	if err != nil {
		return nil, err
	}
	switch c.Type {
	case "Sequence":
		var steps []normalizer
		for _, r := range c.Normalizers {
			n, err := buildNormalizer(r)
			if err != nil {
				return nil, err
			}
			if n != nil {
				steps = append(steps, n)
			}
		}
		return func(s string) string {
			for _, n := range steps {
				s = n(s)
			}
			return s
		}, nil
	case "Prepend":
		p := c.Prepend
		return func(s string) string { return p + s }, nil
	case "Replace":
		return buildReplace(c, "normalizer")
	case "NFC":
		return norm.NFC.String, nil
	case "NFD":
		return norm.NFD.String, nil
	case "NFKC":
		return norm.NFKC.String, nil
	case "NFKD":
		return norm.NFKD.String, nil
	case "Lowercase":
		return strings.ToLower, nil
	case "Strip":
		left, right := c.StripLeft, c.StripRight
		return func(s string) string {
			if left {
				s = strings.TrimLeftFunc(s, isSpace)
			}
			if right {
				s = strings.TrimRightFunc(s, isSpace)
			}
			return s
		}, nil
	}
	return nil, fmt.Errorf("normalizer type %q is not supported (supported: Sequence, Prepend, Replace, NFC, NFD, NFKC, NFKD, Lowercase, Strip)", c.Type)
}

// buildReplace builds a Replace normalizer or decoder step.
func buildReplace(c *componentJSON, what string) (normalizer, error) {
	content := c.Content
	switch {
	case c.Pattern != nil && c.Pattern.String != nil:
		old := *c.Pattern.String
		if old == "" {
			return func(s string) string { return s }, nil
		}
		return func(s string) string { return strings.ReplaceAll(s, old, content) }, nil
	case c.Pattern != nil && c.Pattern.Regex != nil:
		re, err := compileJSRegex(*c.Pattern.Regex)
		if err != nil {
			return nil, fmt.Errorf("%s Replace: regex %q is not supported by Go's regexp: %v", what, *c.Pattern.Regex, err)
		}
		return func(s string) string { return re.ReplaceAllLiteralString(s, content) }, nil
	}
	return nil, fmt.Errorf("%s Replace has no \"pattern\" with \"String\" or \"Regex\"", what)
}

// buildPreTokenizer builds a pre-tokenizer from its tokenizer.json object (nil for null).
func buildPreTokenizer(raw json.RawMessage) (preTokenizer, error) {
	if isNull(raw) {
		return nil, nil
	}
	c, err := parseComponent(raw, "pre_tokenizer")
	if err != nil {
		return nil, err
	}
	// each applies a per-word function to every word.
	each := func(f func(w string, section int) []string) preTokenizer {
		return func(words []string, section int) []string {
			var out []string
			for _, w := range words {
				out = append(out, f(w, section)...)
			}
			return out
		}
	}
	switch c.Type {
	case "Sequence":
		var steps []preTokenizer
		for _, r := range c.Pretokenizers {
			p, err := buildPreTokenizer(r)
			if err != nil {
				return nil, err
			}
			if p != nil {
				steps = append(steps, p)
			}
		}
		return func(words []string, section int) []string {
			for _, p := range steps {
				words = p(words, section)
			}
			return words
		}, nil
	case "Split":
		sp, err := newSplitter(c.Pattern)
		if err != nil {
			return nil, fmt.Errorf("pre_tokenizer Split: %w", err)
		}
		b, err := parseBehavior(c.Behavior, c.Invert)
		if err != nil {
			return nil, fmt.Errorf("pre_tokenizer Split: %w", err)
		}
		return each(func(w string, _ int) []string { return b.apply(sp.cut(w)) }), nil
	case "ByteLevel":
		addPrefix := c.AddPrefixSpace != nil && *c.AddPrefixSpace
		useRegex := c.UseRegex == nil || *c.UseRegex
		sp := matcherSplitter{matchGPT2}
		return each(func(w string, _ int) []string {
			if addPrefix && !strings.HasPrefix(w, " ") {
				w = " " + w
			}
			parts := []string{w}
			if useRegex {
				parts = behaviorMatchesOnly.apply(sp.cut(w))
			}
			for k, p := range parts {
				parts[k] = byteLevelEncode(p)
			}
			return parts
		}), nil
	case "Metaspace":
		repl := c.Replacement
		if repl == "" {
			repl = "▁"
		}
		prepend := metaspacePrepends(c)
		split := c.Split == nil || *c.Split
		scheme := "always"
		if c.PrependScheme != nil {
			scheme = *c.PrependScheme
		}
		return each(func(w string, section int) []string {
			w = strings.ReplaceAll(w, " ", repl)
			if prepend && !strings.HasPrefix(w, repl) && (scheme == "always" || (scheme == "first" && section == 0)) {
				w = repl + w
			}
			if !split {
				return []string{w}
			}
			return behaviorMergedWithNext.apply(matcherSplitter{literalMatcher(repl)}.cut(w))
		}), nil
	case "Whitespace", "WhitespaceSplit", "Digits":
		pat := map[string]string{"Whitespace": `\w+|[^\w\s]+`, "WhitespaceSplit": `\S+`, "Digits": `[^\d]+|\d+`}[c.Type]
		if c.Type == "Digits" && c.IndividualDigits {
			pat = `[^\d]+|\d`
		}
		re, err := compileJSRegex(pat)
		if err != nil {
			return nil, fmt.Errorf("pre_tokenizer %s: %v", c.Type, err)
		}
		sp := regexSplitter{re}
		return each(func(w string, _ int) []string { return behaviorMatchesOnly.apply(sp.cut(w)) }), nil
	}
	return nil, fmt.Errorf("pre_tokenizer type %q is not supported (supported: Sequence, Split, ByteLevel, Metaspace, Whitespace, WhitespaceSplit, Digits)", c.Type)
}

// metaspacePrepends reports whether a Metaspace pre-tokenizer or decoder adds (strips) the
// leading replacement: the old add_prefix_space flag, or a prepend_scheme other than "never".
func metaspacePrepends(c *componentJSON) bool {
	if c.AddPrefixSpace != nil && !*c.AddPrefixSpace {
		return false
	}
	if c.PrependScheme != nil {
		return *c.PrependScheme != "never"
	}
	return true
}

// buildPostProcessor builds a post-processor (nil for null). lookup resolves a token
// string to its id.
func buildPostProcessor(raw json.RawMessage, lookup func(string) (int, bool)) (postProcessor, error) {
	if isNull(raw) {
		return nil, nil
	}
	c, err := parseComponent(raw, "post_processor")
	if err != nil {
		return nil, err
	}
	switch c.Type {
	case "Sequence":
		var steps []postProcessor
		for _, r := range c.Processors {
			p, err := buildPostProcessor(r, lookup)
			if err != nil {
				return nil, err
			}
			if p != nil {
				steps = append(steps, p)
			}
		}
		return func(ids []int) []int {
			for _, p := range steps {
				ids = p(ids)
			}
			return ids
		}, nil
	case "ByteLevel":
		return nil, nil // only adjusts offsets
	case "TemplateProcessing":
		type item struct {
			seq bool
			ids []int
		}
		var items []item
		for k, it := range c.Single {
			switch {
			case it.Sequence != nil:
				if it.Sequence.ID != "A" {
					return nil, fmt.Errorf("post_processor TemplateProcessing: single item %d refers to sequence %q; only A exists for a single text", k, it.Sequence.ID)
				}
				items = append(items, item{seq: true})
			case it.SpecialToken != nil:
				name := it.SpecialToken.ID
				if st, ok := c.SpecialTokens[name]; ok && len(st.IDs) > 0 {
					items = append(items, item{ids: st.IDs})
				} else if id, ok := lookup(name); ok {
					items = append(items, item{ids: []int{id}})
				} else {
					return nil, fmt.Errorf("post_processor TemplateProcessing: special token %q is neither in \"special_tokens\" nor in the vocabulary", name)
				}
			default:
				return nil, fmt.Errorf("post_processor TemplateProcessing: single item %d is neither SpecialToken nor Sequence", k)
			}
		}
		return func(ids []int) []int {
			var out []int
			for _, it := range items {
				if it.seq {
					out = append(out, ids...)
				} else {
					out = append(out, it.ids...)
				}
			}
			return out
		}, nil
	case "BertProcessing", "RobertaProcessing":
		cls, err := tokenPairID(c.Cls, "cls", lookup)
		if err != nil {
			return nil, fmt.Errorf("post_processor %s: %w", c.Type, err)
		}
		sep, err := tokenPairID(c.Sep, "sep", lookup)
		if err != nil {
			return nil, fmt.Errorf("post_processor %s: %w", c.Type, err)
		}
		return func(ids []int) []int {
			out := append([]int{cls}, ids...)
			return append(out, sep)
		}, nil
	}
	return nil, fmt.Errorf("post_processor type %q is not supported (supported: TemplateProcessing, ByteLevel, BertProcessing, RobertaProcessing, Sequence)", c.Type)
}

// tokenPairID reads a ["token", id] pair of BertProcessing/RobertaProcessing.
func tokenPairID(pair []json.RawMessage, name string, lookup func(string) (int, bool)) (int, error) {
	if len(pair) == 2 {
		var id int
		if json.Unmarshal(pair[1], &id) == nil {
			return id, nil
		}
	}
	if len(pair) >= 1 {
		var tok string
		if json.Unmarshal(pair[0], &tok) == nil {
			if id, ok := lookup(tok); ok {
				return id, nil
			}
		}
	}
	return 0, fmt.Errorf("%q must be [\"token\", id]", name)
}

// buildDecoder builds a decoder chain (nil for null). isAdded reports whether a token
// string is an added token, which ByteLevel passes through unchanged.
func buildDecoder(raw json.RawMessage, isAdded func(string) bool) (decoder, error) {
	if isNull(raw) {
		return nil, nil
	}
	c, err := parseComponent(raw, "decoder")
	if err != nil {
		return nil, err
	}
	mapEach := func(f func(k int, t string) string) decoder {
		return func(toks []string) []string {
			out := make([]string, len(toks))
			for k, t := range toks {
				out[k] = f(k, t)
			}
			return out
		}
	}
	switch c.Type {
	case "Sequence":
		var steps []decoder
		for _, r := range c.Decoders {
			d, err := buildDecoder(r, isAdded)
			if err != nil {
				return nil, err
			}
			if d != nil {
				steps = append(steps, d)
			}
		}
		return func(toks []string) []string {
			for _, d := range steps {
				toks = d(toks)
			}
			return toks
		}, nil
	case "Replace":
		f, err := buildReplace(c, "decoder")
		if err != nil {
			return nil, err
		}
		return mapEach(func(_ int, t string) string { return f(t) }), nil
	case "ByteFallback":
		return decodeByteFallback, nil
	case "Fuse":
		return func(toks []string) []string { return []string{strings.Join(toks, "")} }, nil
	case "Strip":
		content := []rune(c.Content)
		if len(content) != 1 {
			return nil, fmt.Errorf("decoder Strip: \"content\" must be one character, got %q", c.Content)
		}
		ch := string(content[0])
		start, stop := c.Start, c.Stop
		return mapEach(func(_ int, t string) string {
			for k := 0; k < start && strings.HasPrefix(t, ch); k++ {
				t = t[len(ch):]
			}
			for k := 0; k < stop && strings.HasSuffix(t, ch); k++ {
				t = t[:len(t)-len(ch)]
			}
			return t
		}), nil
	case "ByteLevel":
		return func(toks []string) []string {
			var out []string
			var pending []byte
			for _, t := range toks {
				if isAdded(t) {
					if len(pending) > 0 {
						out = append(out, decodeUTF8Lossy(pending))
						pending = pending[:0]
					}
					out = append(out, t)
					continue
				}
				pending = append(pending, byteLevelDecode(t)...)
			}
			if len(pending) > 0 {
				out = append(out, decodeUTF8Lossy(pending))
			}
			return out
		}, nil
	case "Metaspace":
		repl := c.Replacement
		if repl == "" {
			repl = "▁"
		}
		strip := metaspacePrepends(c)
		return mapEach(func(k int, t string) string {
			t = strings.ReplaceAll(t, repl, " ")
			if strip && k == 0 {
				t = strings.TrimPrefix(t, " ")
			}
			return t
		}), nil
	}
	return nil, fmt.Errorf("decoder type %q is not supported (supported: Sequence, Replace, ByteFallback, Fuse, Strip, ByteLevel, Metaspace)", c.Type)
}

// decodeByteFallback turns runs of <0xNN> tokens into the text of their bytes.
func decodeByteFallback(toks []string) []string {
	var out []string
	var pending []byte
	for _, t := range toks {
		if b, ok := parseByteToken(t); ok {
			pending = append(pending, b)
			continue
		}
		if len(pending) > 0 {
			out = append(out, decodeUTF8Lossy(pending))
			pending = pending[:0]
		}
		out = append(out, t)
	}
	if len(pending) > 0 {
		out = append(out, decodeUTF8Lossy(pending))
	}
	return out
}

// parseByteToken parses a "<0xNN>" byte token.
func parseByteToken(t string) (byte, bool) {
	if len(t) != 6 || !strings.HasPrefix(t, "<0x") || t[5] != '>' {
		return 0, false
	}
	v, err := strconv.ParseUint(t[3:5], 16, 8)
	if err != nil {
		return 0, false
	}
	return byte(v), true
}
