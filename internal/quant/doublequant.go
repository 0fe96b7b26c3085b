package quant

import (
	"math"
	"sort"
)

// DynamicMap is the signed 8-bit "dynamic" code table of bitsandbytes (create_dynamic_map with
// signed=True, max_exponent_bits=7, total_bits=8), which QLoRA uses to double-quantize the NF4
// absmax values: for i = 0..6, the 2^i midpoints of linspace(0.1, 1, 2^i+1) scaled by 10^(i−6),
// with both signs, plus 0 and 1, sorted ascending (256 values in [-1, 1]; code 127 is 0).
// The values are computed in float64 and rounded to float32 once.
var DynamicMap = func() [256]float32 {
	var vals []float64
	for i := 0; i < 7; i++ {
		k := 1<<i + 1 // points of the linspace
		scale := math.Pow(10, float64(i-6))
		for j := 0; j+1 < k; j++ {
			a := 0.1 + 0.9*float64(j)/float64(k-1)
			b := 0.1 + 0.9*float64(j+1)/float64(k-1)
			m := (a + b) / 2
			vals = append(vals, scale*m, -scale*m)
		}
	}
	vals = append(vals, 0, 1)
	sort.Float64s(vals)
	var out [256]float32
	for i, v := range vals {
		out[i] = float32(v)
	}
	return out
}()

// dynMid holds the midpoints between consecutive DynamicMap values (nearest-code search).
var dynMid = midpoints(DynamicMap[:])

// DynamicMaxHalfGap is the largest half-distance between consecutive DynamicMap values.
var DynamicMaxHalfGap = maxHalfGap(DynamicMap[:])

// dynIndex returns the nearest DynamicMap code of x in [-1, 1] (ties to the lower code).
func dynIndex(x float32) uint8 { return uint8(nearestCode(dynMid, x)) }

// doubleQuantize quantizes the absmax values as QLoRA does: subtract their mean, then
// blockwise (DQBlock values) absmax quantization of the centred values to 8-bit DynamicMap codes
// with one float32 scale per block.
func doubleQuantize(absmax []float32) *DoubleQuant {
	G := len(absmax)
	var sum float64
	for _, a := range absmax {
		sum += float64(a)
	}
	d := &DoubleQuant{Offset: float32(sum / float64(max(G, 1))), Codes: make([]uint8, G),
		Scales: make([]float32, (G+DQBlock-1)/DQBlock)}
	for b := range d.Scales {
		lo, hi := b*DQBlock, min((b+1)*DQBlock, G)
		var m float32
		for _, a := range absmax[lo:hi] {
			m = max(m, abs32(a-d.Offset))
		}
		d.Scales[b] = m
		var inv float64 // float64: 1/m overflows float32 when m is subnormal
		if m > 0 {
			inv = 1 / float64(m)
		}
		for g := lo; g < hi; g++ {
			d.Codes[g] = dynIndex(min(max(float32(float64(absmax[g]-d.Offset)*inv), -1), 1))
		}
	}
	return d
}

// value returns the dequantized absmax of group g.
func (d *DoubleQuant) value(g int) float32 {
	return DynamicMap[d.Codes[g]]*d.Scales[g/DQBlock] + d.Offset
}

// absmax returns all G dequantized absmax values.
func (d *DoubleQuant) absmax(G int) []float32 {
	out := make([]float32, G)
	for g := range out {
		out[g] = d.value(g)
	}
	return out
}
