package quant

import (
	"encoding/binary"
	"errors"
	"math"
	"math/rand/v2"
	"slices"
	"strings"
	"testing"
	"time"
)

// newRNG returns a generator with a fresh seed, logged so that a failure can be replayed.
func newRNG(t testing.TB) *rand.Rand {
	seed := uint64(time.Now().UnixNano())
	t.Logf("seed %d", seed)
	return rand.New(rand.NewPCG(seed, 0x9e37))
}

// randWeights returns n nonzero values drawn from one of several distributions (gaussian,
// heavy-tailed, uniform, with outliers), so that groups see different absmax patterns.
func randWeights(rng *rand.Rand, n int) []float32 {
	x := make([]float32, n)
	kind := rng.IntN(4)
	for i := range x {
		var v float64
		switch kind {
		case 0:
			v = rng.NormFloat64() * 0.02
		case 1:
			v = rng.NormFloat64() * math.Exp(rng.NormFloat64())
		case 2:
			v = 2*rng.Float64() - 1
		case 3:
			v = rng.NormFloat64()
			if rng.IntN(50) == 0 {
				v *= 40
			}
		}
		if v == 0 {
			v = 1e-3
		}
		x[i] = float32(v)
	}
	return x
}

// groupAbsmax returns the absmax of each group of x.
func groupAbsmax(x []float32, g int) []float32 {
	out := make([]float32, (len(x)+g-1)/g)
	for i, v := range x {
		out[i/g] = max(out[i/g], abs32(v))
	}
	return out
}

func TestNF4TableIsQLoRAs(t *testing.T) {
	if NF4Code[0] != -1 || NF4Code[7] != 0 || NF4Code[15] != 1 {
		t.Fatalf("NF4 table ends/zero: %v", NF4Code)
	}
	for i := 1; i < 16; i++ {
		if NF4Code[i] <= NF4Code[i-1] {
			t.Fatalf("NF4 table not increasing at %d: %v", i, NF4Code)
		}
	}
	// The largest gap is the bottom one, between −1 and −0.6961928.
	if want := float32((1 - 0.6961928009986877) / 2); math.Abs(float64(NF4MaxHalfGap-want)) > 1e-7 {
		t.Fatalf("NF4MaxHalfGap = %v, want %v", NF4MaxHalfGap, want)
	}
}

func TestDynamicMap(t *testing.T) {
	m := DynamicMap
	if m[0] != -m[255] && m[255] != 1 {
		t.Fatalf("dynamic map ends: %v %v", m[0], m[255])
	}
	if m[255] != 1 || m[127] != 0 {
		t.Fatalf("dynamic map: want 1 at 255 and 0 at 127, got %v and %v", m[255], m[127])
	}
	for i := 1; i < 256; i++ {
		if m[i] <= m[i-1] {
			t.Fatalf("dynamic map not increasing at %d: %v <= %v", i, m[i], m[i-1])
		}
	}
	// The smallest magnitude is 1e-6 · (0.1+1)/2 = 5.5e-7.
	if got := m[128]; math.Abs(float64(got)-5.5e-7) > 1e-12 {
		t.Fatalf("smallest positive code %v, want 5.5e-7", got)
	}
}

