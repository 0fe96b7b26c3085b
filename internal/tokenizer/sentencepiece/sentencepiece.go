// Package sentencepiece loads a sentencepiece model file (tokenizer.model)
// and encodes and decodes text with it, matching the ids of Google's
// sentencepiece library (the behaviour of release 0.1.97).
//
// Supported: BPE and unigram models, byte fallback, user-defined symbols,
// UNUSED pieces, the identity normalizer and precompiled normalization rules
// (nmt_nfkc and friends), add_dummy_prefix, remove_extra_whitespaces and
// whitespace escaping. Not supported: WORD and CHAR models, sampling
// (subword regularization).
//
// As in sentencepiece, literal text such as "<s>" is not special: it is
// segmented like any other text. Control ids are added only by Encode's
// addSpecial flag.
package sentencepiece

import (
	"fmt"
	"math"
	"os"
	"strings"
	"unicode/utf8"
)

// Model is a loaded sentencepiece model. It is safe for concurrent use.
type Model struct {
	path   string
	pieces []piece

	kind         int32          // modelBPE or modelUnigram
	pieceIDs     map[string]int // NORMAL, USER_DEFINED and UNUSED pieces
	reservedIDs  map[string]int // CONTROL, UNKNOWN and BYTE pieces
	unkID        int
	bosID, eosID int // -1 if none
	byteFallback bool
	byteIDs      [256]int // id of "<0xNN>" when byteFallback

	userDefined *prefixMatcher
	norm        *normalizer
	denorm      *normalizer // nil unless the model has a denormalizer rule
	unkSurface  string

	// BPE only: see wordsIndependent
	wordsIndependent bool

	// unigram only
	minScore, maxScore float32
	maxPieceLen        int // longest piece in bytes
}

// Load reads and checks a sentencepiece model file (tokenizer.model).
func Load(path string) (*Model, error) {
	data, err := os.ReadFile(path)
	if err != nil {
		return nil, fmt.Errorf("sentencepiece: read model: %w", err)
	}
	m, err := parseModel(data)
	if err != nil {
		return nil, fmt.Errorf("sentencepiece: %s: %w", path, err)
	}
	m.path = path
	return m, nil
}

