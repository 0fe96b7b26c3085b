package safetensors

import (
	"encoding/binary"
	"os"
	"path/filepath"
	"reflect"
	"strings"
	"testing"
)

// rawFile assembles a safetensors file from header JSON (unpadded) and dataLen data bytes.
func rawFile(header string, dataLen int) []byte {
	b := binary.LittleEndian.AppendUint64(nil, uint64(len(header)))
	b = append(b, header...)
	return append(b, make([]byte, dataLen)...)
}

// withLength returns b with its 8-byte length prefix replaced by n.
func withLength(b []byte, n uint64) []byte {
	out := append([]byte{}, b...)
	binary.LittleEndian.PutUint64(out, n)
	return out
}

func TestParseHeaderValid(t *testing.T) {
	js := `{"b":{"dtype":"F16","shape":[3],"data_offsets":[8,14]},` +
		`"__metadata__":{"format":"pt","note":"x\"y"},` +
		`"a":{"shape":[2,1],"data_offsets":[0,8],"dtype":"F32"},` +
		`"empty":{"dtype":"I64","shape":[0,7],"data_offsets":[14,14]},` +
		`"s":{"dtype":"U8","shape":[],"data_offsets":[14,15]}}` + "    "
	buf := rawFile(js, 15)
	h, err := ParseHeader(buf, int64(len(buf)))
	if err != nil {
		t.Fatal(err)
	}
	want := []TensorInfo{
		{"a", F32, []int{2, 1}, 0, 8},
		{"b", F16, []int{3}, 8, 14},
		{"empty", I64, []int{0, 7}, 14, 14},
		{"s", U8, []int{}, 14, 15},
	}
	if !reflect.DeepEqual(h.Tensors, want) {
		t.Errorf("tensors %+v\nwant %+v", h.Tensors, want)
	}
	if !reflect.DeepEqual(h.Metadata, map[string]string{"format": "pt", "note": `x"y`}) {
		t.Errorf("metadata %v", h.Metadata)
	}
	if h.DataOffset != int64(8+len(js)) {
		t.Errorf("DataOffset %d", h.DataOffset)
	}
	if n := h.Tensors[3].NumElements(); n != 1 {
		t.Errorf("scalar NumElements = %d", n)
	}
	// No tensors at all is a valid (empty) file.
	buf = rawFile(`{}`, 0)
	if h, err := ParseHeader(buf, int64(len(buf))); err != nil || len(h.Tensors) != 0 || h.Metadata != nil {
		t.Errorf("empty header: %+v %v", h, err)
	}
}

