package tokenizer

import (
	"fmt"
	"regexp"
	"strings"
	"unicode"
	"unicode/utf8"
)

// A matcher finds the pattern match that starts at byte offset i of s, the way a
// backtracking regex engine (JavaScript's, which made the references) would: it returns the
// end of the match, or -1 when no match starts at i. Matches are never empty.
type matcher func(s string, i int) int

// The split patterns with exact hand-written matchers. They use the look-ahead \s+(?!\S),
// which Go's regexp cannot express.
const (
	// gpt2Pattern is GPT-2's pattern, also ByteLevel's default (use_regex: true).
	gpt2Pattern = `'s|'t|'re|'ve|'m|'ll|'d| ?\p{L}+| ?\p{N}+| ?[^\s\p{L}\p{N}]+|\s+(?!\S)|\s+`
	// llama3Pattern is Llama 3's (tiktoken cl100k-like) pattern.
	llama3Pattern = `(?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}{1,3}| ?[^\s\p{L}\p{N}]+[\r\n]*|\s*[\r\n]+|\s+(?!\S)|\s+`
	// qwen2Pattern is Qwen2's and Qwen3's: Llama 3's with single digits.
	qwen2Pattern = `(?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}| ?[^\s\p{L}\p{N}]+[\r\n]*|\s*[\r\n]+|\s+(?!\S)|\s+`
)

// knownMatchers maps a pattern string to its exact matcher.
var knownMatchers = map[string]matcher{
	gpt2Pattern:   matchGPT2,
	llama3Pattern: func(s string, i int) int { return matchLlama3(s, i, 3) },
	qwen2Pattern:  func(s string, i int) int { return matchLlama3(s, i, 1) },
}

// isSpace reports whether r is in JavaScript's \s class (WhiteSpace and LineTerminator):
// tab, LF, VT, FF, CR, space, U+00A0, U+1680, U+2000-U+200A, U+2028, U+2029, U+202F,
// U+205F, U+3000 and U+FEFF. Unlike unicode.IsSpace it excludes U+0085 and includes U+FEFF.
func isSpace(r rune) bool {
	switch {
	case r < 0x80:
		return r == ' ' || (r >= '\t' && r <= '\r')
	case r == 0xA0 || r == 0x1680 || r == 0x2028 || r == 0x2029 || r == 0x202F ||
		r == 0x205F || r == 0x3000 || r == 0xFEFF:
		return true
	case r >= 0x2000 && r <= 0x200A:
		return true
	}
	return false
}

// isLetter reports \p{L}.
func isLetter(r rune) bool {
	if r < 0x80 {
		return (r|0x20) >= 'a' && (r|0x20) <= 'z'
	}
	return unicode.IsLetter(r)
}

// isNumber reports \p{N}.
func isNumber(r rune) bool {
	if r < 0x80 {
		return r >= '0' && r <= '9'
	}
	return unicode.IsNumber(r)
}

// isOther reports [^\s\p{L}\p{N}].
func isOther(r rune) bool { return !isSpace(r) && !isLetter(r) && !isNumber(r) }

// runeAt decodes the rune at byte offset i (utf8.RuneError, 0 at the end).
func runeAt(s string, i int) (rune, int) {
	if i >= len(s) {
		return utf8.RuneError, 0
	}
	if c := s[i]; c < utf8.RuneSelf {
		return rune(c), 1
	}
	return utf8.DecodeRuneInString(s[i:])
}

// spanWhile returns the end of the run of runes satisfying f that starts at i.
func spanWhile(s string, i int, f func(rune) bool) int {
	for i < len(s) {
		r, n := runeAt(s, i)
		if !f(r) {
			break
		}
		i += n
	}
	return i
}

// matchContraction matches 's 't 're 've 'm 'll 'd at i; fold allows upper case ASCII
// letters too (JavaScript's rewrite of (?i:...) is [sS] etc., so no Unicode folding).
func matchContraction(s string, i int, fold bool) int {
	if i+1 >= len(s) || s[i] != '\'' {
		return -1
	}
	lower := func(c byte) byte {
		if fold && c >= 'A' && c <= 'Z' {
			return c + 'a' - 'A'
		}
		return c
	}
	switch lower(s[i+1]) {
	case 's', 't', 'm', 'd':
		return i + 2
	case 'r', 'v':
		if i+2 < len(s) && lower(s[i+2]) == 'e' {
			return i + 3
		}
	case 'l':
		if i+2 < len(s) && lower(s[i+2]) == 'l' {
			return i + 3
		}
	}
	return -1
}

// matchTrailingSpace matches \s+(?!\S)|\s+ at i (i holds whitespace): the whole run when
// it ends the text or is a single rune, else the run without its last rune (which then
// joins the next word).
func matchTrailingSpace(s string, i int) int {
	end := spanWhile(s, i, isSpace)
	if end == len(s) {
		return end
	}
	_, last := utf8.DecodeLastRuneInString(s[:end])
	if end-last > i {
		return end - last
	}
	return end
}

