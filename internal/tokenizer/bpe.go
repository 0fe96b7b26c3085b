package tokenizer

import (
	"fmt"
	"sync"
	"unicode/utf8"
)

// bpe is a byte-pair-encoding model. Every string that can occur as a symbol while merging
// has a symbol number: a token's symbol is its id, and the few strings that merges mention
// but the vocabulary lacks get numbers from nTokens on. Merges are keyed by the pair of
// symbol numbers.
type bpe struct {
	nTokens int              // symbols below this are token ids
	extra   map[string]int32 // strings that are not tokens -> symbol (>= nTokens)
	merges  map[uint64]merge // left<<32 | right -> merge

	tokenToID    map[string]int // vocabulary plus added tokens (shared with the Tokenizer)
	unkID        int            // -1 if the model has no unknown token
	fuseUnk      bool           // merge runs of unknown tokens into one
	byteFallback bool           // encode unknown symbols as <0xNN> tokens
	byteIDs      [256]int       // id of <0xNN>, -1 if absent
	ignoreMerges bool           // a word that is a token is not merged
	suffix       string         // end_of_word_suffix, appended to a word's last symbol

	mu    sync.Mutex
	cache map[string][]int // word -> ids
}

// merge is one merge rule: its rank (position in the merges list, lower applies first)
// and the symbol it produces.
type merge struct {
	rank   int32
	result int32
}

const (
	maxCachedWordLen = 256    // longer words are not cached (whole texts, for Llama 2)
	maxCacheEntries  = 200000 // the cache is emptied when it grows past this
)

// newBPE builds the model from the vocabulary (tokenToID, which already includes the added
// tokens; nTokens is its largest id plus one) and the merges list.
func newBPE(tokenToID map[string]int, nTokens int, merges [][2]string) *bpe {
	m := &bpe{
		nTokens:   nTokens,
		extra:     make(map[string]int32),
		tokenToID: tokenToID,
		merges:    make(map[uint64]merge, len(merges)),
		unkID:     -1,
		cache:     make(map[string][]int),
	}
	for k, mg := range merges {
		a, b := m.intern(mg[0]), m.intern(mg[1])
		// A repeated merge keeps its last rank, as in transformers.js and tokenizers.
		m.merges[uint64(a)<<32|uint64(b)] = merge{rank: int32(k), result: m.intern(mg[0] + mg[1])}
	}
	for b := 0; b < 256; b++ {
		m.byteIDs[b] = -1
		if id, ok := tokenToID[fmt.Sprintf("<0x%02X>", b)]; ok {
			m.byteIDs[b] = id
		}
	}
	return m
}

// intern returns the symbol of s, numbering it if it is not a token.
func (m *bpe) intern(s string) int32 {
	if id, ok := m.tokenToID[s]; ok {
		return int32(id)
	}
	if sym, ok := m.extra[s]; ok {
		return sym
	}
	sym := int32(m.nTokens + len(m.extra))
	m.extra[s] = sym
	return sym
}

// lookup returns the symbol of s, or -1 if no token or merge has it.
func (m *bpe) lookup(s string) int32 {
	if id, ok := m.tokenToID[s]; ok {
		return int32(id)
	}
	if sym, ok := m.extra[s]; ok {
		return sym
	}
	return -1
}

// encodeWords encodes the words of one section and appends the ids to out.
func (m *bpe) encodeWords(out []int, words []string) []int {
	start := len(out)
	for _, w := range words {
		out = m.encodeWord(out, w)
	}
	if m.fuseUnk && m.unkID >= 0 {
		// Runs of unknown tokens become one (transformers.js fuses over the whole section).
		j := start
		for k := start; k < len(out); k++ {
			if out[k] == m.unkID && j > start && out[j-1] == m.unkID {
				continue
			}
			out[j] = out[k]
			j++
		}
		out = out[:j]
	}
	return out
}

// encodeWord appends the ids of one pre-tokenized word.
func (m *bpe) encodeWord(out []int, w string) []int {
	if w == "" {
		return out
	}
	if m.ignoreMerges {
		if id, ok := m.tokenToID[w]; ok {
			return append(out, id)
		}
	}
	cacheable := len(w) <= maxCachedWordLen
	if cacheable {
		m.mu.Lock()
		ids, ok := m.cache[w]
		m.mu.Unlock()
		if ok {
			return append(out, ids...)
		}
	}
	ids := m.bpeWord(w)
	if cacheable {
		m.mu.Lock()
		if len(m.cache) >= maxCacheEntries {
			m.cache = make(map[string][]int)
		}
		m.cache[w] = ids
		m.mu.Unlock()
	}
	return append(out, ids...)
}

