package gguf

import (
	"bufio"
	"encoding/binary"
	"errors"
	"fmt"
	"io"
	"math"
	"os"
	"sort"
)

// File is a parsed GGUF file. Tensor data are read on demand.
type File struct {
	Path       string
	Version    uint32
	KV         []KV // in file order
	Tensors    []TensorInfo
	Alignment  uint64
	DataOffset int64 // start of the data section in the file

	r    io.ReaderAt
	size int64
	c    io.Closer
	kv   map[string]int
	ti   map[string]int
}

// Open reads and validates the header of the GGUF file at path. Close it when done.
func Open(path string) (*File, error) {
	f, err := os.Open(path)
	if err != nil {
		return nil, fmt.Errorf("gguf: %w", err)
	}
	st, err := f.Stat()
	if err != nil {
		f.Close()
		return nil, fmt.Errorf("gguf: %w", err)
	}
	g, err := Parse(f, st.Size())
	if err != nil {
		f.Close()
		return nil, fmt.Errorf("%s: %w", path, err)
	}
	g.Path, g.c = path, f
	return g, nil
}

// Close closes the underlying file (a no-op for a File from Parse).
func (f *File) Close() error {
	if f.c != nil {
		return f.c.Close()
	}
	return nil
}

// maxDepth bounds nested arrays.
const maxDepth = 8

// corrupt is the hint every header error ends with.
const corrupt = "the file is damaged, truncated or not a GGUF file; write it again"

// Parse reads and validates a GGUF header from r, whose size is size bytes. Errors say what
// is wrong and where; they never panic, whatever the bytes.
func Parse(r io.ReaderAt, size int64) (*File, error) {
	p := &parser{r: bufio.NewReaderSize(io.NewSectionReader(r, 0, size), 1<<16), size: size}
	f, err := p.parse()
	if err != nil {
		return nil, fmt.Errorf("gguf: %w (%s)", err, corrupt)
	}
	f.r, f.size = r, size
	return f, nil
}

type parser struct {
	r    *bufio.Reader
	size int64
	pos  int64
}

func (p *parser) left() int64 { return p.size - p.pos }

func (p *parser) read(n int64, what string) ([]byte, error) {
	if n < 0 || n > p.left() {
		return nil, fmt.Errorf("%s at byte %d needs %d bytes but only %d remain", what, p.pos, n, p.left())
	}
	b := make([]byte, n)
	if _, err := io.ReadFull(p.r, b); err != nil {
		return nil, fmt.Errorf("%s at byte %d: %w", what, p.pos, err)
	}
	p.pos += n
	return b, nil
}

func (p *parser) u32(what string) (uint32, error) {
	b, err := p.read(4, what)
	if err != nil {
		return 0, err
	}
	return binary.LittleEndian.Uint32(b), nil
}

func (p *parser) u64(what string) (uint64, error) {
	b, err := p.read(8, what)
	if err != nil {
		return 0, err
	}
	return binary.LittleEndian.Uint64(b), nil
}

func (p *parser) str(what string) (string, error) {
	n, err := p.u64(what + " length")
	if err != nil {
		return "", err
	}
	if n > uint64(p.left()) {
		return "", fmt.Errorf("%s at byte %d claims %d bytes but only %d remain", what, p.pos, n, p.left())
	}
	b, err := p.read(int64(n), what)
	return string(b), err
}

