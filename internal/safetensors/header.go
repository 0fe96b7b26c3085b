package safetensors

import (
	"bytes"
	"encoding/binary"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"math"
	"sort"
	"strconv"
	"unicode/utf8"
)

// MaxHeaderSize is the largest header JSON we accept: 100,000,000 bytes (100 MB, decimal),
// the same limit as the reference Rust implementation.
const MaxHeaderSize = 100 * 1000 * 1000

// metadataKey is the reserved header key that holds the string→string metadata.
const metadataKey = "__metadata__"

// TensorInfo describes one tensor of a safetensors file.
type TensorInfo struct {
	Name       string
	DType      DType
	Shape      []int // empty for a 0-d scalar; never nil when parsed
	Begin, End int64 // data_offsets, relative to the start of the data section
}

// NumElements returns the product of the shape (1 for a 0-d scalar).
func (t TensorInfo) NumElements() int64 {
	n := int64(1)
	for _, d := range t.Shape {
		n *= int64(d)
	}
	return n
}

// NumBytes returns NumElements() × the dtype size; for a parsed header this equals End-Begin.
func (t TensorInfo) NumBytes() int64 { return t.NumElements() * int64(t.DType.Size()) }

// Header is a parsed and validated safetensors header.
type Header struct {
	Tensors    []TensorInfo      // sorted by Begin (then End, then Name)
	Metadata   map[string]string // the __metadata__ object; nil if absent
	DataOffset int64             // 8 + header length: where the data section starts in the file
}

// ParseHeader parses and strictly validates a safetensors header. buf holds the start of the
// file: at least the 8-byte little-endian header length and the header JSON (it may hold more).
// fileSize is the size of the whole file, used to check that the tensors exactly cover the
// data section. Errors describe the problem but not the file; callers add the path.
func ParseHeader(buf []byte, fileSize int64) (*Header, error) {
	if len(buf) < 8 || fileSize < 8 {
		n := min(int64(len(buf)), fileSize)
		return nil, fmt.Errorf("only %d bytes, less than the 8-byte header length prefix; the file is truncated or not safetensors", n)
	}
	n := binary.LittleEndian.Uint64(buf)
	if n > MaxHeaderSize {
		return nil, fmt.Errorf("header length %d exceeds the %d-byte (100 MB) limit; the file is corrupt or not safetensors", n, MaxHeaderSize)
	}
	if int64(n) > fileSize-8 {
		return nil, fmt.Errorf("header length %d runs past the end of the %d-byte file; the file is truncated or not safetensors", n, fileSize)
	}
	if uint64(len(buf)-8) < n {
		return nil, fmt.Errorf("header length is %d but only %d header bytes were given (caller must pass the whole header)", n, len(buf)-8)
	}
	if n < 2 {
		return nil, fmt.Errorf("header length %d is too small to hold a JSON object; the file is corrupt or not safetensors", n)
	}
	js := buf[8 : 8+n]
	if js[0] != '{' {
		return nil, fmt.Errorf("header JSON does not start with '{' (got %q); the file is corrupt or not safetensors", js[0])
	}
	if !utf8.Valid(js) {
		return nil, errors.New("header JSON is not valid UTF-8; the file is corrupt")
	}
	h := &Header{DataOffset: 8 + int64(n)}
	if err := parseHeaderJSON(js, h); err != nil {
		return nil, err
	}
	if err := validateLayout(h.Tensors, fileSize-h.DataOffset); err != nil {
		return nil, err
	}
	return h, nil
}

