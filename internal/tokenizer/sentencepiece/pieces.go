package sentencepiece

// PieceType is a piece's type in the model file (ModelProto.SentencePiece.Type); llama.cpp's
// GGUF token types use the same numbers.
type PieceType int

// Piece types.
const (
	Normal      PieceType = PieceType(typeNormal)
	Unknown     PieceType = PieceType(typeUnknown)
	Control     PieceType = PieceType(typeControl)
	UserDefined PieceType = PieceType(typeUserDefined)
	Unused      PieceType = PieceType(typeUnused)
	Byte        PieceType = PieceType(typeByte)
)

// Piece returns the text, score and type of piece id, and false when id is out of range.
func (m *Model) Piece(id int) (text string, score float32, typ PieceType, ok bool) {
	if id < 0 || id >= len(m.pieces) {
		return "", 0, 0, false
	}
	p := m.pieces[id]
	return p.text, p.score, PieceType(p.typ), true
}
