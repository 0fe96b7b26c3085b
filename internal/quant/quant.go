// Package quant holds loractl's weight quantization formats: NF4 (QLoRA's 4-bit NormalFloat,
// blockwise absmax, optionally with double quantization of the absmax values), and group-wise
// symmetric int8 and int4. It quantizes float32 tensors, dequantizes them (whole, or an element
// or row range, into a caller's buffer) and accounts for their storage in bits per parameter.
//
// Layout of a Tensor (see docs/FORMATS.md for the files):
//
//   - The tensor is flattened row-major and cut into groups of GroupSize consecutive elements
//     (the last group may be shorter). Groups may span rows, as in bitsandbytes.
//   - NF4 and int4 codes are 4 bits, two per byte, the FIRST element of a pair in the HIGH
//     nibble (bitsandbytes' packing); an odd element count leaves the last low nibble 0.
//   - int8 codes are one byte each, two's complement.
//   - Each group has one float32 scale: its absmax for NF4 (value = code·absmax), absmax/127 for
//     int8 and absmax/7 for int4 (value = q·scale). With double quantization (NF4 only) the
//     absmax values are themselves stored as 8-bit codes, see DoubleQuant.
package quant

import (
	"fmt"
	"math"
	"strings"
)

// Format names a quantization format.
type Format string

// The formats.
const (
	NF4  Format = "nf4"
	Int8 Format = "int8"
	Int4 Format = "int4"
)

// DefaultGroupSize is the group (block) size of every format unless chosen otherwise: 64, as in
// QLoRA.
const DefaultGroupSize = 64

// DQBlock is the block size of double quantization: 256 absmax values share one float32 scale.
const DQBlock = 256

// ParseFormat maps "nf4", "int8", "int4" (any case) to a Format.
func ParseFormat(s string) (Format, error) {
	switch f := Format(strings.ToLower(s)); f {
	case NF4, Int8, Int4:
		return f, nil
	}
	return "", fmt.Errorf("unknown quantization format %q (want nf4, int8 or int4)", s)
}

// Options choose a format and its parameters.
type Options struct {
	Format      Format
	GroupSize   int  // elements per group; 0 means DefaultGroupSize
	DoubleQuant bool // NF4 only: 8-bit absmax values in blocks of DQBlock
}

// Validate checks o and fills in the default group size.
func (o *Options) Validate() error {
	if _, err := ParseFormat(string(o.Format)); err != nil {
		return err
	}
	o.Format = Format(strings.ToLower(string(o.Format)))
	if o.GroupSize == 0 {
		o.GroupSize = DefaultGroupSize
	}
	if o.GroupSize < 2 || o.GroupSize%2 != 0 {
		return fmt.Errorf("quantization group size %d: want an even number of at least 2 (default %d)", o.GroupSize, DefaultGroupSize)
	}
	if o.DoubleQuant && o.Format != NF4 {
		return fmt.Errorf("double quantization applies to nf4 only, not %s; drop --double-quant or use --format nf4", o.Format)
	}
	return nil
}

// Tensor is a quantized tensor.
type Tensor struct {
	Format    Format
	Shape     []int // the original shape; its product is N
	N         int   // number of elements
	GroupSize int

	// Codes holds the packed codes: (N+1)/2 bytes for NF4 and int4, N bytes for int8.
	Codes []byte

	// Scales holds one float32 per group (absmax for NF4, absmax/127 or absmax/7 for int8 and
	// int4). It is nil when DQ is set.
	Scales []float32

	// DQ holds the double-quantized absmax values of an NF4 tensor, or nil.
	DQ *DoubleQuant
}

// DoubleQuant is QLoRA's second quantization of the NF4 absmax values. With G groups:
//
//	Offset           the mean of the G absmax values (float32)
//	Codes  (G)       8-bit codes of absmax−Offset in blocks of DQBlock, over DynamicMap
//	Scales (⌈G/256⌉) the absmax of each block of absmax−Offset (float32)
//
// absmax[g] = DynamicMap[Codes[g]]·Scales[g/256] + Offset.
type DoubleQuant struct {
	Offset float32
	Codes  []uint8
	Scales []float32
}

// Groups returns the number of groups of t.
func (t *Tensor) Groups() int { return (t.N + t.GroupSize - 1) / t.GroupSize }

// Bytes returns the storage of t in bytes: codes, scales and double-quantization state.
func (t *Tensor) Bytes() int64 {
	n := int64(len(t.Codes)) + 4*int64(len(t.Scales))
	if t.DQ != nil {
		n += 4 + int64(len(t.DQ.Codes)) + 4*int64(len(t.DQ.Scales))
	}
	return n
}

// BitsPerParam returns t's storage in bits per element.
func (t *Tensor) BitsPerParam() float64 { return 8 * float64(t.Bytes()) / float64(t.N) }

// Len returns the number of elements (so that a Tensor can stand for a weight buffer).
func (t *Tensor) Len() int { return t.N }

