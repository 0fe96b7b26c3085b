package safetensors

import (
	"encoding/binary"
	"math"
	"math/rand/v2"
	"strings"
	"testing"
)

// pow2 returns 2^e as a float32 (exact for the exponents used here).
func pow2(e int) float32 { return float32(math.Ldexp(1, e)) }

func TestDTypeSize(t *testing.T) {
	for _, c := range []struct {
		d     DType
		size  int
		float bool
	}{
		{Bool, 1, false}, {U8, 1, false}, {I8, 1, false}, {I16, 2, false}, {U16, 2, false},
		{F16, 2, true}, {BF16, 2, true}, {I32, 4, false}, {U32, 4, false}, {F32, 4, true},
		{F64, 8, true}, {I64, 8, false}, {U64, 8, false}, {F8E4M3, 1, true}, {F8E5M2, 1, true},
		{"F4", 0, false}, {"f32", 0, false}, {"", 0, false},
	} {
		if c.d.Size() != c.size || c.d.IsFloat() != c.float || c.d.Valid() != (c.size != 0) {
			t.Errorf("%q: Size %d IsFloat %v, want %d %v", c.d, c.d.Size(), c.d.IsFloat(), c.size, c.float)
		}
	}
}

// Every 16-bit pattern (NaNs and subnormals included) must survive decode → encode.
func TestRoundTrip16Exhaustive(t *testing.T) {
	for _, c := range []struct {
		dt  DType
		dec func(uint16) float32
		enc func(float32) uint16
	}{
		{F16, F16ToFloat32, Float32ToF16},
		{BF16, BF16ToFloat32, Float32ToBF16},
	} {
		src := make([]byte, 2*65536)
		for i := 0; i < 65536; i++ {
			h := uint16(i)
			f := c.dec(h)
			if got := c.enc(f); got != h {
				t.Fatalf("%s: %#04x → %v → %#04x", c.dt, h, f, got)
			}
			binary.LittleEndian.PutUint16(src[2*i:], h)
		}
		// Same through the slice API.
		vals, err := DecodeFloat32(c.dt, src)
		if err != nil {
			t.Fatal(err)
		}
		back, err := EncodeFloat32(c.dt, vals)
		if err != nil {
			t.Fatal(err)
		}
		if string(back) != string(src) {
			t.Fatalf("%s: slice round trip differs", c.dt)
		}
	}
}

func TestRoundTrip8Exhaustive(t *testing.T) {
	for i := 0; i < 256; i++ {
		b := uint8(i)
		if got := Float32ToF8E5M2(F8E5M2ToFloat32(b)); got != b {
			t.Errorf("F8_E5M2 %#02x → %v → %#02x", b, F8E5M2ToFloat32(b), got)
		}
		if got := Float32ToF8E4M3(F8E4M3ToFloat32(b)); got != b {
			t.Errorf("F8_E4M3 %#02x → %v → %#02x", b, F8E4M3ToFloat32(b), got)
		}
		// E5M2 is the top byte of F16.
		if a, h := F8E5M2ToFloat32(b), F16ToFloat32(uint16(b)<<8); math.Float32bits(a) != math.Float32bits(h) {
			t.Errorf("F8_E5M2 %#02x = %v, F16 %#04x = %v", b, a, uint16(b)<<8, h)
		}
	}
}

