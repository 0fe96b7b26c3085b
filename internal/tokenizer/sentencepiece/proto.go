package sentencepiece

import (
	"encoding/binary"
	"errors"
	"fmt"
	"math"
)

// This file is a minimal reader of the protobuf wire format, just enough to
// decode sentencepiece's ModelProto (src/sentencepiece_model.proto). Field
// numbers below are those of that file. Unknown fields are skipped, as a
// protobuf parser does; repeated occurrences of a singular field follow the
// protobuf rules (the last scalar wins, embedded messages merge).

// Protobuf wire types.
const (
	wireVarint  = 0
	wireFixed64 = 1
	wireBytes   = 2
	wireFixed32 = 5
)

// pieceType is ModelProto.SentencePiece.Type.
type pieceType int8

const (
	typeNormal      pieceType = 1
	typeUnknown     pieceType = 2
	typeControl     pieceType = 3
	typeUserDefined pieceType = 4
	typeUnused      pieceType = 5
	typeByte        pieceType = 6
)

// TrainerSpec.ModelType values.
const (
	modelUnigram = 1
	modelBPE     = 2
	modelWord    = 3
	modelChar    = 4
)

// piece is one ModelProto.SentencePiece.
type piece struct {
	text  string
	score float32
	typ   pieceType
}

// trainerSpec holds the TrainerSpec fields that matter for encoding and
// decoding, with the proto's default values.
type trainerSpec struct {
	modelType               int32  // 3, default UNIGRAM
	vocabSize               int32  // 4
	treatWhitespaceAsSuffix bool   // 24
	byteFallback            bool   // 35
	unkID, bosID, eosID     int32  // 40, 41, 42
	padID                   int32  // 43
	unkSurface              string // 44
	unkPiece, bosPiece      string // 45, 46
	eosPiece, padPiece      string // 47, 48
}

func defaultTrainerSpec() trainerSpec {
	return trainerSpec{
		modelType:  modelUnigram,
		vocabSize:  8000,
		unkID:      0,
		bosID:      1,
		eosID:      2,
		padID:      -1,
		unkSurface: " \u2047 ",
	}
}

// normalizerSpec is NormalizerSpec, with the proto's default values.
type normalizerSpec struct {
	name                   string // 1
	precompiledCharsmap    []byte // 2
	addDummyPrefix         bool   // 3, default true
	removeExtraWhitespaces bool   // 4, default true
	escapeWhitespaces      bool   // 5, default true
}

func defaultNormalizerSpec() normalizerSpec {
	return normalizerSpec{addDummyPrefix: true, removeExtraWhitespaces: true, escapeWhitespaces: true}
}

// modelProto is the decoded ModelProto.
type modelProto struct {
	pieces          []piece        // 1
	trainer         trainerSpec    // 2
	normalizer      normalizerSpec // 3
	denormalizer    normalizerSpec // 5
	hasDenormalizer bool
}

// wireReader walks one serialized message.
type wireReader struct {
	buf  []byte
	pos  int
	base int // offset of buf in the whole file, for error messages
}

var errTruncated = errors.New("truncated")

// varint reads a base-128 varint.
func (r *wireReader) varint() (uint64, error) {
	var v uint64
	for shift := uint(0); shift < 70; shift += 7 {
		if r.pos >= len(r.buf) {
			return 0, fmt.Errorf("varint at byte %d runs past the end: %w", r.base+r.pos, errTruncated)
		}
		b := r.buf[r.pos]
		r.pos++
		if shift == 63 && b > 1 {
			return 0, fmt.Errorf("varint at byte %d overflows 64 bits", r.base+r.pos-1)
		}
		v |= uint64(b&0x7f) << shift
		if b < 0x80 {
			return v, nil
		}
	}
	return 0, fmt.Errorf("varint at byte %d is longer than 10 bytes", r.base+r.pos)
}

