package safetensors

import (
	"encoding/binary"
	"encoding/json"
	"os"
	"path/filepath"
	"reflect"
	"strconv"
	"strings"
	"testing"
)

// FuzzParseHeader feeds arbitrary bytes to ParseHeader as a whole file. It must never
// panic; an accepted header must be valid JSON with one key per tensor (no duplicates),
// its tensors must tile the data section, and re-encoding it with EncodeHeader and
// parsing again must give the same tensors and metadata.
//
// Seeds live in testdata/fuzz/FuzzParseHeader/; run with
//
//	go test ./internal/safetensors -run '^$' -fuzz FuzzParseHeader -fuzztime 60s
func FuzzParseHeader(f *testing.F) {
	f.Add(rawFile(`{}`, 0))
	f.Add(rawFile(`{"__metadata__":{"format":"pt"},"w":{"dtype":"F32","shape":[2],"data_offsets":[0,8]}}  `, 8))
	f.Add(rawFile(`{"s":{"dtype":"BF16","shape":[],"data_offsets":[0,2]},"e":{"dtype":"F8_E4M3","shape":[0,3],"data_offsets":[2,2]}}`, 2))
	f.Fuzz(func(t *testing.T, data []byte) {
		// A caller passing less than the whole header must get an error, not a panic.
		if len(data) > 8 {
			ParseHeader(data[:len(data)/2], int64(len(data)))
		}
		h, err := ParseHeader(data, int64(len(data)))
		if err != nil {
			if err.Error() == "" {
				t.Fatal("empty error message")
			}
			return
		}
		js := data[8:h.DataOffset]
		var keys map[string]json.RawMessage
		if err := json.Unmarshal(js, &keys); err != nil {
			t.Fatalf("accepted a header encoding/json rejects: %v", err)
		}
		nmd := 0
		if h.Metadata != nil {
			nmd = 1
		}
		if len(keys) != len(h.Tensors)+nmd {
			t.Fatalf("%d JSON keys but %d tensors + %d metadata", len(keys), len(h.Tensors), nmd)
		}
		dataLen := int64(len(data)) - h.DataOffset
		var pos int64
		for _, ti := range h.Tensors {
			if ti.Begin != pos || ti.End < ti.Begin || ti.NumBytes() != ti.End-ti.Begin {
				t.Fatalf("accepted bad layout: %+v at %d", ti, pos)
			}
			pos = ti.End
		}
		if pos != dataLen {
			t.Fatalf("tensors end at %d, data section is %d bytes", pos, dataLen)
		}

		enc := EncodeHeader(h.Tensors, h.Metadata)
		if len(enc)%8 != 0 || binary.LittleEndian.Uint64(enc) != uint64(len(enc)-8) {
			t.Fatalf("bad re-encoding length %d", len(enc))
		}
		buf := append(enc, make([]byte, dataLen)...)
		h2, err := ParseHeader(buf, int64(len(buf)))
		if err != nil {
			t.Fatalf("re-encoded header rejected: %v\n%s", err, enc[8:])
		}
		if !reflect.DeepEqual(h.Tensors, h2.Tensors) {
			t.Fatalf("tensors changed:\n%+v\n%+v", h.Tensors, h2.Tensors)
		}
		if len(h.Metadata) != len(h2.Metadata) {
			t.Fatalf("metadata changed: %v vs %v", h.Metadata, h2.Metadata)
		}
		for k, v := range h.Metadata {
			if h2.Metadata[k] != v {
				t.Fatalf("metadata %q: %q vs %q", k, v, h2.Metadata[k])
			}
		}
	})
}

// TestFuzzSeedCorpus checks that the seed corpus says what its file names say: valid_*
// seeds parse, every other seed is rejected.
func TestFuzzSeedCorpus(t *testing.T) {
	files, err := filepath.Glob(filepath.Join("testdata", "fuzz", "FuzzParseHeader", "*"))
	if err != nil || len(files) < 20 {
		t.Fatalf("seed corpus: %d files, %v", len(files), err)
	}
	for _, path := range files {
		raw, err := os.ReadFile(path)
		if err != nil {
			t.Fatal(err)
		}
		lines := strings.Split(strings.TrimSpace(string(raw)), "\n")
		if len(lines) != 2 || lines[0] != "go test fuzz v1" || !strings.HasPrefix(lines[1], "[]byte(") {
			t.Fatalf("%s: not a go fuzz corpus file", path)
		}
		s, err := strconv.Unquote(strings.TrimSuffix(strings.TrimPrefix(lines[1], "[]byte("), ")"))
		if err != nil {
			t.Fatalf("%s: %v", path, err)
		}
		_, err = ParseHeader([]byte(s), int64(len(s)))
		if valid := strings.HasPrefix(filepath.Base(path), "valid_"); valid != (err == nil) {
			t.Errorf("%s: valid=%v but ParseHeader error = %v", path, valid, err)
		}
	}
}
