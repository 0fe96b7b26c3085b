package safetensors

import (
	"encoding/binary"
	"fmt"
	"math"
)

// DType is a safetensors element type, spelled as in the file header ("F32", "BF16", ...).
type DType string

// The element types a safetensors header may name.
const (
	Bool   DType = "BOOL"
	U8     DType = "U8"
	I8     DType = "I8"
	I16    DType = "I16"
	U16    DType = "U16"
	F16    DType = "F16"
	BF16   DType = "BF16"
	I32    DType = "I32"
	U32    DType = "U32"
	F32    DType = "F32"
	F64    DType = "F64"
	I64    DType = "I64"
	U64    DType = "U64"
	F8E4M3 DType = "F8_E4M3" // torch.float8_e4m3fn: no infinities, NaN is 0x7f/0xff, max 448
	F8E5M2 DType = "F8_E5M2" // torch.float8_e5m2: IEEE-like, the top byte of an F16
)

// dtypeSizes maps every known dtype to its element size in bytes.
var dtypeSizes = map[DType]int{
	Bool: 1, U8: 1, I8: 1, F8E4M3: 1, F8E5M2: 1,
	I16: 2, U16: 2, F16: 2, BF16: 2,
	I32: 4, U32: 4, F32: 4,
	F64: 8, I64: 8, U64: 8,
}

// Size returns the number of bytes per element, or 0 if d is not a known dtype.
func (d DType) Size() int { return dtypeSizes[d] }

// IsFloat reports whether d is a floating-point dtype (F8_E4M3, F8_E5M2, F16, BF16, F32, F64).
func (d DType) IsFloat() bool {
	switch d {
	case F8E4M3, F8E5M2, F16, BF16, F32, F64:
		return true
	}
	return false
}

// Valid reports whether d is one of the dtypes listed above.
func (d DType) Valid() bool { return d.Size() != 0 }

// knownDTypes lists the dtypes for error messages, in a fixed order.
const knownDTypes = "BOOL, U8, I8, I16, U16, F16, BF16, I32, U32, F32, F64, I64, U64, F8_E4M3, F8_E5M2"

// DecodeFloat32 converts little-endian elements of a float dtype to a new float32 slice.
// F64 values are rounded to nearest even; all other float dtypes convert exactly.
func DecodeFloat32(dt DType, src []byte) ([]float32, error) {
	if !dt.IsFloat() {
		return nil, fmt.Errorf("cannot decode dtype %q to float32: not a float dtype (want F8_E4M3, F8_E5M2, F16, BF16, F32 or F64)", string(dt))
	}
	size := dt.Size()
	if len(src)%size != 0 {
		return nil, fmt.Errorf("cannot decode %s: %d bytes is not a multiple of the %d-byte element size", dt, len(src), size)
	}
	dst := make([]float32, len(src)/size) // (n,)
	switch dt {
	case F32:
		for i := range dst {
			dst[i] = math.Float32frombits(binary.LittleEndian.Uint32(src[4*i:]))
		}
	case F64:
		for i := range dst {
			dst[i] = float32(math.Float64frombits(binary.LittleEndian.Uint64(src[8*i:])))
		}
	case F16:
		for i := range dst {
			dst[i] = F16ToFloat32(binary.LittleEndian.Uint16(src[2*i:]))
		}
	case BF16:
		for i := range dst {
			dst[i] = BF16ToFloat32(binary.LittleEndian.Uint16(src[2*i:]))
		}
	case F8E4M3:
		for i, b := range src {
			dst[i] = F8E4M3ToFloat32(b)
		}
	case F8E5M2:
		for i, b := range src {
			dst[i] = F8E5M2ToFloat32(b)
		}
	}
	return dst, nil
}

// EncodeFloat32 converts float32 values to little-endian elements of a float dtype.
// Narrowing conversions round to nearest, ties to even; NaN stays NaN. Values too
// large for the dtype become ±Inf, except for F8_E4M3 (which has no infinities),
// where they become NaN as in torch.
func EncodeFloat32(dt DType, src []float32) ([]byte, error) {
	if !dt.IsFloat() {
		return nil, fmt.Errorf("cannot encode float32 as dtype %q: not a float dtype (want F8_E4M3, F8_E5M2, F16, BF16, F32 or F64)", string(dt))
	}
	dst := make([]byte, len(src)*dt.Size())
	switch dt {
	case F32:
		for i, v := range src {
			binary.LittleEndian.PutUint32(dst[4*i:], math.Float32bits(v))
		}
	case F64:
		for i, v := range src {
			binary.LittleEndian.PutUint64(dst[8*i:], math.Float64bits(float64(v)))
		}
	case F16:
		for i, v := range src {
			binary.LittleEndian.PutUint16(dst[2*i:], Float32ToF16(v))
		}
	case BF16:
		for i, v := range src {
			binary.LittleEndian.PutUint16(dst[2*i:], Float32ToBF16(v))
		}
	case F8E4M3:
		for i, v := range src {
			dst[i] = Float32ToF8E4M3(v)
		}
	case F8E5M2:
		for i, v := range src {
			dst[i] = Float32ToF8E5M2(v)
		}
	}
	return dst, nil
}

// BF16ToFloat32 widens a bfloat16 bit pattern; it is exact (bfloat16 is the top half of a float32).
func BF16ToFloat32(h uint16) float32 { return math.Float32frombits(uint32(h) << 16) }