// field reads the next field's number and wire type.
func (r *wireReader) field() (num int, wire int, err error) {
	start := r.pos
	key, err := r.varint()
	if err != nil {
		return 0, 0, err
	}
	num = int(key >> 3)
	wire = int(key & 7)
	if key>>3 == 0 || key>>3 > 1<<29-1 { // protobuf field numbers are 1..2^29-1
		return 0, 0, fmt.Errorf("invalid field number %d at byte %d", key>>3, r.base+start)
	}
	return num, wire, nil
}

// bytes reads a length-delimited payload and returns it with its offset.
func (r *wireReader) bytes() ([]byte, int, error) {
	n, err := r.varint()
	if err != nil {
		return nil, 0, err
	}
	if n > uint64(len(r.buf)-r.pos) {
		return nil, 0, fmt.Errorf("field at byte %d needs %d bytes but only %d remain: %w",
			r.base+r.pos, n, len(r.buf)-r.pos, errTruncated)
	}
	off := r.base + r.pos
	b := r.buf[r.pos : r.pos+int(n)]
	r.pos += int(n)
	return b, off, nil
}

// fixed32 reads a little-endian 32-bit value.
func (r *wireReader) fixed32() (uint32, error) {
	if len(r.buf)-r.pos < 4 {
		return 0, fmt.Errorf("fixed32 at byte %d runs past the end: %w", r.base+r.pos, errTruncated)
	}
	v := binary.LittleEndian.Uint32(r.buf[r.pos:])
	r.pos += 4
	return v, nil
}

// skip skips a field's payload of the given wire type.
func (r *wireReader) skip(wire int) error {
	switch wire {
	case wireVarint:
		_, err := r.varint()
		return err
	case wireFixed64:
		if len(r.buf)-r.pos < 8 {
			return fmt.Errorf("fixed64 at byte %d runs past the end: %w", r.base+r.pos, errTruncated)
		}
		r.pos += 8
		return nil
	case wireBytes:
		_, _, err := r.bytes()
		return err
	case wireFixed32:
		_, err := r.fixed32()
		return err
	}
	return fmt.Errorf("unsupported protobuf wire type %d before byte %d", wire, r.base+r.pos)
}

// expect checks that a known field has the wire type the schema gives it.
func expect(msg string, num, wire, want int, at int) error {
	if wire != want {
		return fmt.Errorf("%s field %d has wire type %d, want %d (byte %d)", msg, num, wire, want, at)
	}
	return nil
}

// parseModelProto decodes a serialized ModelProto.
func parseModelProto(data []byte) (*modelProto, error) {
	mp := &modelProto{
		trainer:      defaultTrainerSpec(),
		normalizer:   defaultNormalizerSpec(),
		denormalizer: defaultNormalizerSpec(),
	}
	r := &wireReader{buf: data}
	for r.pos < len(r.buf) {
		at := r.pos
		num, wire, err := r.field()
		if err != nil {
			return nil, err
		}
		switch num {
		case 1, 2, 3, 5:
			if err := expect("ModelProto", num, wire, wireBytes, at); err != nil {
				return nil, err
			}
			b, off, err := r.bytes()
			if err != nil {
				return nil, err
			}
			sub := &wireReader{buf: b, base: off}
			switch num {
			case 1:
				p, err := parsePiece(sub)
				if err != nil {
					return nil, fmt.Errorf("piece %d: %w", len(mp.pieces), err)
				}
				mp.pieces = append(mp.pieces, p)
			case 2:
				if err := parseTrainerSpec(sub, &mp.trainer); err != nil {
					return nil, fmt.Errorf("trainer_spec: %w", err)
				}
			case 3:
				if err := parseNormalizerSpec(sub, &mp.normalizer); err != nil {
					return nil, fmt.Errorf("normalizer_spec: %w", err)
				}
			case 5:
				mp.hasDenormalizer = true
				if err := parseNormalizerSpec(sub, &mp.denormalizer); err != nil {
					return nil, fmt.Errorf("denormalizer_spec: %w", err)
				}
			}
		default: // 4 self_test_data and anything unknown
			if err := r.skip(wire); err != nil {
				return nil, err
			}
		}
	}
	return mp, nil
}

