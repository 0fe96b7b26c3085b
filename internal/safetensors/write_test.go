package safetensors

import (
	"bytes"
	"fmt"
	"math"
	"math/rand/v2"
	"os"
	"path/filepath"
	"reflect"
	"strings"
	"testing"
)

// randTensor makes a tensor of random bytes with the given dtype and shape.
func randTensor(rng *rand.Rand, name string, dt DType, shape ...int) Tensor {
	n := dt.Size()
	for _, d := range shape {
		n *= d
	}
	data := make([]byte, n)
	for i := range data {
		data[i] = byte(rng.Uint32())
	}
	if dt == Bool {
		for i := range data {
			data[i] &= 1
		}
	}
	return Tensor{Name: name, DType: dt, Shape: shape, Data: data}
}

func TestWriteManyDTypes(t *testing.T) {
	rng := rand.New(rand.NewPCG(7, 11))
	ts := []Tensor{
		randTensor(rng, "f32", F32, 3, 4),
		randTensor(rng, "f16", F16, 5),
		randTensor(rng, "bf16", BF16, 2, 3, 1),
		randTensor(rng, "i64", I64, 2),
		randTensor(rng, "u64.scalar", U64),
		randTensor(rng, "f64.scalar", F64),
		randTensor(rng, "u8", U8, 7),
		randTensor(rng, "bool", Bool, 3),
		randTensor(rng, "i8.empty", I8, 0, 5),
		randTensor(rng, "f32.empty", F32, 4, 0),
		randTensor(rng, "e4m3", F8E4M3, 4),
		randTensor(rng, "e5m2", F8E5M2, 2, 2),
		randTensor(rng, "i32", I32, 1),
		randTensor(rng, "u32", U32, 3),
		randTensor(rng, "i16", I16, 3, 1, 1),
		randTensor(rng, "u16", U16, 1),
		randTensor(rng, "ünïcode <&> \"quoted\"", U8, 2),
	}
	md := map[string]string{"format": "pt", "note": "a \"quoted\" <value> ✓"}
	path := filepath.Join(t.TempDir(), "many.safetensors")
	if err := Write(path, ts, md); err != nil {
		t.Fatal(err)
	}
	f, err := Open(path)
	if err != nil {
		t.Fatal(err)
	}
	defer f.Close()
	if !reflect.DeepEqual(f.Metadata(), md) {
		t.Errorf("metadata %v, want %v", f.Metadata(), md)
	}
	if len(f.Tensors()) != len(ts) {
		t.Fatalf("%d tensors, want %d", len(f.Tensors()), len(ts))
	}
	if f.Header().DataOffset%8 != 0 {
		t.Errorf("data section starts at %d, not a multiple of 8", f.Header().DataOffset)
	}
	prevSize := 8
	for _, info := range f.Tensors() {
		// Layout: by dtype size, largest first, so each tensor is aligned to its size.
		if s := info.DType.Size(); s > prevSize || (f.Header().DataOffset+info.Begin)%int64(s) != 0 {
			t.Errorf("%s: %s at file offset %d after a %d-byte dtype", info.Name, info.DType, f.Header().DataOffset+info.Begin, prevSize)
		} else {
			prevSize = s
		}
	}
	for _, want := range ts {
		info, ok := f.Info(want.Name)
		if !ok {
			t.Fatalf("%q missing", want.Name)
		}
		if info.DType != want.DType || fmt.Sprint(info.Shape) != fmt.Sprint(want.Shape) || len(info.Shape) != len(want.Shape) {
			t.Errorf("%s: %+v, want %s %v", want.Name, info, want.DType, want.Shape)
		}
		got, err := f.Bytes(want.Name)
		if err != nil {
			t.Fatal(err)
		}
		if !bytes.Equal(got, want.Data) {
			t.Errorf("%s: data differs", want.Name)
		}
		if want.DType.IsFloat() {
			vals, err := f.Float32(want.Name)
			if err != nil || int64(len(vals)) != info.NumElements() {
				t.Errorf("%s: Float32 gave %d values, err %v", want.Name, len(vals), err)
			}
		} else if _, err := f.Float32(want.Name); err == nil || !strings.Contains(err.Error(), "not a float dtype") {
			t.Errorf("%s: Float32 of %s: %v", want.Name, want.DType, err)
		}
	}
	// A header without metadata has no __metadata__ key at all.
	path2 := filepath.Join(t.TempDir(), "nomd.safetensors")
	if err := Write(path2, ts[:1], nil); err != nil {
		t.Fatal(err)
	}
	raw, _ := os.ReadFile(path2)
	if bytes.Contains(raw, []byte("__metadata__")) {
		t.Errorf("nil metadata written: %q", raw[:40])
	}
}

