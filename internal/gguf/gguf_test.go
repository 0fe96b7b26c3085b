package gguf

import (
	"bytes"
	"encoding/binary"
	"errors"
	"io"
	"math"
	"math/rand/v2"
	"os"
	"path/filepath"
	"reflect"
	"strings"
	"syscall"
	"testing"
	"time"
)

func newRNG(t testing.TB) *rand.Rand {
	seed := uint64(time.Now().UnixNano())
	t.Logf("seed %d", seed)
	return rand.New(rand.NewPCG(seed, seed^0x9e3779b97f4a7c15))
}

func randVec(rng *rand.Rand, n int, scale float64) []float32 {
	x := make([]float32, n)
	for i := range x {
		x[i] = float32(rng.NormFloat64() * scale)
	}
	return x
}

func randString(rng *rand.Rand) string {
	const chars = "abcdefghijklmnopqrstuvwxyz▁é日<>0123456789 "
	r := []rune(chars)
	n := 1 + rng.IntN(12)
	var b strings.Builder
	for range n {
		b.WriteRune(r[rng.IntN(len(r))])
	}
	return b.String()
}

// randomKV builds one entry of every value type with random contents.
func randomKV(rng *rand.Rand) []KV {
	strs := make([]string, 1+rng.IntN(20))
	for i := range strs {
		strs[i] = randString(rng)
	}
	f32 := randVec(rng, 1+rng.IntN(30), 3)
	i32 := make([]int32, 1+rng.IntN(10))
	for i := range i32 {
		i32[i] = int32(rng.Uint32())
	}
	bs := make([]bool, 1+rng.IntN(10))
	for i := range bs {
		bs[i] = rng.IntN(2) == 1
	}
	u64s := []uint64{rng.Uint64(), rng.Uint64()}
	return []KV{
		{"t.u8", uint8(rng.Uint32())}, {"t.i8", int8(rng.Uint32())},
		{"t.u16", uint16(rng.Uint32())}, {"t.i16", int16(rng.Uint32())},
		{"t.u32", rng.Uint32()}, {"t.i32", int32(rng.Uint32())},
		{"t.f32", float32(rng.NormFloat64())}, {"t.bool", rng.IntN(2) == 1},
		{"t.str", randString(rng)}, {"t.u64", rng.Uint64()}, {"t.i64", int64(rng.Uint64())},
		{"t.f64", rng.NormFloat64()},
		{"t.strs", strs}, {"t.f32s", f32}, {"t.i32s", i32}, {"t.bools", bs}, {"t.u64s", u64s},
		{"t.nested", []Value{[]int32{int32(rng.Uint32())}, []int32{int32(rng.Uint32()), int32(rng.Uint32())}}},
	}
}

type srcTensor struct {
	name  string
	shape []uint64
	typ   GGMLType
	vals  []float32
}

func randomTensors(rng *rand.Rand) []srcTensor {
	var ts []srcTensor
	for i, typ := range []GGMLType{F32, F16, Q8_0, Q4_0, F32, Q8_0} {
		row := uint64(BlockSize * (1 + rng.IntN(4)))
		if typ == F32 || typ == F16 {
			row = uint64(1 + rng.IntN(70))
		}
		shape := []uint64{row}
		if i > 0 {
			shape = append(shape, uint64(1+rng.IntN(5)))
		}
		n := 1
		for _, d := range shape {
			n *= int(d)
		}
		ts = append(ts, srcTensor{name: "blk." + string(rune('a'+i)) + ".weight", shape: shape, typ: typ, vals: randVec(rng, n, 0.1+rng.Float64())})
	}
	return ts
}

func toTensors(t *testing.T, src []srcTensor) []Tensor {
	var out []Tensor
	for _, s := range src {
		s := s
		out = append(out, Tensor{Name: s.name, Shape: s.shape, Type: s.typ, Data: func() ([]byte, error) { return Encode(s.typ, s.vals) }})
	}
	return out
}

func writeBytes(t *testing.T, kv []KV, ts []Tensor) []byte {
	t.Helper()
	var buf bytes.Buffer
	if err := Write(&buf, kv, ts); err != nil {
		t.Fatal(err)
	}
	return buf.Bytes()
}

func checkBound(t *testing.T, name string, typ GGMLType, src, got []float32) {
	t.Helper()
	bs := BlockSize
	if typ == F16 || typ == F32 {
		bs = 1
	}
	for b := 0; b < len(src)/bs; b++ {
		blk := src[b*bs : (b+1)*bs]
		bound := BlockBound(typ, blk)
		for j := range blk {
			if e := math.Abs(float64(blk[j] - got[b*bs+j])); e > bound {
				t.Fatalf("%s (%s) value %d: %g decoded as %g, error %g > bound %g", name, typ, b*bs+j, blk[j], got[b*bs+j], e, bound)
			}
		}
	}
}