// parseHeaderJSON walks the header object token by token, so that duplicate keys,
// unknown fields and wrong value types are caught (encoding/json's Unmarshal would
// silently accept the first two).
func parseHeaderJSON(js []byte, h *Header) error {
	dec := json.NewDecoder(bytes.NewReader(js))
	dec.UseNumber()
	if err := expectDelim(dec, '{', "header"); err != nil {
		return err
	}
	seen := map[string]bool{}
	for dec.More() {
		key, err := readKey(dec, "header")
		if err != nil {
			return err
		}
		if seen[key] {
			return fmt.Errorf("header JSON has key %q twice; duplicate keys are not allowed", key)
		}
		seen[key] = true
		if key == metadataKey {
			md, err := readStringMap(dec, metadataKey)
			if err != nil {
				return err
			}
			h.Metadata = md
			continue
		}
		t, err := readTensorEntry(dec, key)
		if err != nil {
			return err
		}
		h.Tensors = append(h.Tensors, t)
	}
	if err := expectDelim(dec, '}', "header"); err != nil {
		return err
	}
	if tok, err := dec.Token(); err != io.EOF {
		if err != nil {
			return fmt.Errorf("header JSON: trailing data after the object: %v", err)
		}
		return fmt.Errorf("header JSON: trailing %s after the object; only space padding may follow", describeToken(tok))
	}
	return nil
}

// readTensorEntry reads {"dtype": ..., "shape": [...], "data_offsets": [b, e]} for tensor name.
func readTensorEntry(dec *json.Decoder, name string) (TensorInfo, error) {
	t := TensorInfo{Name: name}
	what := fmt.Sprintf("tensor %q", name)
	if err := expectDelim(dec, '{', what); err != nil {
		return t, err
	}
	var haveDType, haveShape, haveOffsets bool
	for dec.More() {
		key, err := readKey(dec, what)
		if err != nil {
			return t, err
		}
		switch key {
		case "dtype":
			if haveDType {
				return t, fmt.Errorf("%s: key \"dtype\" appears twice", what)
			}
			haveDType = true
			tok, err := dec.Token()
			if err != nil {
				return t, fmt.Errorf("%s: bad dtype: %v", what, err)
			}
			s, ok := tok.(string)
			if !ok {
				return t, fmt.Errorf("%s: dtype must be a string, got %s", what, describeToken(tok))
			}
			t.DType = DType(s)
			if !t.DType.Valid() {
				return t, fmt.Errorf("%s: unknown dtype %q (known: %s)", what, s, knownDTypes)
			}
		case "shape":
			if haveShape {
				return t, fmt.Errorf("%s: key \"shape\" appears twice", what)
			}
			haveShape = true
			dims, err := readIntArray(dec, what+" shape", math.MaxInt)
			if err != nil {
				return t, err
			}
			t.Shape = make([]int, len(dims))
			for i, d := range dims {
				t.Shape[i] = int(d)
			}
		case "data_offsets":
			if haveOffsets {
				return t, fmt.Errorf("%s: key \"data_offsets\" appears twice", what)
			}
			haveOffsets = true
			offs, err := readIntArray(dec, what+" data_offsets", math.MaxInt64)
			if err != nil {
				return t, err
			}
			if len(offs) != 2 {
				return t, fmt.Errorf("%s: data_offsets must be [begin, end], got %d numbers", what, len(offs))
			}
			t.Begin, t.End = offs[0], offs[1]
		default:
			return t, fmt.Errorf("%s: unexpected key %q; an entry has exactly dtype, shape and data_offsets", what, key)
		}
	}
	if err := expectDelim(dec, '}', what); err != nil {
		return t, err
	}
	switch {
	case !haveDType:
		return t, fmt.Errorf("%s: missing dtype", what)
	case !haveShape:
		return t, fmt.Errorf("%s: missing shape", what)
	case !haveOffsets:
		return t, fmt.Errorf("%s: missing data_offsets", what)
	}
	if t.End < t.Begin {
		return t, fmt.Errorf("%s: data_offsets [%d, %d] end before begin", what, t.Begin, t.End)
	}
	nbytes, ok := shapeBytes(t.Shape, t.DType)
	if !ok {
		return t, fmt.Errorf("%s: shape %v of %s overflows int64 bytes; the header is corrupt", what, t.Shape, t.DType)
	}
	if nbytes != t.End-t.Begin {
		return t, fmt.Errorf("%s: shape %v of %s needs %d bytes but data_offsets [%d, %d] span %d", what, t.Shape, t.DType, nbytes, t.Begin, t.End, t.End-t.Begin)
	}
	return t, nil
}

