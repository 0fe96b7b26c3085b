package gguf

import (
	"encoding/binary"
	"fmt"
	"math"

	"github.com/loractl/loractl/internal/safetensors"
)

// The block layouts, as ggml's block_q8_0 and block_q4_0 (little-endian):
//
//	Q8_0 (34 bytes per 32 values): d fp16, qs[32] int8;         x[j] = d·qs[j]
//	Q4_0 (18 bytes per 32 values): d fp16, qs[16] two nibbles;  x[j] = d·((qs[j] & 0xF) − 8),
//	                                                              x[j+16] = d·((qs[j] >> 4) − 8)
//
// Quantization follows ggml's reference rows (quantize_row_q8_0_ref, quantize_row_q4_0_ref):
// the codes are computed with the float32 scale, and the scale is then stored as fp16.
//
//	Q8_0: d = max|x|/127, q = round(x/d) (half away from zero)
//	Q4_0: m = the x of largest magnitude (sign kept, first one on ties), d = m/−8,
//	      q = min(15, trunc(x/d + 8.5))

// Encode converts float32 values to the bytes of a tensor of type t. len(x) must be a whole
// number of blocks for Q8_0 and Q4_0.
func Encode(t GGMLType, x []float32) ([]byte, error) {
	switch t {
	case F32:
		out := make([]byte, 4*len(x))
		for i, v := range x {
			binary.LittleEndian.PutUint32(out[4*i:], math.Float32bits(v))
		}
		return out, nil
	case F16:
		out := make([]byte, 2*len(x))
		for i, v := range x {
			binary.LittleEndian.PutUint16(out[2*i:], safetensors.Float32ToF16(v))
		}
		return out, nil
	case Q8_0:
		if len(x)%BlockSize != 0 {
			return nil, fmt.Errorf("Q8_0: %d values is not a whole number of blocks of %d", len(x), BlockSize)
		}
		out := make([]byte, len(x)/BlockSize*q8BlockBytes)
		for b := 0; b < len(x)/BlockSize; b++ {
			quantizeQ8Block(out[b*q8BlockBytes:(b+1)*q8BlockBytes], x[b*BlockSize:(b+1)*BlockSize])
		}
		return out, nil
	case Q4_0:
		if len(x)%BlockSize != 0 {
			return nil, fmt.Errorf("Q4_0: %d values is not a whole number of blocks of %d", len(x), BlockSize)
		}
		out := make([]byte, len(x)/BlockSize*q4BlockBytes)
		for b := 0; b < len(x)/BlockSize; b++ {
			quantizeQ4Block(out[b*q4BlockBytes:(b+1)*q4BlockBytes], x[b*BlockSize:(b+1)*BlockSize])
		}
		return out, nil
	}
	return nil, fmt.Errorf("cannot encode %s (F32, F16, Q8_0 and Q4_0 are supported)", t)
}

// quantizeQ8Block writes one Q8_0 block (34 bytes) for 32 values.
func quantizeQ8Block(dst []byte, x []float32) {
	var amax float32
	for _, v := range x {
		amax = max(amax, float32(math.Abs(float64(v))))
	}
	d := amax / 127
	var id float32
	if d != 0 {
		id = 1 / d
	}
	binary.LittleEndian.PutUint16(dst, safetensors.Float32ToF16(d))
	for j, v := range x {
		dst[2+j] = byte(int8(math.Round(float64(float32(v * id)))))
	}
}

// quantizeQ4Block writes one Q4_0 block (18 bytes) for 32 values.
func quantizeQ4Block(dst []byte, x []float32) {
	var amax, m float32
	for _, v := range x {
		if a := float32(math.Abs(float64(v))); amax < a {
			amax, m = a, v
		}
	}
	d := m / -8
	var id float32
	if d != 0 {
		id = 1 / d
	}
	binary.LittleEndian.PutUint16(dst, safetensors.Float32ToF16(d))
	code := func(v float32) byte {
		// ggml: MIN(15, (int8_t)(v*id + 8.5f)); v*id is in [-8, 8], so the sum is positive and
		// the conversion truncates it.
		return byte(min(15, int8(float32(v*id)+8.5)))
	}
	for j := 0; j < BlockSize/2; j++ {
		dst[2+j] = code(x[j]) | code(x[j+BlockSize/2])<<4
	}
}

// Decode converts the bytes of n values of type t to float32.
func Decode(t GGMLType, data []byte, n int) ([]float32, error) {
	bv, bb := t.blockInfo()
	if bv == 0 {
		return nil, fmt.Errorf("cannot decode %s (F32, F16, Q8_0 and Q4_0 are supported)", t)
	}
	if n%bv != 0 || len(data) != n/bv*bb {
		return nil, fmt.Errorf("%s: %d bytes do not hold %d values (want %d)", t, len(data), n, n/bv*bb)
	}
	out := make([]float32, n)
	switch t {
	case F32:
		for i := range out {
			out[i] = math.Float32frombits(binary.LittleEndian.Uint32(data[4*i:]))
		}
	case F16:
		for i := range out {
			out[i] = safetensors.F16ToFloat32(binary.LittleEndian.Uint16(data[2*i:]))
		}
	case Q8_0:
		for b := 0; b < n/BlockSize; b++ {
			blk := data[b*q8BlockBytes:]
			d := safetensors.F16ToFloat32(binary.LittleEndian.Uint16(blk))
			for j := 0; j < BlockSize; j++ {
				out[b*BlockSize+j] = d * float32(int8(blk[2+j]))
			}
		}
	case Q4_0:
		for b := 0; b < n/BlockSize; b++ {
			blk := data[b*q4BlockBytes:]
			d := safetensors.F16ToFloat32(binary.LittleEndian.Uint16(blk))
			o := out[b*BlockSize:]
			for j := 0; j < BlockSize/2; j++ {
				o[j] = d * float32(int(blk[2+j]&0xF)-8)
				o[j+BlockSize/2] = d * float32(int(blk[2+j]>>4)-8)
			}
		}
	}
	return out, nil
}

// BlockBound returns the largest |x − dequantize(quantize(x))| that type t allows for the
// values of one block (or one value, for F16): it depends on the block's largest magnitude
// and the fp16 rounding of its scale, as the tests check. F32 is exact.
func BlockBound(t GGMLType, block []float32) float64 {
	var amax float64
	for _, v := range block {
		amax = max(amax, math.Abs(float64(v)))
	}
	switch t {
	case F16:
		// Half an fp16 ulp (2^-11 relative) for normal values, 2^-25 absolute below them.
		return max(amax*0x1p-11, 0x1p-25)
	case Q8_0:
		d := amax / 127
		// Rounding to the nearest code (d/2) plus the fp16 rounding of d times the largest code.
		return d/2 + 127*math.Abs(d-float64(safetensors.F16ToFloat32(safetensors.Float32ToF16(float32(d))))) + amax*1e-6
	case Q4_0:
		d := amax / 8
		// The clamp at code 15 costs up to a whole step at the end opposite to the largest value.
		return d + 8*math.Abs(d-math.Abs(float64(safetensors.F16ToFloat32(safetensors.Float32ToF16(float32(d)))))) + amax*1e-6
	}
	return 0
}