// Float32ToBF16 narrows to bfloat16 with round-to-nearest-even. A NaN keeps its sign and
// top payload bits (and stays a NaN).
func Float32ToBF16(f float32) uint16 {
	b := math.Float32bits(f)
	if b&0x7fffffff > 0x7f800000 { // NaN
		h := uint16(b >> 16)
		if h&0x7f == 0 {
			h |= 0x40 // payload lived only in the dropped bits: set the quiet bit
		}
		return h
	}
	// Adding 0x7fff plus the lowest kept bit rounds to nearest, ties to even;
	// a carry into the exponent is correct, and overflow lands exactly on Inf.
	return uint16((b + 0x7fff + (b>>16)&1) >> 16)
}

// F16ToFloat32 widens an IEEE 754 binary16 bit pattern; it is exact (NaN payloads kept).
func F16ToFloat32(h uint16) float32 { return miniToFloat32(uint32(h), 5, 10, true) }

// Float32ToF16 narrows to IEEE 754 binary16 with round-to-nearest-even; overflow gives ±Inf,
// NaN stays NaN (sign and top payload bits kept).
func Float32ToF16(f float32) uint16 { return uint16(float32ToMini(f, 5, 10, true)) }

// F8E5M2ToFloat32 widens a float8_e5m2 byte; it is exact.
func F8E5M2ToFloat32(b uint8) float32 { return miniToFloat32(uint32(b), 5, 2, true) }

// Float32ToF8E5M2 narrows to float8_e5m2 with round-to-nearest-even; overflow gives ±Inf,
// NaN stays NaN.
func Float32ToF8E5M2(f float32) uint8 { return uint8(float32ToMini(f, 5, 2, true)) }

// F8E4M3ToFloat32 widens a float8_e4m3fn byte (bias 7, no infinities, 0x7f/0xff are NaN,
// largest finite value 448); it is exact.
func F8E4M3ToFloat32(b uint8) float32 { return miniToFloat32(uint32(b), 4, 3, false) }

// Float32ToF8E4M3 narrows to float8_e4m3fn with round-to-nearest-even. Like torch, anything
// whose magnitude rounds above 448 (including ±Inf) becomes NaN (0x7f, or 0xff if negative).
func Float32ToF8E4M3(f float32) uint8 { return uint8(float32ToMini(f, 4, 3, false)) }

// miniToFloat32 decodes a small binary float with ebits exponent bits, mbits mantissa bits,
// bias 2^(ebits-1)-1 and a sign bit on top. ieee selects IEEE-style specials (all-ones
// exponent is Inf/NaN); otherwise only the all-ones pattern (exponent and mantissa) is NaN,
// as in float8_e4m3fn.
func miniToFloat32(code uint32, ebits, mbits uint, ieee bool) float32 {
	bias := int32(1)<<(ebits-1) - 1
	emax := uint32(1)<<ebits - 1
	sign := (code >> (ebits + mbits) & 1) << 31
	exp := code >> mbits & emax
	man := code & (1<<mbits - 1)
	switch {
	case ieee && exp == emax: // Inf (man == 0) or NaN, payload shifted into place
		return math.Float32frombits(sign | 0x7f800000 | man<<(23-mbits))
	case !ieee && exp == emax && man == 1<<mbits-1: // the fn variant's only NaN
		return math.Float32frombits(sign | 0x7fc00000)
	case exp == 0: // zero or subnormal: man * 2^(1-bias-mbits), exact in float32
		v := float32(math.Ldexp(float64(man), int(1-bias-int32(mbits))))
		return math.Float32frombits(sign | math.Float32bits(v))
	}
	e32 := uint32(int32(exp) - bias + 127)
	return math.Float32frombits(sign | e32<<23 | man<<(23-mbits))
}

// float32ToMini encodes f as a small binary float (see miniToFloat32) with
// round-to-nearest-even. For ieee formats overflow gives Inf; otherwise it gives NaN.
func float32ToMini(f float32, ebits, mbits uint, ieee bool) uint32 {
	b := math.Float32bits(f)
	sign := (b >> 31) << (ebits + mbits)
	abs := b & 0x7fffffff
	emax := uint32(1)<<ebits - 1
	nan := emax<<mbits | 1<<(mbits-1) // quiet NaN
	if !ieee {
		nan = emax<<mbits | (1<<mbits - 1)
	}
	inf := emax << mbits
	if !ieee {
		inf = nan // no infinities: overflow and Inf become NaN
	}
	if abs > 0x7f800000 { // NaN
		if !ieee {
			return sign | nan
		}
		man := (abs & 0x7fffff) >> (23 - mbits)
		if man == 0 {
			man = 1 << (mbits - 1)
		}
		return sign | inf | man
	}
	if abs == 0x7f800000 {
		return sign | inf
	}
	exp32 := int32(abs >> 23)
	if exp32 == 0 {
		// float32 subnormals are below 2^-126, far under half the smallest subnormal of
		// every format handled here, so they round to zero.
		return sign
	}
	bias := int32(1)<<(ebits-1) - 1
	e := exp32 - 127                    // unbiased exponent
	sig := uint64(abs&0x7fffff | 1<<23) // 24-bit significand, value = sig * 2^(e-23)
	emin := 1 - bias                    // smallest normal exponent
	shift := int32(23 - mbits)
	var base uint64 // exponent field minus one, pre-shifted; q adds the implicit bit
	if e >= emin {
		base = uint64(e+bias-1) << mbits
	} else {
		shift += emin - e // subnormal: fewer mantissa bits survive
	}
	if shift > 40 {
		return sign // far below the smallest subnormal
	}
	q := sig >> shift
	rem := sig & (1<<shift - 1)
	half := uint64(1) << (shift - 1)
	if rem > half || (rem == half && q&1 == 1) {
		q++ // a carry into the exponent (or from subnormal to normal) is correct
	}
	r := base + q
	limit := uint64(inf) // first code past the largest finite value
	if !ieee {
		limit = uint64(nan)
	}
	if r >= limit {
		return sign | inf
	}
	return sign | uint32(r)
}