// F32 values → BF16 file → Float32 gives the values rounded to BF16 (checked by hand-rounding).
func TestWriteEncodedFloats(t *testing.T) {
	rng := rand.New(rand.NewPCG(3, 4))
	vals := make([]float32, 257) // (257,)
	for i := range vals {
		vals[i] = float32(rng.NormFloat64())
	}
	data, err := EncodeFloat32(BF16, vals)
	if err != nil {
		t.Fatal(err)
	}
	path := filepath.Join(t.TempDir(), "bf16.safetensors")
	if err := Write(path, []Tensor{{Name: "w", DType: BF16, Shape: []int{257}, Data: data}}, nil); err != nil {
		t.Fatal(err)
	}
	f, err := Open(path)
	if err != nil {
		t.Fatal(err)
	}
	defer f.Close()
	got, err := f.Float32("w")
	if err != nil {
		t.Fatal(err)
	}
	for i, v := range vals {
		// Reference: keep the top 16 bits, add one unit in the last place when the dropped
		// 16 bits are above half, or exactly half with an odd kept part.
		b := math.Float32bits(v)
		hi, lo := b>>16, b&0xffff
		if lo > 0x8000 || (lo == 0x8000 && hi&1 == 1) {
			hi++
		}
		if math.Float32bits(got[i]) != hi<<16 {
			t.Fatalf("w[%d]: %v → %v, want bits %#08x", i, v, got[i], hi<<16)
		}
	}
}

func TestWriteErrors(t *testing.T) {
	dir := t.TempDir()
	good := Tensor{Name: "w", DType: F32, Shape: []int{2}, Data: make([]byte, 8)}
	cases := []struct {
		name string
		ts   []Tensor
		want string
	}{
		{"size mismatch", []Tensor{{Name: "w", DType: F32, Shape: []int{3}, Data: make([]byte, 8)}}, "needs 12 bytes but Data has 8"},
		{"duplicate", []Tensor{good, good}, `"w" given twice`},
		{"unknown dtype", []Tensor{{Name: "w", DType: "F4", Shape: []int{1}, Data: []byte{1}}}, "unknown dtype"},
		{"negative dim", []Tensor{{Name: "w", DType: U8, Shape: []int{-1}, Data: nil}}, "negative dimension"},
		{"reserved name", []Tensor{{Name: "__metadata__", DType: U8, Shape: []int{}, Data: []byte{1}}}, "reserved"},
		{"overflow", []Tensor{{Name: "w", DType: F64, Shape: []int{math.MaxInt, math.MaxInt, math.MaxInt}, Data: nil}}, "overflows"},
	}
	for _, c := range cases {
		path := filepath.Join(dir, "out.safetensors")
		err := Write(path, c.ts, nil)
		if err == nil || !strings.Contains(err.Error(), c.want) || !strings.Contains(err.Error(), path) {
			t.Errorf("%s: got %v, want error with path and %q", c.name, err, c.want)
		}
	}
	// A directory that does not exist: error, nothing created.
	if err := Write(filepath.Join(dir, "no", "such", "dir.safetensors"), []Tensor{good}, nil); err == nil {
		t.Error("write into a missing directory succeeded")
	}
	// Destination is a directory: the rename fails and the temp file is cleaned up.
	if err := os.Mkdir(filepath.Join(dir, "isdir"), 0o755); err != nil {
		t.Fatal(err)
	}
	if err := Write(filepath.Join(dir, "isdir"), []Tensor{good}, nil); err == nil || !strings.Contains(err.Error(), "rename") {
		t.Errorf("write over a directory: %v", err)
	}
	ents, _ := os.ReadDir(dir)
	if len(ents) != 1 || ents[0].Name() != "isdir" {
		t.Errorf("files left behind: %v", ents)
	}
	// Overwriting an existing file replaces it whole.
	path := filepath.Join(dir, "over.safetensors")
	if err := os.WriteFile(path, []byte("old contents"), 0o644); err != nil {
		t.Fatal(err)
	}
	if err := Write(path, []Tensor{good}, map[string]string{"v": "2"}); err != nil {
		t.Fatal(err)
	}
	f, err := Open(path)
	if err != nil {
		t.Fatal(err)
	}
	if f.Metadata()["v"] != "2" {
		t.Errorf("overwrite: metadata %v", f.Metadata())
	}
	f.Close()
}