func (p *parser) parse() (*File, error) {
	m, err := p.read(4, "magic")
	if err != nil {
		return nil, err
	}
	if string(m) != Magic {
		return nil, fmt.Errorf("magic is %q, not %q", m, Magic)
	}
	v, err := p.u32("version")
	if err != nil {
		return nil, err
	}
	if v != Version {
		return nil, fmt.Errorf("GGUF version %d; only version %d is supported", v, Version)
	}
	nt, err := p.u64("tensor count")
	if err != nil {
		return nil, err
	}
	nkv, err := p.u64("metadata count")
	if err != nil {
		return nil, err
	}
	// Every metadata entry takes at least 8+4 bytes and every tensor info 8+4+4+8.
	if nkv > uint64(p.left())/12 {
		return nil, fmt.Errorf("metadata count %d cannot fit in a file of %d bytes", nkv, p.size)
	}
	f := &File{Version: v, Alignment: DefaultAlignment, kv: map[string]int{}, ti: map[string]int{}}
	for i := uint64(0); i < nkv; i++ {
		key, err := p.str(fmt.Sprintf("metadata key %d", i))
		if err != nil {
			return nil, err
		}
		if _, dup := f.kv[key]; dup {
			return nil, fmt.Errorf("metadata key %q appears twice", key)
		}
		t, err := p.u32("type of " + key)
		if err != nil {
			return nil, err
		}
		val, err := p.value(ValueType(t), key, 0)
		if err != nil {
			return nil, err
		}
		f.kv[key] = len(f.KV)
		f.KV = append(f.KV, KV{Key: key, Value: val})
	}
	if i, ok := f.kv[KeyAlignment]; ok {
		a, ok := f.KV[i].Value.(uint32)
		if !ok || a == 0 || a&(a-1) != 0 {
			return nil, fmt.Errorf("%s is %v (%T), want a uint32 power of two", KeyAlignment, f.KV[i].Value, f.KV[i].Value)
		}
		f.Alignment = uint64(a)
	}
	if nt > uint64(p.left())/24 {
		return nil, fmt.Errorf("tensor count %d cannot fit in a file of %d bytes", nt, p.size)
	}
	for i := uint64(0); i < nt; i++ {
		name, err := p.str(fmt.Sprintf("name of tensor %d", i))
		if err != nil {
			return nil, err
		}
		if _, dup := f.ti[name]; dup {
			return nil, fmt.Errorf("tensor %q appears twice", name)
		}
		nd, err := p.u32("dimension count of " + name)
		if err != nil {
			return nil, err
		}
		if nd == 0 || nd > 4 {
			return nil, fmt.Errorf("tensor %s has %d dimensions; ggml allows 1 to 4", name, nd)
		}
		shape := make([]uint64, nd)
		for d := range shape {
			if shape[d], err = p.u64("shape of " + name); err != nil {
				return nil, err
			}
		}
		t, err := p.u32("type of " + name)
		if err != nil {
			return nil, err
		}
		off, err := p.u64("offset of " + name)
		if err != nil {
			return nil, err
		}
		typ := GGMLType(t)
		if !typ.Supported() {
			return nil, fmt.Errorf("tensor %s has ggml type %d, which this reader does not decode (F32, F16, Q8_0, Q4_0)", name, t)
		}
		n, err := tensorBytes(shape, typ)
		if err != nil {
			return nil, fmt.Errorf("tensor %s: %v", name, err)
		}
		if off%f.Alignment != 0 {
			return nil, fmt.Errorf("tensor %s: offset %d is not a multiple of the alignment %d", name, off, f.Alignment)
		}
		f.ti[name] = len(f.Tensors)
		f.Tensors = append(f.Tensors, TensorInfo{Name: name, Shape: shape, Type: typ, Offset: off, Size: n})
	}
	f.DataOffset = int64(alignUp(uint64(p.pos), f.Alignment))
	if len(f.Tensors) > 0 && f.DataOffset > p.size {
		return nil, fmt.Errorf("the data section would start at byte %d, past the end of the file (%d bytes)", f.DataOffset, p.size)
	}
	dataLen := uint64(max(0, p.size-f.DataOffset))
	order := make([]TensorInfo, len(f.Tensors))
	copy(order, f.Tensors)
	sort.Slice(order, func(i, j int) bool { return order[i].Offset < order[j].Offset })
	var end uint64
	for i, t := range order {
		if t.Offset > dataLen || t.Size > dataLen-t.Offset {
			return nil, fmt.Errorf("tensor %s (%s %v) needs bytes %d..%d of the data section, which has %d", t.Name, t.Type, t.Shape, t.Offset, t.Offset+t.Size, dataLen)
		}
		if i > 0 && t.Offset < end {
			return nil, fmt.Errorf("tensors %s and %s overlap", order[i-1].Name, t.Name)
		}
		end = t.Offset + t.Size
	}
	return f, nil
}

// value reads a value of type t (for key, at nesting depth).
func (p *parser) value(t ValueType, key string, depth int) (Value, error) {
	if sz := t.size(); sz > 0 {
		b, err := p.read(int64(sz), "value of "+key)
		if err != nil {
			return nil, err
		}
		le := binary.LittleEndian
		switch t {
		case TypeUint8:
			return b[0], nil
		case TypeInt8:
			return int8(b[0]), nil
		case TypeBool:
			if b[0] > 1 {
				return nil, fmt.Errorf("bool %s is %d, not 0 or 1", key, b[0])
			}
			return b[0] == 1, nil
		case TypeUint16:
			return le.Uint16(b), nil
		case TypeInt16:
			return int16(le.Uint16(b)), nil
		case TypeUint32:
			return le.Uint32(b), nil
		case TypeInt32:
			return int32(le.Uint32(b)), nil
		case TypeFloat32:
			return math.Float32frombits(le.Uint32(b)), nil
		case TypeUint64:
			return le.Uint64(b), nil
		case TypeInt64:
			return int64(le.Uint64(b)), nil
		case TypeFloat64:
			return math.Float64frombits(le.Uint64(b)), nil
		}
	}
	switch t {
	case TypeString:
		return p.str("string " + key)
	case TypeArray:
		if depth >= maxDepth {
			return nil, fmt.Errorf("%s: arrays nested deeper than %d", key, maxDepth)
		}
		et, err := p.u32("array element type of " + key)
		if err != nil {
			return nil, err
		}
		n, err := p.u64("array length of " + key)
		if err != nil {
			return nil, err
		}
		elem := ValueType(et)
		min := uint64(elem.size())
		switch elem {
		case TypeString:
			min = 8
		case TypeArray:
			min = 12
		}
		if min == 0 {
			return nil, fmt.Errorf("array %s has element type %d, which GGUF does not define", key, et)
		}
		if n > uint64(p.left())/min {
			return nil, fmt.Errorf("array %s claims %d elements but only %d bytes remain", key, n, p.left())
		}
		return p.array(elem, int(n), key, depth)
	}
	return nil, fmt.Errorf("metadata %s has value type %d, which GGUF does not define", key, uint32(t))
}