// pairEntry is a candidate merge in the priority queue: the pair starting at symbol
// position left (whose neighbour was right), with the symbols both held when it was queued.
type pairEntry struct {
	rank        int32
	left, right int32
	symL, symR  int32
}

// less orders by rank, then by position: the leftmost of equal merges applies first.
func (a pairEntry) less(b pairEntry) bool {
	if a.rank != b.rank {
		return a.rank < b.rank
	}
	return a.left < b.left
}

// pairHeap is a binary min-heap of candidate merges.
type pairHeap []pairEntry

func (h *pairHeap) push(e pairEntry) {
	*h = append(*h, e)
	q := *h
	for i := len(q) - 1; i > 0; {
		p := (i - 1) / 2
		if !q[i].less(q[p]) {
			break
		}
		q[i], q[p] = q[p], q[i]
		i = p
	}
}

func (h *pairHeap) pop() pairEntry {
	q := *h
	top := q[0]
	n := len(q) - 1
	q[0] = q[n]
	q = q[:n]
	for i := 0; ; {
		l, r, small := 2*i+1, 2*i+2, i
		if l < n && q[l].less(q[small]) {
			small = l
		}
		if r < n && q[r].less(q[small]) {
			small = r
		}
		if small == i {
			break
		}
		q[i], q[small] = q[small], q[i]
		i = small
	}
	*h = q
	return top
}

// bpeWord merges the code points of w and returns the resulting ids.
func (m *bpe) bpeWord(w string) []int {
	// One node per code point; node k covers bytes [start[k], end[k]) of w once merged.
	n := utf8.RuneCountInString(w)
	start := make([]int32, n)
	end := make([]int32, n)
	sym := make([]int32, n)
	prev := make([]int32, n)
	next := make([]int32, n)
	alive := make([]bool, n)
	for i, k := 0, 0; i < len(w); k++ {
		_, size := utf8.DecodeRuneInString(w[i:])
		start[k], end[k] = int32(i), int32(i+size)
		prev[k], next[k], alive[k] = int32(k-1), int32(k+1), true
		i += size
	}
	next[n-1] = -1
	for k := 0; k < n; k++ {
		s := w[start[k]:end[k]]
		if k == n-1 && m.suffix != "" {
			s += m.suffix
		}
		sym[k] = m.lookup(s)
	}

	var h pairHeap
	queue := func(a int32) {
		b := next[a]
		if a < 0 || b < 0 || sym[a] < 0 || sym[b] < 0 {
			return
		}
		if mg, ok := m.merges[uint64(sym[a])<<32|uint64(sym[b])]; ok {
			h.push(pairEntry{rank: mg.rank, left: a, right: b, symL: sym[a], symR: sym[b]})
		}
	}
	for k := 0; k+1 < n; k++ {
		queue(int32(k))
	}
	for len(h) > 0 {
		e := h.pop()
		a, b := e.left, e.right
		if !alive[a] || !alive[b] || next[a] != b || sym[a] != e.symL || sym[b] != e.symR {
			continue // stale: one side has changed since it was queued
		}
		mg := m.merges[uint64(sym[a])<<32|uint64(sym[b])]
		sym[a] = mg.result
		end[a] = end[b]
		alive[b] = false
		next[a] = next[b]
		if next[b] >= 0 {
			prev[next[b]] = a
		}
		if prev[a] >= 0 {
			queue(prev[a])
		}
		queue(a)
	}

	var ids []int
	for k := int32(0); k >= 0; k = next[k] {
		if sym[k] >= 0 && int(sym[k]) < m.nTokens {
			ids = append(ids, int(sym[k]))
			continue
		}
		s := w[start[k]:end[k]]
		if next[k] < 0 && m.suffix != "" {
			s += m.suffix
		}
		ids = m.unknown(ids, s)
	}
	return ids
}

// unknown appends the ids for a symbol that is not a token: its UTF-8 bytes as <0xNN>
// tokens if byte_fallback is on and all of them exist, else the unknown token (nothing if
// the model has none).
func (m *bpe) unknown(ids []int, s string) []int {
	if m.byteFallback {
		ok := true
		for i := 0; i < len(s); i++ {
			if m.byteIDs[s[i]] < 0 {
				ok = false
				break
			}
		}
		if ok {
			for i := 0; i < len(s); i++ {
				ids = append(ids, m.byteIDs[s[i]])
			}
			return ids
		}
	}
	if m.unkID >= 0 {
		ids = append(ids, m.unkID)
	}
	return ids
}