// TestNF4HandVector checks codes, packing (first element in the high nibble) and absmax against
// bytes worked out by hand from the NF4 table and its midpoints.
func TestNF4HandVector(t *testing.T) {
	// Group 0 (absmax 1):  1 → 15; −0.5 → 2 (−0.525 is nearer than −0.395); 0.25 → 10 (0.2461);
	//                      0 → 7.
	// Group 1 (absmax 2):  2 → 15; −2 → 0; 0.1/2 = 0.05 → 8 (above the 0.0398 midpoint);
	//                      1.2/2 = 0.6 → 13 (0.5626, below the 0.6428 midpoint).
	x := []float32{1, -0.5, 0.25, 0, 2, -2, 0.1, 1.2}
	q, err := Quantize("hand", x, []int{2, 4}, Options{Format: NF4, GroupSize: 4})
	if err != nil {
		t.Fatal(err)
	}
	if want := []byte{0xF2, 0xA7, 0xF0, 0x8D}; !slices.Equal(q.Codes, want) {
		t.Fatalf("codes % X, want % X", q.Codes, want)
	}
	if want := []float32{1, 2}; !slices.Equal(q.Scales, want) {
		t.Fatalf("absmax %v, want %v", q.Scales, want)
	}
	wantDeq := []float32{1, NF4Code[2], NF4Code[10], 0, 2, -2, 2 * NF4Code[8], 2 * NF4Code[13]}
	if got := q.Dequantize(); !slices.Equal(got, wantDeq) {
		t.Fatalf("dequantized %v, want %v", got, wantDeq)
	}

	// An odd count: the last low nibble stays 0. −1 → 0, 1 → 15, 0.5 → 12 (below 0.5017).
	q, err = Quantize("odd", []float32{-1, 1, 0.5}, []int{3}, Options{Format: NF4, GroupSize: 4})
	if err != nil {
		t.Fatal(err)
	}
	if want := []byte{0x0F, 0xC0}; !slices.Equal(q.Codes, want) {
		t.Fatalf("odd codes % X, want % X", q.Codes, want)
	}

	// A value exactly on a midpoint goes to the lower code, as bitsandbytes' x > mid tree does.
	mid := (NF4Code[7] + NF4Code[8]) / 2
	q, err = Quantize("tie", []float32{1, mid}, []int{2}, Options{Format: NF4, GroupSize: 2})
	if err != nil {
		t.Fatal(err)
	}
	if want := []byte{0xF7}; !slices.Equal(q.Codes, want) {
		t.Fatalf("tie codes % X, want % X", q.Codes, want)
	}
}

func TestIntHandVectors(t *testing.T) {
	// int8, absmax 1.27 → scale 0.01: 127, −64, 1, −1 (two's complement bytes).
	q, err := Quantize("i8", []float32{1.27, -0.64, 0.013, -0.012}, []int{4}, Options{Format: Int8, GroupSize: 4})
	if err != nil {
		t.Fatal(err)
	}
	if want := []byte{0x7F, 0xC0, 0x01, 0xFF}; !slices.Equal(q.Codes, want) {
		t.Fatalf("int8 codes % X, want % X", q.Codes, want)
	}
	if math.Abs(float64(q.Scales[0])-0.01) > 1e-8 {
		t.Fatalf("int8 scale %v, want 0.01", q.Scales[0])
	}
	// int4, absmax 0.7 → scale 0.1: 7, −7, 3, −2 stored as q+8 = 15, 1, 11, 6, high nibble first.
	q, err = Quantize("i4", []float32{0.7, -0.7, 0.3, -0.16}, []int{4}, Options{Format: Int4, GroupSize: 4})
	if err != nil {
		t.Fatal(err)
	}
	if want := []byte{0xF1, 0xB6}; !slices.Equal(q.Codes, want) {
		t.Fatalf("int4 codes % X, want % X", q.Codes, want)
	}
}

