package gguf

import (
	"bufio"
	"encoding/binary"
	"fmt"
	"io"
	"math"
	"os"
	"path/filepath"

	"github.com/loractl/loractl/internal/atomicfile"
)

// Tensor is one tensor to write. Data returns its bytes (already encoded as Type, of exactly
// the size the shape and type imply); it is called once, in order, while the file is written,
// so a large model can be converted one tensor at a time.
type Tensor struct {
	Name  string
	Shape []uint64 // ggml ne, innermost first
	Type  GGMLType
	Data  func() ([]byte, error)
}

// Write writes a complete GGUF file to w: the metadata in the order given, then the tensor
// infos and the tensor data in the order given. The alignment is general.alignment when kv
// holds it (a uint32 power of two), else 32.
func Write(w io.Writer, kv []KV, tensors []Tensor) error {
	align := uint64(DefaultAlignment)
	seen := map[string]bool{}
	for _, e := range kv {
		if seen[e.Key] {
			return fmt.Errorf("gguf: metadata key %q given twice", e.Key)
		}
		seen[e.Key] = true
		if e.Key == KeyAlignment {
			a, ok := e.Value.(uint32)
			if !ok || a == 0 || a&(a-1) != 0 {
				return fmt.Errorf("gguf: %s must be a uint32 power of two, got %v (%T)", KeyAlignment, e.Value, e.Value)
			}
			align = uint64(a)
		}
	}
	buf, ok := w.(*bufio.Writer) // WriteFile's writer is already buffered
	if !ok {
		buf = bufio.NewWriterSize(w, 1<<20)
	}
	bw := &countingWriter{w: buf}
	bw.raw([]byte(Magic))
	bw.u32(Version)
	bw.u64(uint64(len(tensors)))
	bw.u64(uint64(len(kv)))
	for _, e := range kv {
		if e.Key == "" {
			return fmt.Errorf("gguf: empty metadata key")
		}
		bw.str(e.Key)
		if err := bw.value(e.Value, true); err != nil {
			return fmt.Errorf("gguf: metadata %s: %w", e.Key, err)
		}
	}
	sizes := make([]uint64, len(tensors))
	var off uint64
	names := map[string]bool{}
	for i, t := range tensors {
		if names[t.Name] {
			return fmt.Errorf("gguf: tensor %q given twice", t.Name)
		}
		names[t.Name] = true
		if len(t.Shape) > 4 {
			return fmt.Errorf("gguf: tensor %s has %d dimensions; ggml allows at most 4", t.Name, len(t.Shape))
		}
		n, err := tensorBytes(t.Shape, t.Type)
		if err != nil {
			return fmt.Errorf("gguf: tensor %s: %w", t.Name, err)
		}
		sizes[i] = n
		bw.str(t.Name)
		bw.u32(uint32(len(t.Shape)))
		for _, d := range t.Shape {
			bw.u64(d)
		}
		bw.u32(uint32(t.Type))
		bw.u64(off)
		off = alignUp(off+n, align)
	}
	bw.pad(align)
	for i, t := range tensors {
		if bw.err != nil {
			break
		}
		data, err := t.Data()
		if err != nil {
			return fmt.Errorf("gguf: tensor %s: %w", t.Name, err)
		}
		if uint64(len(data)) != sizes[i] {
			return fmt.Errorf("gguf: tensor %s: %d bytes of data, but shape %v of %s needs %d", t.Name, len(data), t.Shape, t.Type, sizes[i])
		}
		bw.raw(data)
		bw.pad(align) // as gguf-py, after every tensor including the last
	}
	if bw.err != nil {
		return bw.err
	}
	return buf.Flush()
}

// countingWriter writes little-endian fields and keeps the first error.
type countingWriter struct {
	w   io.Writer
	n   uint64
	err error
	buf [8]byte
}

func (c *countingWriter) raw(b []byte) {
	if c.err != nil {
		return
	}
	n, err := c.w.Write(b)
	c.n += uint64(n)
	c.err = err
}

func (c *countingWriter) u32(v uint32) {
	binary.LittleEndian.PutUint32(c.buf[:4], v)
	c.raw(c.buf[:4])
}

func (c *countingWriter) u64(v uint64) {
	binary.LittleEndian.PutUint64(c.buf[:8], v)
	c.raw(c.buf[:8])
}

func (c *countingWriter) str(s string) {
	c.u64(uint64(len(s)))
	c.raw([]byte(s))
}

