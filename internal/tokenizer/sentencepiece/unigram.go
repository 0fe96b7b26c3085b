package sentencepiece

// unkPenalty is how much lower than the lowest piece score an unknown
// character scores in the unigram lattice (unigram::kUnkPenalty).
const unkPenalty = 10.0

// bestPath is the best segmentation of a prefix of the normalized text that
// ends at some byte position: its score, the start of its last piece and
// that piece's id.
type bestPath struct {
	score    float32
	startsAt int // -1 while no path reaches this position
	id       int
}

// encodeUnigram segments normalized text with the Viterbi algorithm over a
// unigram language model, as sentencepiece's unigram::Model::EncodeOptimized:
// every vocabulary piece (not UNUSED) that starts at a character boundary is
// a lattice edge scored by its log probability (user-defined pieces get a
// bonus that makes them always win), a character covered by no single piece
// becomes an unknown edge scored minScore-10, and the best-scoring path wins
// (the first one found on ties).
func (m *Model) encodeUnigram(normalized string) []segment {
	size := len(normalized)
	if size == 0 {
		return nil
	}
	unkScore := m.minScore - unkPenalty
	best := make([]bestPath, size+1)
	for i := range best {
		best[i].startsAt = -1
	}
	for start := 0; start < size; {
		tillHere := best[start].score
		mblen := min(oneCharLen(normalized[start]), size-start)
		hasSingle := false
		for end := start + 1; end <= size && end-start <= m.maxPieceLen; end++ {
			id, ok := m.pieceIDs[normalized[start:end]]
			if !ok || m.pieces[id].typ == typeUnused {
				continue
			}
			length := end - start
			// sentencepiece adds in double precision here (the ternary that
			// picks the score mixes float and double) and stores a float.
			var cand float64
			if m.pieces[id].typ == typeUserDefined {
				cand = float64(float32(length)*m.maxScore) - 0.1
			} else {
				cand = float64(m.pieces[id].score)
			}
			cand += float64(tillHere)
			if target := &best[end]; target.startsAt == -1 || cand > float64(target.score) {
				*target = bestPath{score: float32(cand), startsAt: start, id: id}
			}
			if length == mblen {
				hasSingle = true
			}
		}
		if !hasSingle {
			target := &best[start+mblen]
			cand := unkScore + tillHere
			if target.startsAt == -1 || cand > target.score {
				*target = bestPath{score: cand, startsAt: start, id: m.unkID}
			}
		}
		start += mblen
	}

	var rev []segment
	for end := size; end > 0; {
		node := best[end]
		if node.startsAt < 0 { // unreachable for well-formed text; never loop
			rev = append(rev, segment{0, end, m.unkID})
			break
		}
		rev = append(rev, segment{node.startsAt, end, node.id})
		end = node.startsAt
	}
	for i, j := 0, len(rev)-1; i < j; i, j = i+1, j-1 {
		rev[i], rev[j] = rev[j], rev[i]
	}
	return rev
}