func TestBadInputs(t *testing.T) {
	f32 := func(name string, shape string, b, e string) string {
		return `"` + name + `":{"dtype":"F32","shape":` + shape + `,"data_offsets":[` + b + `,` + e + `]}`
	}
	valid := rawFile(`{`+f32("w", "[2]", "0", "8")+`}`, 8)
	cases := []struct {
		name string
		data []byte
		want string
	}{
		{"empty file", nil, "less than the 8-byte"},
		{"truncated prefix", []byte{4, 0, 0}, "less than the 8-byte"},
		{"truncated data", valid[:len(valid)-3], "exceed the 5-byte data section"},
		{"header length past EOF", withLength(valid, uint64(len(valid))), "runs past the end"},
		{"huge header length", withLength(valid, 1<<63), "exceeds the 100000000-byte"},
		{"header length over limit", withLength(valid, MaxHeaderSize+1), "100 MB"},
		{"zero header length", withLength(valid, 0), "too small"},
		{"not JSON", rawFile(`{"w":nope}`, 0), "malformed"},
		{"JSON array", rawFile(`[1,2]`, 0), "does not start with '{'"},
		{"leading NUL", rawFile("\x00{}", 0), "does not start with '{'"},
		{"trailing garbage", rawFile(`{} x`, 0), "trailing data after the object"},
		{"two objects", rawFile(`{}{}`, 0), "trailing object delimiter"},
		{"unclosed", rawFile(`{"__metadata__":{}`, 0), "malformed"},
		{"invalid UTF-8", rawFile("{\"\xff\":{}}", 0), "UTF-8"},
		{"entry not object", rawFile(`{"w":[1]}`, 0), `tensor "w" JSON is malformed`},
		{"out-of-range offsets", rawFile(`{`+f32("w", "[4]", "0", "16")+`}`, 8), "exceed the 8-byte data section"},
		{"overlapping offsets", rawFile(`{`+f32("a", "[2]", "0", "8")+`,`+f32("b", "[2]", "4", "12")+`}`, 12), "overlap"},
		{"same offsets twice", rawFile(`{`+f32("a", "[2]", "0", "8")+`,`+f32("b", "[2]", "0", "8")+`}`, 8), "overlap"},
		{"gap", rawFile(`{`+f32("a", "[1]", "0", "4")+`,`+f32("b", "[1]", "8", "12")+`}`, 12), "gap of 4 bytes"},
		{"gap at start", rawFile(`{`+f32("a", "[1]", "4", "8")+`}`, 8), "gap of 4 bytes at the start"},
		{"trailing bytes", rawFile(`{`+f32("a", "[1]", "0", "4")+`}`, 6), "2 trailing bytes"},
		{"data but no tensors", rawFile(`{}`, 3), "3 trailing bytes"},
		{"end before begin", rawFile(`{`+f32("a", "[0]", "4", "0")+`}`, 4), "end before begin"},
		{"unknown dtype", rawFile(`{"w":{"dtype":"F4","shape":[1],"data_offsets":[0,1]}}`, 1), `unknown dtype "F4"`},
		{"lower-case dtype", rawFile(`{"w":{"dtype":"f32","shape":[1],"data_offsets":[0,4]}}`, 4), "unknown dtype"},
		{"dtype not string", rawFile(`{"w":{"dtype":4,"shape":[1],"data_offsets":[0,4]}}`, 4), "dtype must be a string"},
		{"shape-bytes mismatch", rawFile(`{`+f32("w", "[2,2]", "0", "8")+`}`, 8), "needs 16 bytes but data_offsets [0, 8] span 8"},
		{"negative dim", rawFile(`{`+f32("w", "[-2]", "0", "8")+`}`, 8), "non-negative integer"},
		{"fractional dim", rawFile(`{`+f32("w", "[1.5]", "0", "8")+`}`, 8), "non-negative integer"},
		{"dim not number", rawFile(`{`+f32("w", `["2"]`, "0", "8")+`}`, 8), "want a non-negative integer"},
		{"shape overflow", rawFile(`{`+f32("w", "[2147483647,2147483647,2147483647,4]", "0", "8")+`}`, 8), "overflows"},
		{"offset too big", rawFile(`{`+f32("w", "[2]", "0", "99999999999999999999")+`}`, 8), "not a non-negative integer ≤ 9223372036854775807"},
		{"three offsets", rawFile(`{"w":{"dtype":"F32","shape":[1],"data_offsets":[0,4,8]}}`, 4), "got 3 numbers"},
		{"missing shape", rawFile(`{"w":{"dtype":"F32","data_offsets":[0,4]}}`, 4), "missing shape"},
		{"missing dtype", rawFile(`{"w":{"shape":[1],"data_offsets":[0,4]}}`, 4), "missing dtype"},
		{"missing offsets", rawFile(`{"w":{"dtype":"F32","shape":[1]}}`, 4), "missing data_offsets"},
		{"extra field", rawFile(`{"w":{"dtype":"F32","shape":[1],"data_offsets":[0,4],"strides":[1]}}`, 4), `unexpected key "strides"`},
		{"duplicate field", rawFile(`{"w":{"dtype":"F32","dtype":"F32","shape":[1],"data_offsets":[0,4]}}`, 4), `"dtype" appears twice`},
		{"duplicate tensor", rawFile(`{`+f32("w", "[1]", "0", "4")+`,`+f32("w", "[1]", "4", "8")+`}`, 8), `key "w" twice`},
		{"duplicate metadata", rawFile(`{"__metadata__":{},"__metadata__":{}}`, 0), "twice"},
		{"duplicate metadata key", rawFile(`{"__metadata__":{"a":"1","a":"2"}}`, 0), `"a" appears twice`},
		{"non-string metadata", rawFile(`{"__metadata__":{"format":"pt","total_size":12}}`, 0), `value of "total_size" must be a string, got number 12`},
		{"null metadata value", rawFile(`{"__metadata__":{"a":null}}`, 0), "must be a string, got null"},
		{"metadata not object", rawFile(`{"__metadata__":"pt"}`, 0), "__metadata__ JSON is malformed"},
	}
	dir := t.TempDir()
	for i, c := range cases {
		t.Run(c.name, func(t *testing.T) {
			// Through ParseHeader...
			if _, err := ParseHeader(c.data, int64(len(c.data))); err == nil || !strings.Contains(err.Error(), c.want) {
				t.Errorf("ParseHeader: got %v, want error containing %q", err, c.want)
			}
			// ...and through Open, whose error must also name the file.
			path := filepath.Join(dir, strings.ReplaceAll(c.name, " ", "_")+".safetensors")
			if err := os.WriteFile(path, c.data, 0o644); err != nil {
				t.Fatal(err)
			}
			f, err := Open(path)
			if err == nil {
				f.Close()
				t.Fatalf("case %d: Open accepted bad input", i)
			}
			t.Log(err)
			if !strings.Contains(err.Error(), c.want) || !strings.Contains(err.Error(), path) {
				t.Errorf("Open: got %v, want the path and %q", err, c.want)
			}
		})
	}
	// The valid base file really is valid.
	if _, err := ParseHeader(valid, int64(len(valid))); err != nil {
		t.Fatal(err)
	}
	// ParseHeader given only part of the header must say so.
	if _, err := ParseHeader(valid[:12], int64(len(valid))); err == nil || !strings.Contains(err.Error(), "whole header") {
		t.Errorf("short buffer: %v", err)
	}
	// Not a regular file.
	if _, err := Open(dir); err == nil || !strings.Contains(err.Error(), "not a regular file") {
		t.Errorf("Open(dir): %v", err)
	}
	if _, err := Open(filepath.Join(dir, "nope.safetensors")); err == nil || !strings.Contains(err.Error(), "nope.safetensors") {
		t.Errorf("Open(missing): %v", err)
	}
}

// TestEncodeHeaderPadding checks the 8-byte alignment and that encoding escapes names.
func TestEncodeHeaderPadding(t *testing.T) {
	for n := 0; n < 20; n++ {
		name := strings.Repeat("x", n) + `"\<é>` + "\n"
		ts := []TensorInfo{{Name: name, DType: U8, Shape: []int{}, Begin: 0, End: 1}}
		enc := EncodeHeader(ts, map[string]string{"k": "v&"})
		if len(enc)%8 != 0 || binary.LittleEndian.Uint64(enc) != uint64(len(enc)-8) {
			t.Fatalf("len %d, prefix %d", len(enc), binary.LittleEndian.Uint64(enc))
		}
		buf := append(enc, 7)
		h, err := ParseHeader(buf, int64(len(buf)))
		if err != nil {
			t.Fatal(err)
		}
		if h.Tensors[0].Name != name || h.Metadata["k"] != "v&" {
			t.Fatalf("round trip: %+v %v", h.Tensors, h.Metadata)
		}
	}
}