func TestRoundTrip(t *testing.T) {
	rng := newRNG(t)
	for _, align := range []uint32{0, 64, 256} {
		kv := randomKV(rng)
		if align != 0 {
			kv = append(kv, KV{KeyAlignment, align})
		}
		src := randomTensors(rng)
		data := writeBytes(t, kv, toTensors(t, src))
		f, err := Parse(bytes.NewReader(data), int64(len(data)))
		if err != nil {
			t.Fatal(err)
		}
		if !reflect.DeepEqual(f.KV, kv) {
			t.Fatalf("metadata differ:\n got %#v\nwant %#v", f.KV, kv)
		}
		wantAlign := uint64(DefaultAlignment)
		if align != 0 {
			wantAlign = uint64(align)
		}
		if f.Alignment != wantAlign || f.DataOffset%int64(wantAlign) != 0 {
			t.Fatalf("alignment %d, data offset %d; want alignment %d", f.Alignment, f.DataOffset, wantAlign)
		}
		if len(f.Tensors) != len(src) {
			t.Fatalf("%d tensors, want %d", len(f.Tensors), len(src))
		}
		for i, s := range src {
			ti := f.Tensors[i]
			if ti.Name != s.name || ti.Type != s.typ || !reflect.DeepEqual(ti.Shape, s.shape) || ti.Offset%wantAlign != 0 {
				t.Fatalf("tensor %d: got %+v, want %s %s %v", i, ti, s.name, s.typ, s.shape)
			}
			raw, err := f.Bytes(s.name)
			if err != nil {
				t.Fatal(err)
			}
			enc, _ := Encode(s.typ, s.vals)
			if !bytes.Equal(raw, enc) {
				t.Fatalf("tensor %s: bytes differ from what was written", s.name)
			}
			got, err := f.Float32(s.name)
			if err != nil {
				t.Fatal(err)
			}
			if s.typ == F32 && !reflect.DeepEqual(got, s.vals) {
				t.Fatalf("F32 tensor %s not exact", s.name)
			}
			checkBound(t, s.name, s.typ, s.vals, got)
		}
		if _, err := f.Float32("nope"); !errors.Is(err, ErrNoTensor) {
			t.Fatalf("missing tensor: got %v", err)
		}
	}
}

func TestQuantBounds(t *testing.T) {
	rng := newRNG(t)
	for _, typ := range []GGMLType{F16, Q8_0, Q4_0} {
		for trial := 0; trial < 200; trial++ {
			scale := math.Pow(10, -4+6*rng.Float64())
			x := randVec(rng, BlockSize*(1+rng.IntN(8)), scale)
			if trial%3 == 0 { // an outlier per block
				x[rng.IntN(len(x))] *= 20
			}
			enc, err := Encode(typ, x)
			if err != nil {
				t.Fatal(err)
			}
			got, err := Decode(typ, enc, len(x))
			if err != nil {
				t.Fatal(err)
			}
			checkBound(t, "random", typ, x, got)
		}
	}
}

// TestQ4ClampReachesBound checks that the bound is not loose: the value opposite to the largest
// one, at the same magnitude, lands a whole step away (code 15 instead of 16).
func TestQ4ClampReachesBound(t *testing.T) {
	rng := newRNG(t)
	x := randVec(rng, BlockSize, 0.01)
	m := float32(0.5 + rng.Float64())
	x[3], x[20] = -m, m*0.999999
	enc, _ := Encode(Q4_0, x)
	got, _ := Decode(Q4_0, enc, BlockSize)
	d := float64(m) / 8
	if e := math.Abs(float64(x[20] - got[20])); e < 0.9*d || e > BlockBound(Q4_0, x) {
		t.Fatalf("clamped value error %g, want about one step %g", e, d)
	}
}

