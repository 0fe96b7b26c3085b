// Package gguf reads and writes GGUF version 3 files, the single-file model format of
// llama.cpp and ollama, and exports loractl's models and LoRA adapters to it.
//
// A GGUF file is, all little-endian:
//
//	magic "GGUF" | version u32 (3) | tensor count u64 | metadata count u64
//	metadata: key (string), value type u32, value
//	tensor infos: name (string), n_dims u32, ne[n_dims] u64 (innermost first), ggml type u32,
//	              offset u64 (from the start of the data section, a multiple of the alignment)
//	zero padding to general.alignment (default 32)
//	tensor data, each tensor starting at its offset
//
// where a string is a u64 byte length and the bytes (no terminator) and an array is an element
// type u32, a count u64 and the elements. Tensor types F32, F16, Q8_0 and Q4_0 are supported,
// with the block layouts of ggml (see quant.go).
package gguf

import (
	"fmt"
	"math"
)

// Magic is the first four bytes of every GGUF file.
const Magic = "GGUF"

// Version is the GGUF version this package writes (and the only one it reads).
const Version = 3

// DefaultAlignment is the alignment of the data section and of every tensor when the file has
// no general.alignment key.
const DefaultAlignment = 32

// KeyAlignment is the metadata key that overrides DefaultAlignment.
const KeyAlignment = "general.alignment"

// ValueType is the type tag of a metadata value.
type ValueType uint32

// Metadata value types, with GGUF's numbering.
const (
	TypeUint8   ValueType = 0
	TypeInt8    ValueType = 1
	TypeUint16  ValueType = 2
	TypeInt16   ValueType = 3
	TypeUint32  ValueType = 4
	TypeInt32   ValueType = 5
	TypeFloat32 ValueType = 6
	TypeBool    ValueType = 7
	TypeString  ValueType = 8
	TypeArray   ValueType = 9
	TypeUint64  ValueType = 10
	TypeInt64   ValueType = 11
	TypeFloat64 ValueType = 12
)

var valueTypeNames = map[ValueType]string{
	TypeUint8: "uint8", TypeInt8: "int8", TypeUint16: "uint16", TypeInt16: "int16",
	TypeUint32: "uint32", TypeInt32: "int32", TypeFloat32: "float32", TypeBool: "bool",
	TypeString: "string", TypeArray: "array", TypeUint64: "uint64", TypeInt64: "int64",
	TypeFloat64: "float64",
}

func (t ValueType) String() string {
	if s, ok := valueTypeNames[t]; ok {
		return s
	}
	return fmt.Sprintf("value type %d", uint32(t))
}

// size returns the encoded size of a scalar of type t, or 0 for strings, arrays and unknown
// types.
func (t ValueType) size() int {
	switch t {
	case TypeUint8, TypeInt8, TypeBool:
		return 1
	case TypeUint16, TypeInt16:
		return 2
	case TypeUint32, TypeInt32, TypeFloat32:
		return 4
	case TypeUint64, TypeInt64, TypeFloat64:
		return 8
	}
	return 0
}

// Value is a metadata value. Go types map to GGUF types one to one: uint8, int8, uint16, int16,
// uint32, int32, float32, bool, string, uint64, int64, float64, and for arrays a slice of one of
// those ([]string, []float32, []int32, ...) or []Value holding nested arrays ([]any is not used).
type Value any

// KV is one metadata entry.
type KV struct {
	Key   string
	Value Value
}

// typeOf returns the GGUF type of a Go value, and for arrays the element type.
func typeOf(v Value) (t, elem ValueType, ok bool) {
	switch v.(type) {
	case uint8:
		return TypeUint8, 0, true
	case int8:
		return TypeInt8, 0, true
	case uint16:
		return TypeUint16, 0, true
	case int16:
		return TypeInt16, 0, true
	case uint32:
		return TypeUint32, 0, true
	case int32:
		return TypeInt32, 0, true
	case float32:
		return TypeFloat32, 0, true
	case bool:
		return TypeBool, 0, true
	case string:
		return TypeString, 0, true
	case uint64:
		return TypeUint64, 0, true
	case int64:
		return TypeInt64, 0, true
	case float64:
		return TypeFloat64, 0, true
	case []uint8:
		return TypeArray, TypeUint8, true
	case []int8:
		return TypeArray, TypeInt8, true
	case []uint16:
		return TypeArray, TypeUint16, true
	case []int16:
		return TypeArray, TypeInt16, true
	case []uint32:
		return TypeArray, TypeUint32, true
	case []int32:
		return TypeArray, TypeInt32, true
	case []float32:
		return TypeArray, TypeFloat32, true
	case []bool:
		return TypeArray, TypeBool, true
	case []string:
		return TypeArray, TypeString, true
	case []uint64:
		return TypeArray, TypeUint64, true
	case []int64:
		return TypeArray, TypeInt64, true
	case []float64:
		return TypeArray, TypeFloat64, true
	case []Value:
		return TypeArray, TypeArray, true
	}
	return 0, 0, false
}