// checkBound quantizes x and checks every element's error against the format's bound for its
// group; it returns the largest error relative to the group absmax.
func checkBound(t *testing.T, x []float32, shape []int, o Options) float64 {
	t.Helper()
	q, err := Quantize("w", x, shape, o)
	if err != nil {
		t.Fatal(err)
	}
	got := q.Dequantize()
	am := groupAbsmax(x, o.GroupSize)
	scale := q.Absmax()
	worst := 0.0
	for i, v := range x {
		g := i / o.GroupSize
		var bound float64
		switch o.Format {
		case NF4:
			s := float64(scale[g])
			// Rounding to the nearest code of the (possibly double-quantized) absmax, plus the
			// clamp of values beyond a dequantized absmax that came out smaller than the true one.
			bound = s*float64(NF4MaxHalfGap) + math.Abs(float64(am[g])-s)
		case Int8, Int4:
			bound = float64(scale[g]) / 2
		}
		bound = bound*(1+1e-5) + 1e-7*float64(am[g]) + 1e-30
		e := math.Abs(float64(got[i]) - float64(v))
		if e > bound {
			t.Fatalf("%s group %d element %d: |%v − %v| = %g exceeds the bound %g (absmax %v)", o.Format, g, i, got[i], v, e, bound, am[g])
		}
		if am[g] > 0 {
			worst = max(worst, e/float64(am[g]))
		}
	}
	if o.DoubleQuant {
		// The dequantized absmax is within a half-gap of the dynamic map times the block scale.
		for g := range am {
			bs := float64(q.DQ.Scales[g/DQBlock])
			// code·scale + offset is evaluated in float32: besides the half gap, allow a few ulps of
			// the terms involved (with absmax values near 1e7 one ulp is already about 1).
			ulps := 4 * 0x1p-23 * (bs + math.Abs(float64(q.DQ.Offset)) + float64(am[g]))
			bound := bs*float64(DynamicMaxHalfGap)*(1+1e-5) + 1e-6*float64(am[g]) + ulps
			if e := math.Abs(float64(scale[g]) - float64(am[g])); e > bound {
				t.Fatalf("double-quantized absmax of group %d: %v vs %v, error %g over the bound %g", g, scale[g], am[g], e, bound)
			}
		}
	}
	return worst
}

func TestRoundTripBounds(t *testing.T) {
	rng := newRNG(t)
	for _, o := range []Options{
		{Format: NF4, GroupSize: 64}, {Format: NF4, GroupSize: 64, DoubleQuant: true}, {Format: NF4, GroupSize: 32},
		{Format: Int8, GroupSize: 64}, {Format: Int8, GroupSize: 128}, {Format: Int4, GroupSize: 64}, {Format: Int4, GroupSize: 16},
	} {
		worst := 0.0
		for range 20 {
			rows, cols := 1+rng.IntN(80), 1+rng.IntN(300)
			if rng.IntN(3) == 0 {
				rows = 300 + rng.IntN(200) // enough groups for several double-quantization blocks
			}
			x := randWeights(rng, rows*cols)
			worst = max(worst, checkBound(t, x, []int{rows, cols}, o))
		}
		t.Logf("%s group %d dq=%v: worst |error|/absmax %.4f", o.Format, o.GroupSize, o.DoubleQuant, worst)
	}
}

func TestDequantizeRangesMatchWhole(t *testing.T) {
	rng := newRNG(t)
	for _, o := range []Options{{Format: NF4}, {Format: NF4, DoubleQuant: true}, {Format: Int8}, {Format: Int4}} {
		rows, cols := 3+rng.IntN(40), 1+rng.IntN(200)
		x := randWeights(rng, rows*cols)
		q, err := Quantize("w", x, []int{rows, cols}, o)
		if err != nil {
			t.Fatal(err)
		}
		whole := q.Dequantize()
		par := make([]float32, q.N)
		q.DequantizeInto(par, 3)
		if !slices.Equal(par, whole) {
			t.Fatalf("%s: DequantizeInto differs from Dequantize", o.Format)
		}
		for range 10 {
			lo := rng.IntN(q.N)
			hi := lo + rng.IntN(q.N-lo+1)
			part := make([]float32, hi-lo)
			q.DequantizeRange(part, lo, hi)
			if !slices.Equal(part, whole[lo:hi]) {
				t.Fatalf("%s: range [%d, %d) differs from the whole tensor's", o.Format, lo, hi)
			}
			r0 := rng.IntN(rows)
			r1 := r0 + rng.IntN(rows-r0+1)
			rs := make([]float32, (r1-r0)*cols)
			q.DequantizeRows(rs, r0, r1)
			if !slices.Equal(rs, whole[r0*cols:r1*cols]) {
				t.Fatalf("%s: rows [%d, %d) differ from the whole tensor's", o.Format, r0, r1)
			}
		}
	}
}