func (p *parser) array(elem ValueType, n int, key string, depth int) (Value, error) {
	switch elem {
	case TypeString:
		out := make([]string, n)
		for i := range out {
			s, err := p.str(fmt.Sprintf("%s[%d]", key, i))
			if err != nil {
				return nil, err
			}
			out[i] = s
		}
		return out, nil
	case TypeArray:
		out := make([]Value, n)
		for i := range out {
			v, err := p.value(TypeArray, fmt.Sprintf("%s[%d]", key, i), depth+1)
			if err != nil {
				return nil, err
			}
			out[i] = v
		}
		return out, nil
	}
	b, err := p.read(int64(n)*int64(elem.size()), "array "+key)
	if err != nil {
		return nil, err
	}
	le := binary.LittleEndian
	switch elem {
	case TypeUint8:
		return b, nil
	case TypeInt8:
		out := make([]int8, n)
		for i := range out {
			out[i] = int8(b[i])
		}
		return out, nil
	case TypeBool:
		out := make([]bool, n)
		for i := range out {
			if b[i] > 1 {
				return nil, fmt.Errorf("%s[%d] is %d, not a bool", key, i, b[i])
			}
			out[i] = b[i] == 1
		}
		return out, nil
	case TypeUint16:
		out := make([]uint16, n)
		for i := range out {
			out[i] = le.Uint16(b[2*i:])
		}
		return out, nil
	case TypeInt16:
		out := make([]int16, n)
		for i := range out {
			out[i] = int16(le.Uint16(b[2*i:]))
		}
		return out, nil
	case TypeUint32:
		out := make([]uint32, n)
		for i := range out {
			out[i] = le.Uint32(b[4*i:])
		}
		return out, nil
	case TypeInt32:
		out := make([]int32, n)
		for i := range out {
			out[i] = int32(le.Uint32(b[4*i:]))
		}
		return out, nil
	case TypeFloat32:
		out := make([]float32, n)
		for i := range out {
			out[i] = math.Float32frombits(le.Uint32(b[4*i:]))
		}
		return out, nil
	case TypeUint64:
		out := make([]uint64, n)
		for i := range out {
			out[i] = le.Uint64(b[8*i:])
		}
		return out, nil
	case TypeInt64:
		out := make([]int64, n)
		for i := range out {
			out[i] = int64(le.Uint64(b[8*i:]))
		}
		return out, nil
	case TypeFloat64:
		out := make([]float64, n)
		for i := range out {
			out[i] = math.Float64frombits(le.Uint64(b[8*i:]))
		}
		return out, nil
	}
	return nil, fmt.Errorf("array %s: element type %s", key, elem)
}

// Get returns the value of a metadata key.
func (f *File) Get(key string) (Value, bool) {
	i, ok := f.kv[key]
	if !ok {
		return nil, false
	}
	return f.KV[i].Value, true
}

// String returns a string metadata value, or "" when absent or of another type.
func (f *File) String(key string) string {
	v, _ := f.Get(key)
	s, _ := v.(string)
	return s
}

// Tensor returns the info of a named tensor.
func (f *File) Tensor(name string) (TensorInfo, bool) {
	i, ok := f.ti[name]
	if !ok {
		return TensorInfo{}, false
	}
	return f.Tensors[i], true
}

// ErrNoTensor is returned (wrapped) for a tensor name the file does not hold.
var ErrNoTensor = errors.New("no such tensor")

// Bytes returns the raw data of a tensor.
func (f *File) Bytes(name string) ([]byte, error) {
	t, ok := f.Tensor(name)
	if !ok {
		return nil, fmt.Errorf("gguf %s: %w %q", f.Path, ErrNoTensor, name)
	}
	b := make([]byte, t.Size)
	if _, err := f.r.ReadAt(b, f.DataOffset+int64(t.Offset)); err != nil {
		return nil, fmt.Errorf("gguf %s: tensor %s: %w", f.Path, name, err)
	}
	return b, nil
}

// Float32 returns a tensor's values, dequantized.
func (f *File) Float32(name string) ([]float32, error) {
	b, err := f.Bytes(name)
	if err != nil {
		return nil, err
	}
	t, _ := f.Tensor(name)
	out, err := Decode(t.Type, b, int(t.Elements()))
	if err != nil {
		return nil, fmt.Errorf("gguf %s: tensor %s: %w", f.Path, name, err)
	}
	return out, nil
}