// GGMLType is a tensor's ggml type.
type GGMLType uint32

// The tensor types this package reads and writes, with ggml's numbering.
const (
	F32  GGMLType = 0
	F16  GGMLType = 1
	Q4_0 GGMLType = 2
	Q8_0 GGMLType = 8
)

// BlockSize is the number of values in one Q8_0 or Q4_0 block (ggml's QK8_0 and QK4_0).
const BlockSize = 32

// Block byte sizes: an fp16 scale and the codes.
const (
	q8BlockBytes = 2 + BlockSize   // 34
	q4BlockBytes = 2 + BlockSize/2 // 18
)

var ggmlNames = map[GGMLType]string{F32: "F32", F16: "F16", Q4_0: "Q4_0", Q8_0: "Q8_0"}

func (t GGMLType) String() string {
	if s, ok := ggmlNames[t]; ok {
		return s
	}
	return fmt.Sprintf("ggml type %d", uint32(t))
}

// Supported reports whether this package can encode and decode tensors of type t.
func (t GGMLType) Supported() bool { _, ok := ggmlNames[t]; return ok }

// blockInfo returns values per block and bytes per block of a supported type.
func (t GGMLType) blockInfo() (values, bytes int) {
	switch t {
	case F32:
		return 1, 4
	case F16:
		return 1, 2
	case Q8_0:
		return BlockSize, q8BlockBytes
	case Q4_0:
		return BlockSize, q4BlockBytes
	}
	return 0, 0
}

// RowBytes returns the byte size of a row of n values of type t, or an error when n is not a
// whole number of blocks.
func (t GGMLType) RowBytes(n uint64) (uint64, error) {
	bv, bb := t.blockInfo()
	if bv == 0 {
		return 0, fmt.Errorf("%s is not supported (F32, F16, Q8_0 and Q4_0 are)", t)
	}
	if n%uint64(bv) != 0 {
		return 0, fmt.Errorf("a row of %d values is not a whole number of %s blocks of %d", n, t, bv)
	}
	return n / uint64(bv) * uint64(bb), nil
}

// TensorInfo describes one tensor of a GGUF file.
type TensorInfo struct {
	Name   string
	Shape  []uint64 // ggml's ne: Shape[0] is the row length (innermost); a torch (out, in) matrix is {in, out}
	Type   GGMLType
	Offset uint64 // from the start of the data section
	Size   uint64 // bytes of data
}

// Elements returns the number of values.
func (t TensorInfo) Elements() uint64 {
	n := uint64(1)
	for _, d := range t.Shape {
		n *= d
	}
	return n
}

// tensorBytes returns the data size of a tensor of the given shape and type, checking for
// overflow and whole blocks.
func tensorBytes(shape []uint64, t GGMLType) (uint64, error) {
	if len(shape) == 0 {
		return 0, fmt.Errorf("no dimensions")
	}
	rows := uint64(1)
	for _, d := range shape[1:] {
		if d == 0 {
			return 0, fmt.Errorf("dimension 0 in shape %v", shape)
		}
		if rows > math.MaxUint64/d {
			return 0, fmt.Errorf("shape %v overflows", shape)
		}
		rows *= d
	}
	if shape[0] == 0 {
		return 0, fmt.Errorf("dimension 0 in shape %v", shape)
	}
	rb, err := t.RowBytes(shape[0])
	if err != nil {
		return 0, err
	}
	if rows > math.MaxInt64/rb {
		return 0, fmt.Errorf("shape %v overflows", shape)
	}
	return rows * rb, nil
}

func alignUp(n, a uint64) uint64 { return (n + a - 1) / a * a }
