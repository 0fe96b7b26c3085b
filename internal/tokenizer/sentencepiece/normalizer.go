package sentencepiece

import (
	"bytes"
	"encoding/binary"
	"errors"
	"sort"
	"strings"
	"unicode/utf8"
)

// spaceSymbol is U+2581 LOWER ONE EIGHTH BLOCK, sentencepiece's visible
// stand-in for a space.
const spaceSymbol = "\u2581"

// maxTrieResults is how many prefix matches sentencepiece's normalizer keeps
// from one charsmap look-up (Normalizer::kMaxTrieResultsSize).
const maxTrieResults = 32

// oneCharLen is the length of the UTF-8 sequence that lead byte b starts,
// judged by its high bits alone, as sentencepiece's string_util::OneCharLen.
func oneCharLen(b byte) int {
	switch b >> 4 {
	case 0xc, 0xd:
		return 2
	case 0xe:
		return 3
	case 0xf:
		return 4
	}
	return 1
}

// prefixMatcher finds the longest user-defined symbol at the start of a
// string (sentencepiece's normalizer::PrefixMatcher).
type prefixMatcher struct {
	symbols map[string]bool
	lengths []int // distinct symbol lengths in bytes, longest first
}

func newPrefixMatcher(symbols []string) *prefixMatcher {
	m := &prefixMatcher{symbols: make(map[string]bool, len(symbols))}
	seen := map[int]bool{}
	for _, s := range symbols {
		m.symbols[s] = true
		if !seen[len(s)] {
			seen[len(s)] = true
			m.lengths = append(m.lengths, len(s))
		}
	}
	sort.Sort(sort.Reverse(sort.IntSlice(m.lengths)))
	return m
}

// match returns the byte length of the longest user-defined symbol that
// prefixes s and true, or, when none does, the length of the first character
// (by its lead byte, capped at len(s)) and false. s must not be empty.
func (m *prefixMatcher) match(s string) (int, bool) {
	if m != nil {
		for _, n := range m.lengths {
			if n <= len(s) && m.symbols[s[:n]] {
				return n, true
			}
		}
	}
	return min(oneCharLen(s[0]), len(s)), false
}

// charsmap is a compiled normalization rule (NormalizerSpec.precompiled_charsmap):
// a darts-clone double-array trie over input byte strings whose values are
// offsets of NUL-terminated replacement strings in a second blob.
type charsmap struct {
	units      []uint32
	normalized []byte
}

// parseCharsmap splits a precompiled charsmap blob: a little-endian uint32
// trie size, the trie's units, then the replacement strings.
func parseCharsmap(blob []byte) (*charsmap, error) {
	if len(blob) <= 4 {
		return nil, errors.New("precompiled_charsmap is too short to hold a trie")
	}
	size := binary.LittleEndian.Uint32(blob)
	rest := blob[4:]
	if uint64(size) >= uint64(len(blob)) || uint64(size) > uint64(len(rest)) {
		return nil, errors.New("precompiled_charsmap: trie size exceeds the blob")
	}
	cm := &charsmap{units: make([]uint32, size/4), normalized: rest[size:]}
	for i := range cm.units {
		cm.units[i] = binary.LittleEndian.Uint32(rest[4*i:])
	}
	if len(cm.units) == 0 {
		return nil, errors.New("precompiled_charsmap: empty trie")
	}
	return cm, nil
}

// Fields of a darts-clone unit.
func unitHasLeaf(u uint32) bool  { return (u>>8)&1 == 1 }
func unitValue(u uint32) uint32  { return u & (1<<31 - 1) }
func unitLabel(u uint32) uint32  { return u & (1<<31 | 0xff) }
func unitOffset(u uint32) uint32 { return (u >> 10) << ((u & (1 << 9)) >> 6) }