// BitsPerParam returns the storage of a format in bits per element for large tensors (one
// float32 scale per group; with double quantization an 8-bit absmax per group and one float32
// per DQBlock groups): nf4 and int4 at group 64 give 4.5, int8 8.5, nf4 with double
// quantization 4 + 8/64 + 32/(64·256) ≈ 4.127.
func BitsPerParam(o Options) float64 {
	g := float64(o.GroupSize)
	if g == 0 {
		g = DefaultGroupSize
	}
	code := 4.0
	if o.Format == Int8 {
		code = 8
	}
	if o.DoubleQuant {
		return code + 8/g + 32/(g*DQBlock)
	}
	return code + 32/g
}

// NF4Code is the table of the 16 NF4 values of QLoRA (Dettmers et al. 2023), as bitsandbytes
// defines them: quantiles of N(0, 1) normalised to [-1, 1], with an exact zero (code 7).
var NF4Code = [16]float32{
	-1.0,
	-0.6961928009986877,
	-0.5250730514526367,
	-0.39491748809814453,
	-0.28444138169288635,
	-0.18477343022823334,
	-0.09105003625154495,
	0.0,
	0.07958029955625534,
	0.16093020141124725,
	0.24611230194568634,
	0.33791524171829224,
	0.44070982933044434,
	0.5626170039176941,
	0.7229568362236023,
	1.0,
}

// nf4Mid holds the midpoints between consecutive NF4 codes: a normalised value x gets the
// code k = #{i : x > nf4Mid[i]}, the nearest code with ties going to the lower one, which is
// what bitsandbytes' comparison tree (x > midpoint ? upper : lower) computes.
var nf4Mid = midpoints(NF4Code[:])

// NF4MaxHalfGap is the largest half-distance between two consecutive NF4 codes (between −1
// and −0.6961928, about 0.152): the bound on |x/absmax − code| of NF4 rounding.
var NF4MaxHalfGap = maxHalfGap(NF4Code[:])

// nf4Index returns the NF4 code of a normalised value x in [-1, 1].
func nf4Index(x float32) byte { return byte(nearestCode(nf4Mid, x)) }

// midpoints returns the midpoints between consecutive values of an increasing code table.
func midpoints(codes []float32) []float32 {
	m := make([]float32, len(codes)-1)
	for i := range m {
		m[i] = (codes[i] + codes[i+1]) / 2
	}
	return m
}

// maxHalfGap returns the largest half-distance between consecutive values of a code table.
func maxHalfGap(codes []float32) float32 {
	var g float32
	for i := 0; i+1 < len(codes); i++ {
		g = max(g, (codes[i+1]-codes[i])/2)
	}
	return g
}

// nearestCode returns the index of the code nearest to x, ties to the lower one: the number
// of midpoints strictly below x (binary search).
func nearestCode(mid []float32, x float32) int {
	lo, hi := 0, len(mid)
	for lo < hi {
		m := (lo + hi) / 2
		if x > mid[m] {
			lo = m + 1
		} else {
			hi = m
		}
	}
	return lo
}

// NonFiniteError reports a weight that is NaN or infinite.
type NonFiniteError struct {
	Tensor string
	Index  int
	Value  float32
}

func (e *NonFiniteError) Error() string {
	return fmt.Sprintf("tensor %s: element %d is %v; quantization needs finite weights (the checkpoint is corrupt or the weights diverged; re-export it from a good copy)", e.Tensor, e.Index, e.Value)
}

// Quantize quantizes x, a tensor of the given shape called name (for errors), as o says.
// NaN or infinite values are an error naming the tensor.
func Quantize(name string, x []float32, shape []int, o Options) (*Tensor, error) {
	if err := o.Validate(); err != nil {
		return nil, err
	}
	n := 1
	for _, d := range shape {
		n *= d
	}
	if n != len(x) {
		return nil, fmt.Errorf("tensor %s: shape %v has %d elements but %d values were given", name, shape, n, len(x))
	}
	for i, v := range x {
		if math.IsNaN(float64(v)) || math.IsInf(float64(v), 0) {
			return nil, &NonFiniteError{Tensor: name, Index: i, Value: v}
		}
	}
	t := &Tensor{Format: o.Format, Shape: append([]int(nil), shape...), N: n, GroupSize: o.GroupSize}
	G := t.Groups()
	if o.Format == Int8 {
		t.Codes = make([]byte, n)
	} else {
		t.Codes = make([]byte, (n+1)/2)
	}
	absmax := make([]float32, G) // (G,)
	for g := range G {
		lo, hi := g*t.GroupSize, min((g+1)*t.GroupSize, n)
		var m float32
		for _, v := range x[lo:hi] {
			m = max(m, abs32(v))
		}
		absmax[g] = m
	}
	switch o.Format {
	case NF4:
		scale := absmax
		if o.DoubleQuant {
			t.DQ = doubleQuantize(absmax)
			// Quantize against the absmax the reader will see, so that the stored codes are the
			// nearest codes for the dequantized scale (values beyond it clamp to ±1).
			scale = t.DQ.absmax(G)
		} else {
			t.Scales = absmax
		}
		for g := range G {
			lo, hi := g*t.GroupSize, min((g+1)*t.GroupSize, n)
			// The inverse in float64: 1/absmax overflows float32 when absmax is subnormal.
			var inv float64
			if scale[g] > 0 {
				inv = 1 / float64(scale[g])
			}
			for i := lo; i < hi; i++ {
				v := min(max(float32(float64(x[i])*inv), -1), 1)
				putNibble(t.Codes, i, nf4Index(v))
			}
		}
	case Int8, Int4:
		qmax := float32(127)
		if o.Format == Int4 {
			qmax = 7
		}
		t.Scales = make([]float32, G)
		for g := range G {
			lo, hi := g*t.GroupSize, min((g+1)*t.GroupSize, n)
			s := absmax[g] / qmax
			t.Scales[g] = s
			var inv float64 // float64: 1/s overflows float32 when s is subnormal
			if s > 0 {
				inv = 1 / float64(s)
			}
			for i := lo; i < hi; i++ {
				q := float32(math.Round(float64(x[i]) * inv))
				q = min(max(q, -qmax), qmax)
				if o.Format == Int8 {
					t.Codes[i] = byte(int8(q))
				} else {
					putNibble(t.Codes, i, byte(int(q)+8)) // offset binary: q+8 in 1..15
				}
			}
		}
	}
	return t, nil
}