// Hand-derived decodings: value = (-1)^s × 2^(e-bias) × 1.m, or 2^(1-bias) × 0.m.
func TestDecodeKnownValues(t *testing.T) {
	nan := float32(math.NaN())
	for _, c := range []struct {
		dt   DType
		bits uint16
		want float32
	}{
		{F16, 0x3c00, 1}, {F16, 0xc000, -2}, {F16, 0x7bff, 65504}, {F16, 0x0001, pow2(-24)},
		{F16, 0x0400, pow2(-14)}, {F16, 0x03ff, 1023 * pow2(-24)}, {F16, 0x3555, 1365.0 / 4096},
		{F16, 0x7c00, float32(math.Inf(1))}, {F16, 0xfc00, float32(math.Inf(-1))},
		{F16, 0x8000, float32(math.Copysign(0, -1))}, {F16, 0x7e00, nan}, {F16, 0xfc01, nan},
		{BF16, 0x3f80, 1}, {BF16, 0x4049, 3.140625}, {BF16, 0xc2f7, -123.5},
		{BF16, 0x7f7f, float32((2 - math.Ldexp(1, -7)) * math.Ldexp(1, 127))}, {BF16, 0x0001, float32(math.Ldexp(1, -133))},
		{BF16, 0xff80, float32(math.Inf(-1))}, {BF16, 0x7fc0, nan},
		{F8E4M3, 0x38, 1}, {F8E4M3, 0x7e, 448}, {F8E4M3, 0xfe, -448}, {F8E4M3, 0x77, 240},
		{F8E4M3, 0x78, 256}, {F8E4M3, 0x01, pow2(-9)}, {F8E4M3, 0x07, 7 * pow2(-9)},
		{F8E4M3, 0x08, pow2(-6)}, {F8E4M3, 0x04, pow2(-7)}, {F8E4M3, 0xc0, -2},
		{F8E4M3, 0x7f, nan}, {F8E4M3, 0xff, nan}, {F8E4M3, 0x7c, 384}, // 0x78-0x7e are finite
		{F8E5M2, 0x3c, 1}, {F8E5M2, 0x7b, 57344}, {F8E5M2, 0x01, pow2(-16)}, {F8E5M2, 0xb8, -0.5},
		{F8E5M2, 0x7c, float32(math.Inf(1))}, {F8E5M2, 0x7d, nan}, {F8E5M2, 0xfe, nan},
	} {
		var src []byte
		if c.dt.Size() == 2 {
			src = binary.LittleEndian.AppendUint16(nil, c.bits)
		} else {
			src = []byte{uint8(c.bits)}
		}
		got, err := DecodeFloat32(c.dt, src)
		if err != nil {
			t.Fatal(err)
		}
		g := got[0]
		ok := math.Float32bits(g) == math.Float32bits(c.want)
		if c.want != c.want {
			ok = g != g && math.Signbit(float64(g)) == (c.bits&(1<<(8*c.dt.Size()-1)) != 0)
		}
		if !ok {
			t.Errorf("%s %#x: got %v, want %v", c.dt, c.bits, g, c.want)
		}
	}
}