// parsePiece decodes ModelProto.SentencePiece.
func parsePiece(r *wireReader) (piece, error) {
	p := piece{typ: typeNormal}
	for r.pos < len(r.buf) {
		at := r.pos
		num, wire, err := r.field()
		if err != nil {
			return p, err
		}
		switch num {
		case 1:
			if err := expect("SentencePiece", num, wire, wireBytes, at); err != nil {
				return p, err
			}
			b, _, err := r.bytes()
			if err != nil {
				return p, err
			}
			p.text = string(b)
		case 2:
			if err := expect("SentencePiece", num, wire, wireFixed32, at); err != nil {
				return p, err
			}
			v, err := r.fixed32()
			if err != nil {
				return p, err
			}
			p.score = math.Float32frombits(v)
		case 3:
			if err := expect("SentencePiece", num, wire, wireVarint, at); err != nil {
				return p, err
			}
			v, err := r.varint()
			if err != nil {
				return p, err
			}
			// proto2 keeps an unknown enum value out of the field, which
			// then keeps its previous value.
			if v >= uint64(typeNormal) && v <= uint64(typeByte) {
				p.typ = pieceType(v)
			}
		default:
			if err := r.skip(wire); err != nil {
				return p, err
			}
		}
	}
	return p, nil
}

// parseTrainerSpec decodes the TrainerSpec fields we use into t.
func parseTrainerSpec(r *wireReader, t *trainerSpec) error {
	for r.pos < len(r.buf) {
		at := r.pos
		num, wire, err := r.field()
		if err != nil {
			return err
		}
		switch num {
		case 3, 4, 24, 35, 40, 41, 42, 43:
			if err := expect("TrainerSpec", num, wire, wireVarint, at); err != nil {
				return err
			}
			v, err := r.varint()
			if err != nil {
				return err
			}
			i32 := int32(v) // int32 fields: negative values are sign-extended to 64 bits
			switch num {
			case 3:
				t.modelType = i32
			case 4:
				t.vocabSize = i32
			case 24:
				t.treatWhitespaceAsSuffix = v != 0
			case 35:
				t.byteFallback = v != 0
			case 40:
				t.unkID = i32
			case 41:
				t.bosID = i32
			case 42:
				t.eosID = i32
			case 43:
				t.padID = i32
			}
		case 44, 45, 46, 47, 48:
			if err := expect("TrainerSpec", num, wire, wireBytes, at); err != nil {
				return err
			}
			b, _, err := r.bytes()
			if err != nil {
				return err
			}
			switch num {
			case 44:
				t.unkSurface = string(b)
			case 45:
				t.unkPiece = string(b)
			case 46:
				t.bosPiece = string(b)
			case 47:
				t.eosPiece = string(b)
			case 48:
				t.padPiece = string(b)
			}
		default:
			if err := r.skip(wire); err != nil {
				return err
			}
		}
	}
	return nil
}

// parseNormalizerSpec decodes NormalizerSpec into n.
func parseNormalizerSpec(r *wireReader, n *normalizerSpec) error {
	for r.pos < len(r.buf) {
		at := r.pos
		num, wire, err := r.field()
		if err != nil {
			return err
		}
		switch num {
		case 1, 2:
			if err := expect("NormalizerSpec", num, wire, wireBytes, at); err != nil {
				return err
			}
			b, _, err := r.bytes()
			if err != nil {
				return err
			}
			if num == 1 {
				n.name = string(b)
			} else {
				n.precompiledCharsmap = append([]byte(nil), b...)
			}
		case 3, 4, 5:
			if err := expect("NormalizerSpec", num, wire, wireVarint, at); err != nil {
				return err
			}
			v, err := r.varint()
			if err != nil {
				return err
			}
			switch num {
			case 3:
				n.addDummyPrefix = v != 0
			case 4:
				n.removeExtraWhitespaces = v != 0
			case 5:
				n.escapeWhitespaces = v != 0
			}
		default:
			if err := r.skip(wire); err != nil {
				return err
			}
		}
	}
	return nil
}