// matchGPT2 implements gpt2Pattern.
func matchGPT2(s string, i int) int {
	if e := matchContraction(s, i, false); e >= 0 {
		return e
	}
	r0, _ := runeAt(s, i)
	j := i
	if r0 == ' ' {
		j = i + 1
	}
	if r, _ := runeAt(s, j); j < len(s) {
		switch {
		case isLetter(r):
			return spanWhile(s, j, isLetter)
		case isNumber(r):
			return spanWhile(s, j, isNumber)
		case isOther(r):
			return spanWhile(s, j, isOther)
		}
	}
	if isSpace(r0) {
		return matchTrailingSpace(s, i)
	}
	return -1
}

// matchLlama3 implements llama3Pattern (maxDigits 3) and qwen2Pattern (maxDigits 1).
func matchLlama3(s string, i int, maxDigits int) int {
	if e := matchContraction(s, i, true); e >= 0 {
		return e
	}
	r0, n0 := runeAt(s, i)
	// [^\r\n\p{L}\p{N}]?\p{L}+
	if isLetter(r0) {
		return spanWhile(s, i, isLetter)
	}
	if r0 != '\r' && r0 != '\n' && !isNumber(r0) {
		if r1, _ := runeAt(s, i+n0); i+n0 < len(s) && isLetter(r1) {
			return spanWhile(s, i+n0, isLetter)
		}
	}
	// \p{N}{1,maxDigits}
	if isNumber(r0) {
		j := i
		for k := 0; k < maxDigits && j < len(s); k++ {
			r, n := runeAt(s, j)
			if !isNumber(r) {
				break
			}
			j += n
		}
		return j
	}
	// ?[^\s\p{L}\p{N}]+[\r\n]*
	j := i
	if r0 == ' ' {
		j = i + 1
	}
	if r, _ := runeAt(s, j); j < len(s) && isOther(r) {
		j = spanWhile(s, j, isOther)
		return spanWhile(s, j, func(r rune) bool { return r == '\r' || r == '\n' })
	}
	if !isSpace(r0) {
		return -1
	}
	// \s*[\r\n]+ : the whitespace run up to and including its last \r or \n.
	end := spanWhile(s, i, isSpace)
	if k := strings.LastIndexAny(s[i:end], "\r\n"); k >= 0 {
		return i + k + 1
	}
	// \s+(?!\S)|\s+
	return matchTrailingSpace(s, i)
}

// jsSpaceClass is JavaScript's \s as the body of a Go character class.
const jsSpaceClass = `\t\n\v\f\r \x{a0}\x{1680}\x{2000}-\x{200a}\x{2028}\x{2029}\x{202f}\x{205f}\x{3000}\x{feff}`

// A splitter cuts a text into matches of a pattern and the gaps between them.
type splitter interface {
	cut(s string) []piece
}

// piece is a part of a text cut by a splitter: a match or the gap between two matches.
type piece struct {
	s       string
	isMatch bool
}

// matcherSplitter scans left to right like a global regex search: at each position the
// match starting there is taken, else the position advances one rune.
type matcherSplitter struct{ m matcher }

func (ms matcherSplitter) cut(s string) []piece {
	var out []piece
	gap := 0
	for i := 0; i < len(s); {
		if e := ms.m(s, i); e > i {
			if gap < i {
				out = append(out, piece{s[gap:i], false})
			}
			out = append(out, piece{s[i:e], true})
			i, gap = e, e
			continue
		}
		_, n := runeAt(s, i)
		i += n
	}
	if gap < len(s) {
		out = append(out, piece{s[gap:], false})
	}
	return out
}

// regexSplitter uses Go's regexp (leftmost-first, like JavaScript's for patterns without
// look-around).
type regexSplitter struct{ re *regexp.Regexp }

func (rs regexSplitter) cut(s string) []piece {
	var out []piece
	gap := 0
	for _, loc := range rs.re.FindAllStringIndex(s, -1) {
		if loc[0] == loc[1] {
			continue
		}
		if gap < loc[0] {
			out = append(out, piece{s[gap:loc[0]], false})
		}
		out = append(out, piece{s[loc[0]:loc[1]], true})
		gap = loc[1]
	}
	if gap < len(s) {
		out = append(out, piece{s[gap:], false})
	}
	return out
}