// shapeBytes returns product(shape) × dtype size, and false on int64 overflow.
// A zero dimension makes the product 0 whatever the other dimensions are.
func shapeBytes(shape []int, dt DType) (int64, bool) {
	for _, d := range shape {
		if d == 0 {
			return 0, true
		}
	}
	n := int64(dt.Size())
	for _, d := range shape {
		if d < 0 || int64(d) > math.MaxInt64/n {
			return 0, false
		}
		n *= int64(d)
	}
	return n, true
}

// validateLayout checks that the tensors, sorted in place by offset, exactly tile the
// data section of dataLen bytes: in range, no overlap, no gap, nothing left over.
func validateLayout(ts []TensorInfo, dataLen int64) error {
	for _, t := range ts {
		if t.End > dataLen {
			return fmt.Errorf("tensor %q: data_offsets [%d, %d] exceed the %d-byte data section; the file is truncated or the header is corrupt", t.Name, t.Begin, t.End, dataLen)
		}
	}
	sort.Slice(ts, func(i, j int) bool {
		a, b := ts[i], ts[j]
		if a.Begin != b.Begin {
			return a.Begin < b.Begin
		}
		if a.End != b.End {
			return a.End < b.End
		}
		return a.Name < b.Name
	})
	var pos int64
	for i, t := range ts {
		if t.Begin < pos {
			p := ts[i-1]
			return fmt.Errorf("tensors %q [%d, %d] and %q [%d, %d] overlap; the header is corrupt", p.Name, p.Begin, p.End, t.Name, t.Begin, t.End)
		}
		if t.Begin > pos {
			if i == 0 {
				return fmt.Errorf("gap of %d bytes at the start of the data section before tensor %q (begins at %d); offsets must tile the data section", t.Begin, t.Name, t.Begin)
			}
			return fmt.Errorf("gap of %d bytes between tensor %q (ends at %d) and tensor %q (begins at %d); offsets must tile the data section", t.Begin-pos, ts[i-1].Name, pos, t.Name, t.Begin)
		}
		pos = t.End
	}
	if pos != dataLen {
		return fmt.Errorf("tensors cover %d bytes but the data section has %d; %d trailing bytes belong to no tensor (the file is corrupt)", pos, dataLen, dataLen-pos)
	}
	return nil
}

// readStringMap reads a JSON object whose values are all strings, rejecting duplicate keys.
func readStringMap(dec *json.Decoder, what string) (map[string]string, error) {
	if err := expectDelim(dec, '{', what); err != nil {
		return nil, err
	}
	m := map[string]string{}
	for dec.More() {
		key, err := readKey(dec, what)
		if err != nil {
			return nil, err
		}
		if _, dup := m[key]; dup {
			return nil, fmt.Errorf("%s: key %q appears twice", what, key)
		}
		tok, err := dec.Token()
		if err != nil {
			return nil, fmt.Errorf("%s: bad value for %q: %v", what, key, err)
		}
		s, ok := tok.(string)
		if !ok {
			return nil, fmt.Errorf("%s: value of %q must be a string, got %s; %s maps strings to strings only", what, key, describeToken(tok), what)
		}
		m[key] = s
	}
	if err := expectDelim(dec, '}', what); err != nil {
		return nil, err
	}
	return m, nil
}

// readIntArray reads a JSON array of non-negative integers no larger than max.
func readIntArray(dec *json.Decoder, what string, max int64) ([]int64, error) {
	if err := expectDelim(dec, '[', what); err != nil {
		return nil, err
	}
	out := []int64{}
	for dec.More() {
		tok, err := dec.Token()
		if err != nil {
			return nil, fmt.Errorf("%s: %v", what, err)
		}
		num, ok := tok.(json.Number)
		if !ok {
			return nil, fmt.Errorf("%s: want a non-negative integer, got %s", what, describeToken(tok))
		}
		v, err := strconv.ParseInt(string(num), 10, 64)
		if err != nil || v < 0 || v > max {
			return nil, fmt.Errorf("%s: %s is not a non-negative integer ≤ %d", what, num, max)
		}
		out = append(out, v)
	}
	if err := expectDelim(dec, ']', what); err != nil {
		return nil, err
	}
	return out, nil
}