// parseModel builds a Model from the bytes of a model file. Errors do not
// name the file; Load adds it.
func parseModel(data []byte) (*Model, error) {
	const fix = "the file is damaged or is not a sentencepiece tokenizer.model; download it again"
	mp, err := parseModelProto(data)
	if err != nil {
		return nil, fmt.Errorf("invalid model protobuf: %w (%s)", err, fix)
	}
	m := &Model{
		pieces:      mp.pieces,
		kind:        mp.trainer.modelType,
		pieceIDs:    make(map[string]int, len(mp.pieces)),
		reservedIDs: map[string]int{},
		unkID:       -1,
		unkSurface:  mp.trainer.unkSurface,
	}
	switch m.kind {
	case modelBPE, modelUnigram:
	case modelWord, modelChar:
		return nil, fmt.Errorf("word and char sentencepiece models are not supported (model_type %d); only BPE and unigram are", m.kind)
	default:
		return nil, fmt.Errorf("unknown model_type %d in trainer_spec (%s)", m.kind, fix)
	}

	// Index the pieces and check them as sentencepiece's InitializePieces.
	var userDefined []string
	var byteFound [256]bool
	m.byteFallback = mp.trainer.byteFallback
	for i, p := range m.pieces {
		if p.text == "" {
			return nil, fmt.Errorf("piece %d is empty (%s)", i, fix)
		}
		ids := m.reservedIDs
		if p.typ == typeNormal || p.typ == typeUserDefined || p.typ == typeUnused {
			ids = m.pieceIDs
		}
		if prev, dup := ids[p.text]; dup {
			return nil, fmt.Errorf("piece %q is defined twice (ids %d and %d) (%s)", p.text, prev, i, fix)
		}
		ids[p.text] = i
		m.maxPieceLen = max(m.maxPieceLen, len(p.text))
		switch p.typ {
		case typeUserDefined:
			userDefined = append(userDefined, p.text)
		case typeUnknown:
			if m.unkID >= 0 {
				return nil, fmt.Errorf("two unknown pieces, ids %d and %d (%s)", m.unkID, i, fix)
			}
			m.unkID = i
		case typeByte:
			if !m.byteFallback {
				return nil, fmt.Errorf("byte piece %q at id %d although trainer_spec.byte_fallback is false (%s)", p.text, i, fix)
			}
			b, ok := pieceToByte(p.text)
			if !ok {
				return nil, fmt.Errorf("byte piece %q at id %d is not of the form <0xNN> (%s)", p.text, i, fix)
			}
			byteFound[b] = true
			m.byteIDs[b] = i
		}
	}
	if m.unkID < 0 {
		return nil, fmt.Errorf("no unknown piece (type UNKNOWN) among %d pieces (%s)", len(m.pieces), fix)
	}
	if m.byteFallback {
		for b, ok := range byteFound {
			if !ok {
				return nil, fmt.Errorf("trainer_spec.byte_fallback is true but byte piece <0x%02X> is missing (%s)", b, fix)
			}
		}
	}
	if len(userDefined) > 0 {
		m.userDefined = newPrefixMatcher(userDefined)
	}

	m.norm, err = newNormalizer(mp.normalizer, mp.trainer.treatWhitespaceAsSuffix, m.userDefined)
	if err != nil {
		return nil, fmt.Errorf("normalizer_spec %q: %w (%s)", mp.normalizer.name, err, fix)
	}
	if mp.hasDenormalizer && len(mp.denormalizer.precompiledCharsmap) > 0 {
		m.denorm, err = newNormalizer(mp.denormalizer, false, nil)
		if err != nil {
			return nil, fmt.Errorf("denormalizer_spec %q: %w (%s)", mp.denormalizer.name, err, fix)
		}
	}

	m.wordsIndependent = wordsIndependent(m.pieceIDs)
	m.bosID = m.controlID(mp.trainer.bosPiece, "<s>")
	m.eosID = m.controlID(mp.trainer.eosPiece, "</s>")

	// Unigram score range over NORMAL pieces (initial values as sentencepiece:
	// FLT_MAX and FLT_MIN).
	m.minScore, m.maxScore = math.MaxFloat32, 0x1p-126
	for _, p := range m.pieces {
		if p.typ == typeNormal {
			m.minScore = min(m.minScore, p.score)
			m.maxScore = max(m.maxScore, p.score)
		}
	}
	return m, nil
}

// controlID returns the id of the named special piece (def if name is
// empty) when it is a CONTROL piece, else -1, as sentencepiece's bos_id().
func (m *Model) controlID(name, def string) int {
	if name == "" {
		name = def
	}
	id := m.pieceToID(name)
	if m.pieces[id].typ != typeControl {
		return -1
	}
	return id
}

// pieceToID returns the id of piece p, or the unknown id (sentencepiece's
// ModelInterface::PieceToId).
func (m *Model) pieceToID(p string) int {
	if id, ok := m.reservedIDs[p]; ok {
		return id
	}
	if id, ok := m.pieceIDs[p]; ok {
		return id
	}
	return m.unkID
}

// pieceToByte parses a byte piece "<0xNN>" (upper-case hex digits).
func pieceToByte(p string) (byte, bool) {
	if len(p) != 6 || !strings.HasPrefix(p, "<0x") || p[5] != '>' {
		return 0, false
	}
	var v byte
	for _, c := range []byte(p[3:5]) {
		switch {
		case '0' <= c && c <= '9':
			v = v<<4 | (c - '0')
		case 'A' <= c && c <= 'F':
			v = v<<4 | (c - 'A' + 10)
		default:
			return 0, false
		}
	}
	return v, true
}

// VocabSize returns the number of pieces (ids are 0..VocabSize()-1).
func (m *Model) VocabSize() int { return len(m.pieces) }

// BOS returns the id of the beginning-of-sentence piece, or -1 if none.
func (m *Model) BOS() int { return m.bosID }

// EOS returns the id of the end-of-sentence piece, or -1 if none.
func (m *Model) EOS() int { return m.eosID }