// Hand-derived encodings, focusing on ties (round half to even), overflow and subnormals.
func TestEncodeKnownValues(t *testing.T) {
	inf := float32(math.Inf(1))
	for _, c := range []struct {
		dt   DType
		in   float32
		want uint16
	}{
		{F16, 1 + pow2(-11), 0x3c00},             // tie → even (mantissa 0)
		{F16, 1 + 3*pow2(-11), 0x3c02},           // tie between 0x3c01 and 0x3c02 → even
		{F16, 1 + pow2(-11) + pow2(-20), 0x3c01}, // just above the tie
		{F16, 65504, 0x7bff},                     // max finite
		{F16, 65519, 0x7bff},                     // below the tie with 65536
		{F16, 65520, 0x7c00},                     // tie between 0x7bff (odd) and "65536" → Inf
		{F16, -1e6, 0xfc00},
		{F16, inf, 0x7c00},
		{F16, pow2(-24), 0x0001},                  // smallest subnormal
		{F16, pow2(-25), 0x0000},                  // tie → even (0)
		{F16, pow2(-25) + pow2(-40), 0x0001},      // above the tie
		{F16, 3 * pow2(-25), 0x0002},              // tie between 1 and 2 → even
		{F16, 1023*pow2(-24) + pow2(-25), 0x0400}, // rounds up from subnormal to the smallest normal
		{F16, float32(math.Copysign(0, -1)), 0x8000},
		{F16, float32(math.SmallestNonzeroFloat32), 0x0000},
		{F16, 0.1, 0x2e66},             // 0.1 = 1.6×2^-4; 0.6×1024 = 614.4 → 614 = 0x266
		{BF16, 1 + pow2(-8), 0x3f80},   // tie → even
		{BF16, 1 + 3*pow2(-8), 0x3f82}, // tie → even
		{BF16, math.MaxFloat32, 0x7f80},
		{BF16, math.Float32frombits(0x00008000), 0x0000}, // subnormal tie → even
		{BF16, math.Float32frombits(0x00018000), 0x0002},
		{BF16, -3.140625, 0xc049},
		{F8E4M3, 1, 0x38}, {F8E4M3, 448, 0x7e}, {F8E4M3, 464, 0x7e}, {F8E4M3, 465, 0x7f},
		{F8E4M3, 480, 0x7f}, {F8E4M3, -1e9, 0xff}, {F8E4M3, inf, 0x7f}, {F8E4M3, -inf, 0xff},
		{F8E4M3, pow2(-9), 0x01}, {F8E4M3, pow2(-10), 0x00}, {F8E4M3, 1.5 * pow2(-10), 0x01},
		{F8E4M3, 3 * pow2(-10), 0x02}, {F8E4M3, 240, 0x77}, {F8E4M3, 248, 0x78}, // 248: tie 240/256 → even 256
		{F8E5M2, 1, 0x3c}, {F8E5M2, 57344, 0x7b}, {F8E5M2, 61439, 0x7b}, {F8E5M2, 61440, 0x7c},
		{F8E5M2, pow2(-16), 0x01}, {F8E5M2, pow2(-17), 0x00}, {F8E5M2, -0.5, 0xb8}, {F8E5M2, 1.125, 0x3c}, // tie → even
	} {
		out, err := EncodeFloat32(c.dt, []float32{c.in})
		if err != nil {
			t.Fatal(err)
		}
		var got uint16
		if c.dt.Size() == 2 {
			got = binary.LittleEndian.Uint16(out)
		} else {
			got = uint16(out[0])
		}
		if got != c.want {
			t.Errorf("%s(%v): got %#x, want %#x", c.dt, c.in, got, c.want)
		}
	}
}

func TestEncodeNaN(t *testing.T) {
	for _, bits := range []uint32{0x7fc00000, 0xffc00000, 0x7f800001, 0x7fa00000, 0xff800fff} {
		f := math.Float32frombits(bits)
		neg := bits>>31 == 1
		for _, dt := range []DType{F16, BF16, F8E4M3, F8E5M2, F32, F64} {
			b, _ := EncodeFloat32(dt, []float32{f})
			back, _ := DecodeFloat32(dt, b)
			if back[0] == back[0] || math.Signbit(float64(back[0])) != neg {
				t.Errorf("%s: NaN %#08x came back as %v (sign kept: %v)", dt, bits, back[0], math.Signbit(float64(back[0])) == neg)
			}
		}
	}
}

