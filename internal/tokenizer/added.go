package tokenizer

import (
	"strings"
	"unicode"
	"unicode/utf8"
)

// addedToken is an entry of tokenizer.json "added_tokens": a string that is cut out of the
// raw text before anything else and becomes its id directly.
type addedToken struct {
	id         int
	content    string
	special    bool // skipped by DecodeSkipSpecial
	lstrip     bool // whitespace before it is removed
	rstrip     bool // whitespace after it is removed
	singleWord bool // matches only when not inside a word
}

// section is a part of the text: an added token (tok >= 0, an index into the added tokens)
// or plain text (tok == -1).
type section struct {
	s   string
	tok int
}

// addedSplitter finds added tokens in a text with a byte trie: at each position the longest
// added token starting there is cut out (as transformers.js does), scanning left to right.
type addedSplitter struct {
	tokens []addedToken
	nodes  []trieNode // nodes[0] is the root
	first  [256]bool  // bytes that start some added token
}

// trieNode is a node of the byte trie.
type trieNode struct {
	next map[byte]int32
	tok  int32 // index of the added token ending here, or -1
}

// newAddedSplitter builds the trie of the added tokens (empty contents are ignored).
func newAddedSplitter(tokens []addedToken) *addedSplitter {
	a := &addedSplitter{tokens: tokens, nodes: []trieNode{{tok: -1}}}
	for k, t := range tokens {
		if t.content == "" {
			continue
		}
		a.first[t.content[0]] = true
		n := int32(0)
		for i := 0; i < len(t.content); i++ {
			c := t.content[i]
			child, ok := a.nodes[n].next[c]
			if !ok {
				if a.nodes[n].next == nil {
					a.nodes[n].next = make(map[byte]int32)
				}
				child = int32(len(a.nodes))
				a.nodes[n].next[c] = child
				a.nodes = append(a.nodes, trieNode{tok: -1})
			}
			n = child
		}
		a.nodes[n].tok = int32(k)
	}
	return a
}

// isWordRune reports a rune that makes an adjacent single_word token not match.
func isWordRune(r rune) bool { return r == '_' || unicode.IsLetter(r) || unicode.IsNumber(r) }

// match returns the index of the longest acceptable added token starting at byte i of s,
// or -1.
func (a *addedSplitter) match(s string, i int) int {
	best := -1
	n := int32(0)
	for j := i; j < len(s); j++ {
		child, ok := a.nodes[n].next[s[j]]
		if !ok {
			break
		}
		n = child
		if k := a.nodes[n].tok; k >= 0 {
			if a.tokens[k].singleWord {
				before, _ := utf8.DecodeLastRuneInString(s[:i])
				after, _ := utf8.DecodeRuneInString(s[j+1:])
				if (i > 0 && isWordRune(before)) || (j+1 < len(s) && isWordRune(after)) {
					continue
				}
			}
			best = int(k)
		}
	}
	return best
}

// split cuts text into sections and applies lstrip/rstrip to the text next to the tokens.
func (a *addedSplitter) split(text string) []section {
	if len(a.tokens) == 0 {
		return []section{{text, -1}}
	}
	var out []section
	gap := 0
	for i := 0; i < len(text); {
		if a.first[text[i]] {
			if k := a.match(text, i); k >= 0 {
				if gap < i {
					out = append(out, section{text[gap:i], -1})
				}
				out = append(out, section{a.tokens[k].content, k})
				i += len(a.tokens[k].content)
				gap = i
				continue
			}
		}
		i++
	}
	if gap < len(text) {
		out = append(out, section{text[gap:], -1})
	}
	for k, sec := range out {
		if sec.tok < 0 {
			continue
		}
		t := a.tokens[sec.tok]
		if t.lstrip && k > 0 && out[k-1].tok < 0 {
			out[k-1].s = strings.TrimRightFunc(out[k-1].s, isSpace)
		}
		if t.rstrip && k+1 < len(out) && out[k+1].tok < 0 {
			out[k+1].s = strings.TrimLeftFunc(out[k+1].s, isSpace)
		}
	}
	return out
}
