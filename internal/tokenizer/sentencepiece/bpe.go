package sentencepiece

import "strings"

// segment is one piece of a segmentation: normalized[start:end] and its id.
type segment struct {
	start, end int
	id         int
}

// bpeSymbol is a node of the doubly linked list of current symbols.
// A symbol that was merged into its left neighbour has start == end.
type bpeSymbol struct {
	prev, next int // neighbour indices, -1 at either end
	start, end int // byte range in the normalized text
	freeze     bool
}

// bpePair is a candidate merge of symbols left and right.
type bpePair struct {
	left, right int
	score       float32
	size        int // byte length of the merged piece when the pair was queued
}

// pairHeap is a max-heap of candidate merges: the highest score first, the
// leftmost first among equal scores (sentencepiece's SymbolPairComparator).
type pairHeap []bpePair

func (h pairHeap) before(i, j int) bool {
	return h[i].score > h[j].score || (h[i].score == h[j].score && h[i].left < h[j].left)
}

func (h *pairHeap) push(p bpePair) {
	*h = append(*h, p)
	a := *h
	i := len(a) - 1
	for i > 0 {
		parent := (i - 1) / 2
		if !a.before(i, parent) {
			break
		}
		a[i], a[parent] = a[parent], a[i]
		i = parent
	}
}

func (h *pairHeap) pop() bpePair {
	a := *h
	top := a[0]
	last := len(a) - 1
	a[0] = a[last]
	a = a[:last]
	i := 0
	for {
		l, r, best := 2*i+1, 2*i+2, i
		if l < len(a) && a.before(l, best) {
			best = l
		}
		if r < len(a) && a.before(r, best) {
			best = r
		}
		if best == i {
			break
		}
		a[i], a[best] = a[best], a[i]
		i = best
	}
	*h = a
	return top
}

// encodeBPE segments normalized text as sentencepiece's bpe::Model::Encode:
// split into characters (user-defined symbols whole and frozen), then
// repeatedly merge the adjacent pair whose concatenation is a piece with the
// highest score, leftmost first on ties; merges into UNUSED pieces are
// undone at the end by splitting them back into the pair they came from.
func (m *Model) encodeBPE(normalized string) []segment {
	if normalized == "" {
		return nil
	}
	symbols := make([]bpeSymbol, 0, len(normalized))
	for pos := 0; pos < len(normalized); {
		l, frozen := m.userDefined.match(normalized[pos:])
		idx := len(symbols)
		s := bpeSymbol{prev: idx - 1, next: idx + 1, start: pos, end: pos + l, freeze: frozen}
		pos += l
		if pos == len(normalized) {
			s.next = -1
		}
		symbols = append(symbols, s)
	}

	var agenda pairHeap
	// revMerge maps an UNUSED piece reached by a merge to the two pieces it
	// was made of, so that it can be resegmented.
	var revMerge map[string][2]string
	tryPair := func(left, right int) {
		if left < 0 || right < 0 || symbols[left].freeze || symbols[right].freeze {
			return
		}
		merged := normalized[symbols[left].start:symbols[right].end]
		id, ok := m.pieceIDs[merged]
		if !ok {
			return
		}
		agenda.push(bpePair{left: left, right: right, score: m.pieces[id].score, size: len(merged)})
		if m.pieces[id].typ == typeUnused {
			if revMerge == nil {
				revMerge = map[string][2]string{}
			}
			revMerge[merged] = [2]string{
				normalized[symbols[left].start:symbols[left].end],
				normalized[symbols[right].start:symbols[right].end],
			}
		}
	}
	// Merge chunk by chunk. When no piece has "▁" after another character
	// (m.wordsIndependent), no merge can join a symbol to a following one
	// that starts with "▁", so each such word is merged on its own: the
	// merges within a word happen in the same order as with one heap for the
	// whole text, and the small heaps are much faster on long texts.
	for first := 0; first < len(symbols); {
		last := first + 1 // the chunk is symbols[first:last]
		if m.wordsIndependent {
			for last < len(symbols) && !m.wordStart(normalized, symbols[last-1], symbols[last]) {
				last++
			}
		} else {
			last = len(symbols)
		}
		for i := first + 1; i < last; i++ {
			tryPair(i-1, i)
		}
		for len(agenda) > 0 {
			top := agenda.pop()
			l, r := &symbols[top.left], &symbols[top.right]
			// Skip pairs made stale by an earlier merge.
			if l.start == l.end || r.start == r.end || (l.end-l.start)+(r.end-r.start) != top.size {
				continue
			}
			l.end = r.end
			l.next = r.next
			if r.next >= 0 {
				symbols[r.next].prev = top.left
			}
			r.end = r.start // r is now empty
			tryPair(l.prev, top.left)
			tryPair(top.left, l.next)
		}
		first = last
	}

	out := make([]segment, 0, len(symbols))
	var resegment func(start, end int)
	resegment = func(start, end int) {
		w := normalized[start:end]
		id := m.pieceToID(w)
		if m.pieces[id].typ != typeUnused {
			out = append(out, segment{start, end, id})
			return
		}
		parts, ok := revMerge[w]
		if !ok {
			out = append(out, segment{start, end, id})
			return
		}
		mid := start + len(parts[0])
		resegment(start, mid)
		resegment(mid, end)
	}
	for i := 0; i != -1; i = symbols[i].next {
		resegment(symbols[i].start, symbols[i].end)
	}
	return out
}

// wordStart reports whether symbol b, which follows symbol a, starts with
// "▁" while a does not end with it.
func (m *Model) wordStart(normalized string, a, b bpeSymbol) bool {
	return strings.HasPrefix(normalized[b.start:b.end], spaceSymbol) &&
		!strings.HasSuffix(normalized[a.start:a.end], spaceSymbol)
}

// wordsIndependent reports whether every "▁" inside every mergeable piece
// comes right after another "▁" (or starts the piece), so that no merge can
// cross the start of a "▁"-prefixed word.
func wordsIndependent(pieceIDs map[string]int) bool {
	for p := range pieceIDs {
		for i := 1; i < len(p); i++ {
			if strings.HasPrefix(p[i:], spaceSymbol) && !strings.HasSuffix(p[:i], spaceSymbol) {
				return false
			}
		}
	}
	return true
}