// UNK returns the id of the unknown piece.
func (m *Model) UNK() int { return m.unkID }

// IDToPiece returns the piece with the given id and true, or "" and false
// if id is out of range.
func (m *Model) IDToPiece(id int) (string, bool) {
	if id < 0 || id >= len(m.pieces) {
		return "", false
	}
	return m.pieces[id].text, true
}

// PieceToID returns the id of piece p and true, or -1 and false if p is not
// in the vocabulary.
func (m *Model) PieceToID(p string) (int, bool) {
	if id, ok := m.reservedIDs[p]; ok {
		return id, true
	}
	if id, ok := m.pieceIDs[p]; ok {
		return id, true
	}
	return -1, false
}

// Encode returns the ids of text as sentencepiece's EncodeAsIds. With
// addSpecial the BOS id is prepended (when the model has one); EOS is never
// added.
func (m *Model) Encode(text string, addSpecial bool) []int {
	normalized := m.norm.normalize(text)
	var segs []segment
	if m.kind == modelBPE {
		segs = m.encodeBPE(normalized)
	} else {
		segs = m.encodeUnigram(normalized)
	}
	ids := make([]int, 0, len(segs)+1)
	if addSpecial && m.bosID >= 0 {
		ids = append(ids, m.bosID)
	}
	prevUnk := false
	for _, s := range segs {
		isUnk := m.pieces[s.id].typ == typeUnknown
		switch {
		case isUnk && m.byteFallback:
			// An unknown piece becomes its UTF-8 bytes.
			for i := s.start; i < s.end; i++ {
				ids = append(ids, m.byteIDs[normalized[i]])
			}
			isUnk = false
		case isUnk && prevUnk:
			// A run of unknown pieces is one unknown id.
		default:
			ids = append(ids, s.id)
		}
		prevUnk = isUnk
	}
	return ids
}

// Decode returns the text of ids as sentencepiece's DecodeIds: "▁" becomes a
// space, the space of the dummy prefix is dropped, runs of byte pieces are
// joined and read as UTF-8 (each invalid byte becomes U+FFFD), control
// pieces such as BOS and EOS vanish and the unknown piece becomes " ⁇ ".
// Ids outside 0..VocabSize()-1 are skipped (sentencepiece rejects them).
func (m *Model) Decode(ids []int) string {
	var text strings.Builder
	var bytes []byte // pending run of byte pieces
	flushBytes := func() {
		for len(bytes) > 0 {
			r, n := utf8.DecodeRune(bytes)
			if r == utf8.RuneError && n == 1 {
				text.WriteString("\uFFFD")
			} else {
				text.Write(bytes[:n])
			}
			bytes = bytes[n:]
		}
		bytes = bytes[:0]
	}
	// Leading "▁" is removed from the first pieces while nothing has been
	// written yet (the dummy prefix); without remove_extra_whitespaces only
	// one is removed.
	spec := &m.norm.spec
	stripLeading := spec.addDummyPrefix || spec.removeExtraWhitespaces
	isBOSWS, bosWSSeen := true, false
	for _, id := range ids {
		if id < 0 || id >= len(m.pieces) {
			continue
		}
		p := m.pieces[id]
		if p.typ == typeByte {
			b, _ := pieceToByte(p.text)
			bytes = append(bytes, b)
			continue
		}
		flushBytes()
		if bosWSSeen || text.Len() > 0 {
			isBOSWS = false
		}
		switch p.typ {
		case typeControl:
			bosWSSeen = false
		case typeUnknown:
			text.WriteString(m.unkSurface)
			bosWSSeen = false
		default:
			s := p.text
			bosWSSeen = false
			if isBOSWS && stripLeading {
				var cut bool
				s, cut = strings.CutPrefix(s, spaceSymbol)
				bosWSSeen = cut && !spec.removeExtraWhitespaces
			}
			text.WriteString(strings.ReplaceAll(s, spaceSymbol, " "))
		}
	}
	flushBytes()
	if m.denorm != nil {
		return m.denorm.normalize(text.String())
	}
	return text.String()
}