// TestHandCheckedBlocks pins the byte layout against blocks worked out by hand: scales that
// are exact in fp16 and values that are exact multiples of them.
func TestHandCheckedBlocks(t *testing.T) {
	rng := newRNG(t)
	// Q8_0: d = 1/64 (fp16 0x2400), so x = k/64 gives code k exactly when max|k| = 127.
	k := make([]int8, BlockSize)
	for j := range k {
		k[j] = int8(rng.IntN(255) - 127)
	}
	k[rng.IntN(BlockSize)] = 127 * int8(1-2*rng.IntN(2))
	x := make([]float32, BlockSize)
	for j := range x {
		x[j] = float32(k[j]) / 64
	}
	got, _ := Encode(Q8_0, x)
	want := []byte{0x00, 0x24}
	for _, v := range k {
		want = append(want, byte(v))
	}
	if !bytes.Equal(got, want) {
		t.Fatalf("Q8_0 block\n got % x\nwant % x", got, want)
	}

	// Q4_0: the largest magnitude is -1, so d = -1/-8 = 0.125 (fp16 0x3000) and x = (c-8)/8
	// has code c. Codes 0 (x = -1, once) and 1..15 otherwise.
	c := make([]byte, BlockSize)
	for j := range c {
		c[j] = byte(1 + rng.IntN(15))
	}
	c[rng.IntN(BlockSize)] = 0
	for j := range x {
		x[j] = (float32(c[j]) - 8) / 8
	}
	got, _ = Encode(Q4_0, x)
	want = []byte{0x00, 0x30}
	for j := 0; j < 16; j++ {
		want = append(want, c[j]|c[j+16]<<4) // value j low nibble, value j+16 high nibble
	}
	if !bytes.Equal(got, want) {
		t.Fatalf("Q4_0 block\n got % x\nwant % x", got, want)
	}
	// A fixed block checked by hand: values 0..15 step 1/8 from -1 in the low nibbles, the
	// same reversed in the high ones.
	for j := 0; j < 16; j++ {
		x[j] = (float32(j) - 8) / 8
		x[j+16] = (float32(15-j) - 8) / 8
	}
	got, _ = Encode(Q4_0, x)
	hand := []byte{0x00, 0x30, 0xf0, 0xe1, 0xd2, 0xc3, 0xb4, 0xa5, 0x96, 0x87, 0x78, 0x69, 0x5a, 0x4b, 0x3c, 0x2d, 0x1e, 0x0f}
	if !bytes.Equal(got, hand) {
		t.Fatalf("Q4_0 hand block\n got % x\nwant % x", got, hand)
	}
	// Q4_0 with a positive largest value: d = 2/-8 = -0.25 (fp16 0xb400); x = 2 has code 0,
	// x = -1.75 code 15.
	for j := range x {
		x[j] = float32(rng.IntN(15)-7) * 0.25 // codes 1..15 under d = -0.25
	}
	x[5] = 2
	got, _ = Encode(Q4_0, x)
	if got[0] != 0x00 || got[1] != 0xb4 || got[2+5]&0xF != 0 {
		t.Fatalf("Q4_0 positive-max block: % x", got)
	}
	dec, _ := Decode(Q4_0, got, BlockSize)
	for j := range x {
		if dec[j] != x[j] {
			t.Fatalf("value %d: %g decoded as %g (exact multiples of d must round-trip)", j, x[j], dec[j])
		}
	}
}

// failAfter is a writer that fails with ENOSPC after n bytes, like a full disk.
type failAfter struct {
	w io.Writer
	n int
}

func (f *failAfter) Write(p []byte) (int, error) {
	if len(p) > f.n {
		k, _ := f.w.Write(p[:f.n])
		f.n = 0
		return k, &os.PathError{Op: "write", Path: "tmp", Err: syscall.ENOSPC}
	}
	f.n -= len(p)
	return f.w.Write(p)
}

func TestWriteFileAtomic(t *testing.T) {
	rng := newRNG(t)
	dir := t.TempDir()
	path := filepath.Join(dir, "m.gguf")
	kv := randomKV(rng)
	src := randomTensors(rng)
	if err := WriteFile(path, false, kv, toTensors(t, src)); err != nil {
		t.Fatal(err)
	}
	first, _ := os.ReadFile(path)
	if err := WriteFile(path, false, kv, toTensors(t, src)); err == nil || !strings.Contains(err.Error(), "--overwrite") {
		t.Fatalf("existing output without overwrite: got %v", err)
	}
	// A full disk at several points: header, metadata, tensor data.
	total := len(first)
	for _, n := range []int{0, 10, total / 3, total - 5} {
		tempWrapper = func(w io.Writer) io.Writer { return &failAfter{w: w, n: n} }
		err := WriteFile(path, true, kv, toTensors(t, src))
		tempWrapper = nil
		if err == nil || !errors.Is(err, syscall.ENOSPC) || !strings.Contains(err.Error(), "disk is full") {
			t.Fatalf("fail after %d bytes: got %v", n, err)
		}
		ents, _ := os.ReadDir(dir)
		if len(ents) != 1 || ents[0].Name() != "m.gguf" {
			t.Fatalf("fail after %d bytes left %v in the folder", n, ents)
		}
		now, _ := os.ReadFile(path)
		if !bytes.Equal(now, first) {
			t.Fatalf("fail after %d bytes changed the existing file", n)
		}
	}
	// A tensor whose data cannot be produced also leaves nothing behind.
	bad := toTensors(t, src)
	bad[1].Data = func() ([]byte, error) { return nil, errors.New("boom") }
	if err := WriteFile(filepath.Join(dir, "x.gguf"), false, kv, bad); err == nil || !strings.Contains(err.Error(), "boom") {
		t.Fatalf("failing tensor: %v", err)
	}
	if _, err := os.Stat(filepath.Join(dir, "x.gguf")); err == nil {
		t.Fatal("partial output left")
	}
	if ents, _ := os.ReadDir(dir); len(ents) != 1 {
		t.Fatalf("temp files left: %v", ents)
	}
}