// For random float32s (all exponents), the encoding must be the nearest representable
// value, ties to the even code: checked against both neighbouring codes using the decoder.
func TestEncodeNearestRandom(t *testing.T) {
	rng := rand.New(rand.NewPCG(1, 2))
	type format struct {
		dt     DType
		bits   uint
		dec    func(uint32) float32
		enc    func(float32) uint32
		maxPos uint32 // largest finite positive code
	}
	formats := []format{
		{F16, 16, func(c uint32) float32 { return F16ToFloat32(uint16(c)) }, func(f float32) uint32 { return uint32(Float32ToF16(f)) }, 0x7bff},
		{BF16, 16, func(c uint32) float32 { return BF16ToFloat32(uint16(c)) }, func(f float32) uint32 { return uint32(Float32ToBF16(f)) }, 0x7f7f},
		{F8E4M3, 8, func(c uint32) float32 { return F8E4M3ToFloat32(uint8(c)) }, func(f float32) uint32 { return uint32(Float32ToF8E4M3(f)) }, 0x7e},
		{F8E5M2, 8, func(c uint32) float32 { return F8E5M2ToFloat32(uint8(c)) }, func(f float32) uint32 { return uint32(Float32ToF8E5M2(f)) }, 0x7b},
	}
	for _, fm := range formats {
		signBit := uint32(1) << (fm.bits - 1)
		maxVal := float64(fm.dec(fm.maxPos))
		checked := 0
		for i := 0; i < 200000; i++ {
			f := math.Float32frombits(rng.Uint32())
			if f != f || math.IsInf(float64(f), 0) {
				continue
			}
			// Concentrate on the format's range: rescale the exponent for narrow formats.
			if fm.bits == 8 || fm.dt == F16 {
				f = float32(math.Ldexp(float64(rng.Float32()), rng.IntN(46)-28))
				if rng.IntN(2) == 0 {
					f = -f
				}
			}
			c := fm.enc(f)
			abs := math.Abs(float64(f))
			mag := c &^ signBit
			if mag > fm.maxPos { // overflow: must be beyond max + half an ulp
				if abs < maxVal {
					t.Fatalf("%s(%v) overflowed to %#x", fm.dt, f, c)
				}
				continue
			}
			if (c&signBit != 0) != math.Signbit(float64(f)) {
				t.Fatalf("%s(%v): sign lost in %#x", fm.dt, f, c)
			}
			d := math.Abs(math.Abs(float64(fm.dec(c))) - abs)
			for _, nb := range []uint32{mag - 1, mag + 1} {
				if mag == 0 && nb == mag-1 || nb > fm.maxPos {
					continue
				}
				dn := math.Abs(float64(fm.dec(nb)) - abs)
				if dn < d || (dn == d && mag&1 == 1) {
					t.Fatalf("%s(%v) = %#x (%v) but %#x (%v) is nearer or the even tie", fm.dt, f, c, fm.dec(c), nb, fm.dec(nb))
				}
			}
			checked++
		}
		t.Logf("%s: %d random values rounded to nearest-even", fm.dt, checked)
	}
}

func TestF64Conversion(t *testing.T) {
	in := []float64{1 + math.Ldexp(1, -24), 1 + math.Ldexp(1, -24) + math.Ldexp(1, -50), -0.1, 1e300}
	want := []float32{1, 1 + pow2(-23), -0.1, float32(math.Inf(1))}
	var src []byte
	for _, v := range in {
		src = binary.LittleEndian.AppendUint64(src, math.Float64bits(v))
	}
	got, err := DecodeFloat32(F64, src)
	if err != nil {
		t.Fatal(err)
	}
	for i := range want {
		if got[i] != want[i] {
			t.Errorf("F64 %v → %v, want %v", in[i], got[i], want[i])
		}
	}
	enc, _ := EncodeFloat32(F64, []float32{0.1})
	if v := math.Float64frombits(binary.LittleEndian.Uint64(enc)); v != float64(float32(0.1)) {
		t.Errorf("F64 encode 0.1 = %v", v)
	}
}

func TestConversionErrors(t *testing.T) {
	for _, c := range []struct {
		dt   DType
		src  []byte
		want string
	}{
		{I32, make([]byte, 4), "not a float dtype"},
		{"F4", nil, "not a float dtype"},
		{F32, make([]byte, 6), "not a multiple"},
		{BF16, make([]byte, 3), "not a multiple"},
	} {
		if _, err := DecodeFloat32(c.dt, c.src); err == nil || !strings.Contains(err.Error(), c.want) {
			t.Errorf("DecodeFloat32(%s, %d bytes): %v, want %q", c.dt, len(c.src), err, c.want)
		}
	}
	if _, err := EncodeFloat32(U8, []float32{1}); err == nil || !strings.Contains(err.Error(), "not a float dtype") {
		t.Errorf("EncodeFloat32(U8): %v", err)
	}
}