func (c *countingWriter) pad(align uint64) {
	if r := c.n % align; r != 0 {
		c.raw(make([]byte, align-r))
	}
}

// value writes a value, preceded by its type tag when tagged.
func (c *countingWriter) value(v Value, tagged bool) error {
	t, elem, ok := typeOf(v)
	if !ok {
		return fmt.Errorf("values of Go type %T cannot be stored", v)
	}
	if tagged {
		c.u32(uint32(t))
	}
	le := binary.LittleEndian
	switch x := v.(type) {
	case uint8:
		c.raw([]byte{x})
	case int8:
		c.raw([]byte{byte(x)})
	case bool:
		b := byte(0)
		if x {
			b = 1
		}
		c.raw([]byte{b})
	case uint16:
		c.raw(le.AppendUint16(nil, x))
	case int16:
		c.raw(le.AppendUint16(nil, uint16(x)))
	case uint32:
		c.u32(x)
	case int32:
		c.u32(uint32(x))
	case float32:
		c.u32(math.Float32bits(x))
	case uint64:
		c.u64(x)
	case int64:
		c.u64(uint64(x))
	case float64:
		c.u64(math.Float64bits(x))
	case string:
		c.str(x)
	case []Value:
		// Nested arrays: every element must itself be an array of one element type.
		var inner ValueType
		for i, e := range x {
			et, ei, ok := typeOf(e)
			if !ok || et != TypeArray {
				return fmt.Errorf("element %d of a nested array is %T, not an array", i, e)
			}
			if i == 0 {
				inner = ei
			} else if ei != inner {
				return fmt.Errorf("element %d of a nested array holds %s, element 0 holds %s; GGUF arrays have one element type", i, ei, inner)
			}
		}
		c.u32(uint32(TypeArray))
		c.u64(uint64(len(x)))
		for _, e := range x {
			if err := c.value(e, false); err != nil {
				return err
			}
		}
	default:
		// Arrays of scalars or strings.
		c.u32(uint32(elem))
		return c.array(v)
	}
	return nil
}

// array writes the count and elements of a slice of scalars or strings.
func (c *countingWriter) array(v Value) error {
	switch x := v.(type) {
	case []string:
		c.u64(uint64(len(x)))
		for _, s := range x {
			c.str(s)
		}
		return nil
	case []uint8:
		c.u64(uint64(len(x)))
		c.raw(x)
		return nil
	}
	// Everything else is fixed-size: binary.Write handles the slice types and bools as bytes.
	n := sliceLen(v)
	c.u64(uint64(n))
	if c.err != nil {
		return nil
	}
	var buf []byte
	var err error
	if buf, err = binary.Append(nil, binary.LittleEndian, v); err != nil {
		return err
	}
	c.raw(buf)
	return nil
}

func sliceLen(v Value) int {
	switch x := v.(type) {
	case []int8:
		return len(x)
	case []uint16:
		return len(x)
	case []int16:
		return len(x)
	case []uint32:
		return len(x)
	case []int32:
		return len(x)
	case []float32:
		return len(x)
	case []bool:
		return len(x)
	case []uint64:
		return len(x)
	case []int64:
		return len(x)
	case []float64:
		return len(x)
	}
	return 0
}

// tempWrapper, when set (by tests), wraps the temporary file's writer, e.g. to fail after N
// bytes as a full disk does.
var tempWrapper func(io.Writer) io.Writer

// WriteFile writes a GGUF file to path atomically: into a temporary file in the same folder,
// which is synced and renamed over path. On any error the temporary file is removed and path
// is left as it was. An existing path is refused unless overwrite is set.
func WriteFile(path string, overwrite bool, kv []KV, tensors []Tensor) error {
	if st, err := os.Stat(path); err == nil {
		if st.IsDir() {
			return fmt.Errorf("%s is a folder; --out must name a .gguf file", path)
		}
		if !overwrite {
			return fmt.Errorf("%s already exists; pass --overwrite to replace it, or choose another --out", path)
		}
	}
	dir := filepath.Dir(path)
	if st, err := os.Stat(dir); err != nil || !st.IsDir() {
		return fmt.Errorf("write %s: the folder %s does not exist; create it first", path, dir)
	}
	return atomicfile.WriteFunc(path, func(w io.Writer) error {
		if tempWrapper != nil {
			w = tempWrapper(w)
		}
		return Write(w, kv, tensors)
	})
}