// longestPrefix returns the replacement for the longest key that prefixes s
// (among the first maxTrieResults matches, as sentencepiece) and the key's
// length, or length 0 when no key matches.
func (cm *charsmap) longestPrefix(s string) (string, int) {
	units := cm.units
	pos := uint32(0)
	pos ^= unitOffset(units[0])
	bestLen, bestVal, found := 0, uint32(0), 0
	for i := 0; i < len(s); i++ {
		c := uint32(s[i])
		pos ^= c
		if int(pos) >= len(units) {
			break
		}
		u := units[pos]
		if unitLabel(u) != c {
			break
		}
		pos ^= unitOffset(u)
		if unitHasLeaf(u) {
			if int(pos) >= len(units) {
				break
			}
			if found < maxTrieResults && i+1 > bestLen {
				bestLen, bestVal = i+1, unitValue(units[pos])
			}
			found++
		}
	}
	if bestLen == 0 {
		return "", 0
	}
	if int(bestVal) >= len(cm.normalized) {
		return "", bestLen
	}
	out := cm.normalized[bestVal:]
	if end := bytes.IndexByte(out, 0); end >= 0 {
		out = out[:end]
	}
	return string(out), bestLen
}

// normalizer turns raw text into the string the model segments, as
// sentencepiece's normalizer::Normalizer does.
type normalizer struct {
	spec        normalizerSpec
	asSuffix    bool           // TrainerSpec.treat_whitespace_as_suffix
	charsmap    *charsmap      // nil for the identity rule
	userDefined *prefixMatcher // nil if none; these symbols pass through unchanged
}

func newNormalizer(spec normalizerSpec, asSuffix bool, ud *prefixMatcher) (*normalizer, error) {
	n := &normalizer{spec: spec, asSuffix: asSuffix}
	if ud != nil && len(ud.symbols) > 0 {
		n.userDefined = ud
	}
	if len(spec.precompiledCharsmap) > 0 {
		cm, err := parseCharsmap(spec.precompiledCharsmap)
		if err != nil {
			return nil, err
		}
		n.charsmap = cm
	}
	return n, nil
}

// prefix normalizes the start of s: it returns the normalized text of the
// first unit and how many input bytes that unit consumed (> 0).
// Invalid UTF-8 becomes U+FFFD one byte at a time.
func (n *normalizer) prefix(s string) (string, int) {
	if n.userDefined != nil {
		if l, ok := n.userDefined.match(s); ok {
			return s[:l], l
		}
	}
	if n.charsmap != nil {
		if out, l := n.charsmap.longestPrefix(s); l > 0 {
			return out, l
		}
	}
	r, l := utf8.DecodeRuneInString(s)
	if r == utf8.RuneError && l == 1 {
		return "\uFFFD", 1
	}
	return s[:l], l
}

// normalize returns the normalized form of text: the charsmap applied,
// extra spaces removed (if so configured), the dummy prefix added and
// spaces escaped as "▁".
func (n *normalizer) normalize(text string) string {
	if text == "" {
		return ""
	}
	spec := &n.spec
	if spec.removeExtraWhitespaces {
		for text != "" {
			p, l := n.prefix(text)
			if p != " " {
				break
			}
			text = text[l:]
		}
	}
	if text == "" {
		return ""
	}
	space := " "
	if spec.escapeWhitespaces {
		space = spaceSymbol
	}
	var b strings.Builder
	b.Grow(len(text) * 3)
	if !n.asSuffix && spec.addDummyPrefix {
		b.WriteString(space)
	}
	isPrevSpace := spec.removeExtraWhitespaces
	for text != "" {
		p, l := n.prefix(text)
		if isPrevSpace {
			p = strings.TrimLeft(p, " ")
		}
		if p != "" {
			if spec.escapeWhitespaces {
				b.WriteString(strings.ReplaceAll(p, " ", spaceSymbol))
			} else {
				b.WriteString(p)
			}
			isPrevSpace = p[len(p)-1] == ' '
		}
		text = text[l:]
		if !spec.removeExtraWhitespaces {
			isPrevSpace = false
		}
	}
	out := b.String()
	if spec.removeExtraWhitespaces {
		for strings.HasSuffix(out, space) {
			out = out[:len(out)-len(space)]
		}
	}
	if n.asSuffix && spec.addDummyPrefix {
		out += space
	}
	return out
}