// putNibble stores a 4-bit code for element i: even i in the high nibble, odd in the low one.
func putNibble(b []byte, i int, c byte) {
	if i%2 == 0 {
		b[i/2] = b[i/2]&0x0f | c<<4
	} else {
		b[i/2] = b[i/2]&0xf0 | c&0x0f
	}
}

// nibble returns the 4-bit code of element i.
func nibble(b []byte, i int) byte {
	if i%2 == 0 {
		return b[i/2] >> 4
	}
	return b[i/2] & 0x0f
}

func abs32(x float32) float32 { return math.Float32frombits(math.Float32bits(x) &^ (1 << 31)) }

// Absmax returns the per-group scale that dequantization multiplies NF4 codes with (the
// dequantized absmax under double quantization), or the int8/int4 scales.
func (t *Tensor) Absmax() []float32 {
	if t.DQ != nil {
		return t.DQ.absmax(t.Groups())
	}
	return t.Scales
}

// Dequantize returns t as float32 values, laid out like the original tensor.
func (t *Tensor) Dequantize() []float32 {
	out := make([]float32, t.N)
	t.DequantizeRange(out, 0, t.N)
	return out
}

// DequantizeRange writes elements [lo, hi) of t into dst[0:hi-lo]. It allocates nothing and
// may run concurrently on disjoint ranges.
func (t *Tensor) DequantizeRange(dst []float32, lo, hi int) {
	if lo < 0 || hi > t.N || lo > hi || len(dst) < hi-lo {
		panic(fmt.Sprintf("quant: DequantizeRange(%d, %d) of a tensor of %d elements into %d values", lo, hi, t.N, len(dst)))
	}
	gs := t.GroupSize
	for i := lo; i < hi; {
		g := i / gs
		end := min((g+1)*gs, hi) // the part of group g inside the range
		var sc float32
		if t.DQ != nil {
			sc = t.DQ.value(g)
		} else {
			sc = t.Scales[g]
		}
		d := dst[i-lo : end-lo]
		switch t.Format {
		case NF4:
			for k := range d {
				d[k] = NF4Code[nibble(t.Codes, i+k)] * sc
			}
		case Int8:
			for k, c := range t.Codes[i:end] {
				d[k] = float32(int8(c)) * sc
			}
		case Int4:
			for k := range d {
				d[k] = float32(int(nibble(t.Codes, i+k))-8) * sc
			}
		}
		i = end
	}
}

// DequantizeRows writes rows [r0, r1) of a 2-D tensor into dst (r1−r0 rows of Shape[1]).
func (t *Tensor) DequantizeRows(dst []float32, r0, r1 int) {
	if len(t.Shape) != 2 {
		panic(fmt.Sprintf("quant: DequantizeRows of a tensor of shape %v (want 2-D)", t.Shape))
	}
	c := t.Shape[1]
	t.DequantizeRange(dst, r0*c, r1*c)
}

// DequantizeInto writes the whole tensor into dst (len ≥ N) with up to `workers` goroutines
// splitting the groups: the fast path of on-the-fly dequantization before a product.
func (t *Tensor) DequantizeInto(dst []float32, workers int) {
	if workers <= 1 || t.N < 1<<16 {
		t.DequantizeRange(dst, 0, t.N)
		return
	}
	G := t.Groups()
	per := (G + workers - 1) / workers
	done := make(chan struct{}, workers)
	started := 0
	for g0 := 0; g0 < G; g0 += per {
		lo, hi := g0*t.GroupSize, min((g0+per)*t.GroupSize, t.N)
		started++
		go func() {
			t.DequantizeRange(dst[lo:hi], lo, hi)
			done <- struct{}{}
		}()
	}
	for range started {
		<-done
	}
}