func TestNonFiniteRejected(t *testing.T) {
	rng := newRNG(t)
	for _, bad := range []float32{float32(math.NaN()), float32(math.Inf(1)), float32(math.Inf(-1))} {
		x := randWeights(rng, 128)
		at := rng.IntN(len(x))
		x[at] = bad
		_, err := Quantize("model.layers.3.mlp.up_proj.weight", x, []int{2, 64}, Options{Format: NF4})
		var nf *NonFiniteError
		if !errors.As(err, &nf) || nf.Index != at {
			t.Fatalf("value %v at %d: got error %v, want a NonFiniteError at %d", bad, at, err, at)
		}
		if !strings.Contains(err.Error(), "model.layers.3.mlp.up_proj.weight") {
			t.Fatalf("error does not name the tensor: %v", err)
		}
	}
}

func TestBadOptions(t *testing.T) {
	x := []float32{1, 2, 3, 4}
	for _, o := range []Options{{Format: "nf3"}, {Format: NF4, GroupSize: 3}, {Format: Int8, DoubleQuant: true}} {
		if _, err := Quantize("w", x, []int{4}, o); err == nil {
			t.Fatalf("options %+v accepted", o)
		}
	}
	if _, err := Quantize("w", x, []int{3}, Options{Format: NF4}); err == nil || !strings.Contains(err.Error(), "shape") {
		t.Fatalf("shape mismatch: %v", err)
	}
}

func TestBitsPerParam(t *testing.T) {
	rng := newRNG(t)
	x := randWeights(rng, 256*1024) // 4096 groups of 64: 16 double-quantization blocks
	cases := []struct {
		o    Options
		want float64
	}{
		{Options{Format: NF4, GroupSize: 64}, 4.5},
		{Options{Format: Int4, GroupSize: 64}, 4.5},
		{Options{Format: Int8, GroupSize: 64}, 8.5},
		{Options{Format: NF4, GroupSize: 64, DoubleQuant: true}, 4 + 8.0/64 + 32.0/(64*256)},
	}
	for _, c := range cases {
		q, err := Quantize("w", x, []int{256, 1024}, c.o)
		if err != nil {
			t.Fatal(err)
		}
		got := q.BitsPerParam()
		if math.Abs(got-c.want) > 1e-3 || math.Abs(BitsPerParam(c.o)-c.want) > 1e-12 {
			t.Fatalf("%+v: %.5f bits/param (formula %.5f), want %.5f", c.o, got, BitsPerParam(c.o), c.want)
		}
		t.Logf("%s dq=%v: %.4f bits/param", c.o.Format, c.o.DoubleQuant, got)
	}
}

// FuzzQuantize quantizes arbitrary finite float32 data in every format and checks the bounds.
func FuzzQuantize(f *testing.F) {
	seed := make([]byte, 4*70)
	for i := range 70 {
		binary.LittleEndian.PutUint32(seed[4*i:], math.Float32bits(float32(i%7)-3.1))
	}
	f.Add(seed, uint8(0), uint8(8))
	// Double quantization with one huge group among small ones: the block scale is about 2.4e7,
	// so float32 rounding of code·scale + offset alone is a few units (a failure CI's fuzzer found).
	wide := make([]byte, 4*282)
	for i := range 282 {
		v := float32(3.0185661)
		if i == 281 {
			v = 2.4e7
		}
		binary.LittleEndian.PutUint32(wide[4*i:], math.Float32bits(v))
	}
	f.Add(wide, uint8(3), uint8(0))
	f.Fuzz(func(t *testing.T, raw []byte, format, group uint8) {
		n := len(raw) / 4
		if n == 0 {
			return
		}
		x := make([]float32, n)
		for i := range x {
			v := math.Float32frombits(binary.LittleEndian.Uint32(raw[4*i:]))
			if math.IsNaN(float64(v)) || math.IsInf(float64(v), 0) || abs32(v) > 1e30 {
				v = 1
			}
			x[i] = v
		}
		o := Options{Format: []Format{NF4, Int8, Int4, NF4}[format%4], GroupSize: 2 * (1 + int(group%64)), DoubleQuant: format%4 == 3}
		checkBound(t, x, []int{n}, o)
	})
}