// readKey reads an object key.
func readKey(dec *json.Decoder, what string) (string, error) {
	tok, err := dec.Token()
	if err != nil {
		return "", malformed(what, err)
	}
	key, ok := tok.(string)
	if !ok {
		return "", fmt.Errorf("%s JSON is malformed: want a key, got %s", what, describeToken(tok))
	}
	return key, nil
}

// expectDelim reads one token and checks it is the delimiter d.
func expectDelim(dec *json.Decoder, d json.Delim, what string) error {
	tok, err := dec.Token()
	if err != nil {
		return malformed(what, err)
	}
	if got, ok := tok.(json.Delim); !ok || got != d {
		return fmt.Errorf("%s JSON is malformed: want %q, got %s", what, d, describeToken(tok))
	}
	return nil
}

// malformed wraps a JSON syntax error.
func malformed(what string, err error) error {
	if err == io.EOF || err == io.ErrUnexpectedEOF {
		return fmt.Errorf("%s JSON is malformed: unexpected end of the header", what)
	}
	return fmt.Errorf("%s JSON is malformed: %v", what, err)
}

// describeToken names a JSON token for error messages.
func describeToken(tok json.Token) string {
	switch v := tok.(type) {
	case nil:
		return "null"
	case string:
		return fmt.Sprintf("string %q", v)
	case json.Number:
		return "number " + string(v)
	case bool:
		return fmt.Sprintf("bool %v", v)
	case json.Delim:
		switch v {
		case '{', '}':
			return fmt.Sprintf("object delimiter %q", v)
		}
		return fmt.Sprintf("array delimiter %q", v)
	}
	return fmt.Sprintf("%v", tok)
}

// EncodeHeader returns the 8-byte length prefix followed by the header JSON, padded with
// spaces to a multiple of 8 bytes. Tensors are written in the order given; their offsets
// are taken as they are (no validation). Metadata, if non-empty, comes first, keys sorted.
func EncodeHeader(tensors []TensorInfo, metadata map[string]string) []byte {
	var b bytes.Buffer
	b.Write(make([]byte, 8))
	b.WriteByte('{')
	first := true
	if len(metadata) > 0 {
		keys := make([]string, 0, len(metadata))
		for k := range metadata {
			keys = append(keys, k)
		}
		sort.Strings(keys)
		writeJSONString(&b, metadataKey)
		b.WriteString(":{")
		for i, k := range keys {
			if i > 0 {
				b.WriteByte(',')
			}
			writeJSONString(&b, k)
			b.WriteByte(':')
			writeJSONString(&b, metadata[k])
		}
		b.WriteByte('}')
		first = false
	}
	for _, t := range tensors {
		if !first {
			b.WriteByte(',')
		}
		first = false
		writeJSONString(&b, t.Name)
		b.WriteString(`:{"dtype":`)
		writeJSONString(&b, string(t.DType))
		b.WriteString(`,"shape":[`)
		for i, d := range t.Shape {
			if i > 0 {
				b.WriteByte(',')
			}
			b.WriteString(strconv.Itoa(d))
		}
		b.WriteString(`],"data_offsets":[`)
		b.WriteString(strconv.FormatInt(t.Begin, 10))
		b.WriteByte(',')
		b.WriteString(strconv.FormatInt(t.End, 10))
		b.WriteString("]}")
	}
	b.WriteByte('}')
	for b.Len()%8 != 0 {
		b.WriteByte(' ')
	}
	out := b.Bytes()
	binary.LittleEndian.PutUint64(out, uint64(len(out)-8))
	return out
}

// writeJSONString writes s as a JSON string without HTML escaping (as Python's json does not).
func writeJSONString(b *bytes.Buffer, s string) {
	enc := json.NewEncoder(b)
	enc.SetEscapeHTML(false)
	_ = enc.Encode(s)       // a string always encodes; invalid UTF-8 becomes U+FFFD
	b.Truncate(b.Len() - 1) // drop the newline Encode appends
}