// compileJSRegex compiles a pattern the known matchers do not cover with Go's regexp, after
// the rewrites transformers.js applies (\# \& \~ unescaped, (?i:'s|...) spelt out) and with
// \s and \S given JavaScript's meaning. Go's regexp has no look-around or back-references:
// such patterns fail to compile.
func compileJSRegex(pattern string) (*regexp.Regexp, error) {
	p := strings.NewReplacer(`\#`, `#`, `\&`, `&`, `\~`, `~`).Replace(pattern)
	p = strings.ReplaceAll(p, `(?i:'s|'t|'re|'ve|'m|'ll|'d)`, `(?:'([sS]|[tT]|[rR][eE]|[vV][eE]|[mM]|[lL][lL]|[dD]))`)
	var b strings.Builder
	inClass := false
	for k := 0; k < len(p); k++ {
		c := p[k]
		if c == '\\' && k+1 < len(p) {
			next := p[k+1]
			switch {
			case next == 's' && inClass:
				b.WriteString(jsSpaceClass)
			case next == 's':
				b.WriteString("[" + jsSpaceClass + "]")
			case next == 'S' && inClass:
				return nil, fmt.Errorf("\\S inside a character class is not supported")
			case next == 'S':
				b.WriteString("[^" + jsSpaceClass + "]")
			default:
				b.WriteByte(c)
				b.WriteByte(next)
			}
			k++
			continue
		}
		switch {
		case c == '[' && !inClass:
			inClass = true
			b.WriteByte(c)
			// A ']' right after '[' or '[^' is a literal.
			if k+1 < len(p) && p[k+1] == '^' {
				b.WriteByte('^')
				k++
			}
			if k+1 < len(p) && p[k+1] == ']' {
				b.WriteString(`\]`)
				k++
			}
			continue
		case c == ']' && inClass:
			inClass = false
		}
		b.WriteByte(c)
	}
	return regexp.Compile(b.String())
}

// literalMatcher matches the literal string lit.
func literalMatcher(lit string) matcher {
	return func(s string, i int) int {
		if lit != "" && strings.HasPrefix(s[i:], lit) {
			return i + len(lit)
		}
		return -1
	}
}

// newSplitter returns the splitter for a tokenizer.json pattern ({"Regex": ...} or
// {"String": ...}).
func newSplitter(p *patternJSON) (splitter, error) {
	switch {
	case p == nil:
		return nil, fmt.Errorf("missing \"pattern\"")
	case p.String != nil:
		return matcherSplitter{literalMatcher(*p.String)}, nil
	case p.Regex != nil:
		if m, ok := knownMatchers[*p.Regex]; ok {
			return matcherSplitter{m}, nil
		}
		re, err := compileJSRegex(*p.Regex)
		if err != nil {
			return nil, fmt.Errorf("regex %q is not supported: Go's regexp cannot express it (%v); "+
				"exact matchers exist only for the GPT-2, Llama 3 and Qwen2/3 split patterns", *p.Regex, err)
		}
		return regexSplitter{re}, nil
	}
	return nil, fmt.Errorf("pattern has neither \"Regex\" nor \"String\"")
}

// splitBehavior is what a Split pre-tokenizer does with the matches of its pattern.
type splitBehavior int

const (
	behaviorIsolated           splitBehavior = iota // matches and gaps are separate words
	behaviorRemoved                                 // only the gaps are kept
	behaviorMergedWithPrevious                      // a match joins the gap before it
	behaviorMergedWithNext                          // a match joins the gap after it
	behaviorMatchesOnly                             // invert: only the matches are kept
)

// parseBehavior reads tokenizer.json's "behavior" and "invert" of a Split pre-tokenizer.
// Like transformers.js, an inverted pattern keeps only its matches.
func parseBehavior(name string, invert bool) (splitBehavior, error) {
	if invert {
		return behaviorMatchesOnly, nil
	}
	switch strings.ToLower(name) {
	case "isolated", "":
		return behaviorIsolated, nil
	case "removed":
		return behaviorRemoved, nil
	case "mergedwithprevious":
		return behaviorMergedWithPrevious, nil
	case "mergedwithnext":
		return behaviorMergedWithNext, nil
	}
	return 0, fmt.Errorf("split behavior %q is not supported (use Isolated, Removed, MergedWithPrevious or MergedWithNext)", name)
}

// apply turns the pieces of a text into words.
func (b splitBehavior) apply(pieces []piece) []string {
	out := make([]string, 0, len(pieces))
	switch b {
	case behaviorIsolated:
		for _, p := range pieces {
			out = append(out, p.s)
		}
	case behaviorRemoved, behaviorMatchesOnly:
		keep := b == behaviorMatchesOnly
		for _, p := range pieces {
			if p.isMatch == keep {
				out = append(out, p.s)
			}
		}
	case behaviorMergedWithPrevious:
		prevMatch := false
		for _, p := range pieces {
			if p.isMatch && !prevMatch && len(out) > 0 {
				out[len(out)-1] += p.s
			} else {
				out = append(out, p.s)
			}
			prevMatch = p.isMatch
		}
	case behaviorMergedWithNext:
		nextMatch := false
		for k := len(pieces) - 1; k >= 0; k-- {
			p := pieces[k]
			if p.isMatch && !nextMatch && len(out) > 0 {
				out[len(out)-1] = p.s + out[len(out)-1]
			} else {
				out = append(out, p.s)
			}
			nextMatch = p.isMatch
		}
		for a, z := 0, len(out)-1; a < z; a, z = a+1, z-1 {
			out[a], out[z] = out[z], out[a]
		}
	}
	return out
}