func TestWriteRejects(t *testing.T) {
	rng := newRNG(t)
	x := randVec(rng, 40, 1)
	cases := map[string]struct {
		kv []KV
		ts []Tensor
	}{
		"not a whole number": {nil, []Tensor{{Name: "a", Shape: []uint64{40}, Type: Q8_0, Data: func() ([]byte, error) { return Encode(F32, x) }}}},
		"bytes of data":      {nil, []Tensor{{Name: "a", Shape: []uint64{41}, Type: F32, Data: func() ([]byte, error) { return Encode(F32, x) }}}},
		"given twice":        {[]KV{{"a", int32(1)}, {"a", int32(2)}}, nil},
		"power of two":       {[]KV{{KeyAlignment, uint32(24)}}, nil},
		"cannot be stored":   {[]KV{{"a", 3}}, nil},
	}
	for want, c := range cases {
		err := Write(io.Discard, c.kv, c.ts)
		if err == nil || !strings.Contains(err.Error(), want) {
			t.Errorf("%s: got %v", want, err)
		}
	}
}

func TestCorruptFiles(t *testing.T) {
	rng := newRNG(t)
	good := writeBytes(t, randomKV(rng), toTensors(t, randomTensors(rng)))
	le := binary.LittleEndian
	mutate := func(f func(b []byte) []byte) []byte {
		b := append([]byte(nil), good...)
		return f(b)
	}
	cases := map[string][]byte{
		"magic":          mutate(func(b []byte) []byte { b[0] = 'X'; return b }),
		"version":        mutate(func(b []byte) []byte { le.PutUint32(b[4:], 2); return b }),
		"tensor count":   mutate(func(b []byte) []byte { le.PutUint64(b[8:], 1<<40); return b }),
		"metadata count": mutate(func(b []byte) []byte { le.PutUint64(b[16:], 1<<40); return b }),
		"key 0 length":   mutate(func(b []byte) []byte { le.PutUint64(b[24:], 1<<50); return b }),
		"remain":         good[:len(good)/2],
		"needs 4 bytes":  good[:2],
	}
	for want, data := range cases {
		_, err := Parse(bytes.NewReader(data), int64(len(data)))
		if err == nil || !strings.Contains(err.Error(), corrupt) {
			t.Errorf("%s: got %v", want, err)
			continue
		}
		t.Logf("%s: %v", want, err)
	}
	// Random single-byte damage never panics; where it is caught it says so.
	for i := 0; i < 2000; i++ {
		b := append([]byte(nil), good...)
		for k := 0; k < 1+rng.IntN(3); k++ {
			b[rng.IntN(len(b))] = byte(rng.Uint32())
		}
		b = b[:rng.IntN(len(b)+1)]
		f, err := Parse(bytes.NewReader(b), int64(len(b)))
		if err == nil {
			for _, ti := range f.Tensors {
				if _, err := f.Float32(ti.Name); err != nil {
					t.Fatalf("a header that parsed has an unreadable tensor %s: %v", ti.Name, err)
				}
			}
		}
	}
}

func TestOpenNamesFile(t *testing.T) {
	dir := t.TempDir()
	p := filepath.Join(dir, "bad.gguf")
	os.WriteFile(p, []byte("GGUF\x03\x00\x00\x00junk"), 0o644)
	_, err := Open(p)
	if err == nil || !strings.Contains(err.Error(), p) {
		t.Fatalf("got %v", err)
	}
}

func FuzzParse(f *testing.F) {
	rng := rand.New(rand.NewPCG(1, 2))
	var buf bytes.Buffer
	src := randomTensors(rng)
	var ts []Tensor
	for _, s := range src {
		s := s
		ts = append(ts, Tensor{Name: s.name, Shape: s.shape, Type: s.typ, Data: func() ([]byte, error) { return Encode(s.typ, s.vals) }})
	}
	if err := Write(&buf, randomKV(rng), ts); err != nil {
		f.Fatal(err)
	}
	f.Add(buf.Bytes())
	f.Add([]byte("GGUF\x03\x00\x00\x00"))
	f.Fuzz(func(t *testing.T, data []byte) {
		g, err := Parse(bytes.NewReader(data), int64(len(data)))
		if err != nil {
			if !strings.Contains(err.Error(), corrupt) {
				t.Fatalf("error without the hint: %v", err)
			}
			return
		}
		for _, ti := range g.Tensors {
			if _, err := g.Float32(ti.Name); err != nil {
				t.Fatalf("tensor %s: %v", ti.Name, err)
			}
		}
	})
}
