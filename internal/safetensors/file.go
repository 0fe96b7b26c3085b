package safetensors

import (
	"errors"
	"fmt"
	"math"
	"os"
	"sort"
	"strings"
)

// File is an open, memory-mapped safetensors file. Its header has been fully validated;
// tensor data is read lazily by the OS as it is touched. Methods may be called from
// several goroutines at once, but not concurrently with Close.
type File struct {
	path   string
	data   []byte // the whole file, mapped read-only
	header *Header
	byName map[string]int // name → index into header.Tensors
}

// Open maps a safetensors file and validates its header.
func Open(path string) (*File, error) {
	fd, err := os.Open(path)
	if err != nil {
		return nil, fmt.Errorf("open safetensors: %w", err)
	}
	defer fd.Close() // the mapping stays valid after the descriptor is closed
	st, err := fd.Stat()
	if err != nil {
		return nil, fmt.Errorf("%s: %w", path, err)
	}
	if !st.Mode().IsRegular() {
		return nil, fmt.Errorf("%s: not a regular file; pass a .safetensors file", path)
	}
	size := st.Size()
	if size < 8 {
		return nil, fmt.Errorf("%s: file is %d bytes, less than the 8-byte header length prefix; the file is truncated or not safetensors", path, size)
	}
	if size > math.MaxInt {
		return nil, fmt.Errorf("%s: file of %d bytes is too large to map on this platform", path, size)
	}
	data, err := mapFile(fd, int(size))
	if err != nil {
		return nil, fmt.Errorf("%s: mmap: %w", path, err)
	}
	h, err := ParseHeader(data, size)
	if err != nil {
		unmapFile(data)
		return nil, fmt.Errorf("%s: %w", path, err)
	}
	f := &File{path: path, data: data, header: h, byName: make(map[string]int, len(h.Tensors))}
	for i, t := range h.Tensors {
		f.byName[t.Name] = i
	}
	return f, nil
}

// Path returns the path the file was opened with.
func (f *File) Path() string { return f.path }

// Header returns the parsed header. Callers must not modify it.
func (f *File) Header() *Header { return f.header }

// Tensors returns the tensors sorted by data offset. Callers must not modify the slice.
func (f *File) Tensors() []TensorInfo { return f.header.Tensors }

// Names returns the tensor names, sorted.
func (f *File) Names() []string {
	names := make([]string, 0, len(f.header.Tensors))
	for _, t := range f.header.Tensors {
		names = append(names, t.Name)
	}
	sort.Strings(names)
	return names
}

// Metadata returns the __metadata__ map (nil if the file has none). Callers must not modify it.
func (f *File) Metadata() map[string]string { return f.header.Metadata }

// Info returns the description of tensor name.
func (f *File) Info(name string) (TensorInfo, bool) {
	i, ok := f.byName[name]
	if !ok {
		return TensorInfo{}, false
	}
	return f.header.Tensors[i], true
}

// Bytes returns a zero-copy, read-only view of the tensor's raw little-endian data. The view
// is valid until Close; writing to it faults.
func (f *File) Bytes(name string) ([]byte, error) {
	if f.data == nil {
		return nil, fmt.Errorf("%s: file is closed", f.path)
	}
	t, ok := f.Info(name)
	if !ok {
		return nil, notFound(name, f.path, f.Names())
	}
	lo, hi := f.header.DataOffset+t.Begin, f.header.DataOffset+t.End
	return f.data[lo:hi:hi], nil
}

// Float32 returns the tensor converted to a new float32 slice (row-major, same shape),
// from any float dtype.
func (f *File) Float32(name string) ([]float32, error) {
	b, err := f.Bytes(name)
	if err != nil {
		return nil, err
	}
	t, _ := f.Info(name)
	out, err := DecodeFloat32(t.DType, b)
	if err != nil {
		return nil, fmt.Errorf("%s: tensor %q: %w", f.path, name, err)
	}
	return out, nil
}

// Close unmaps the file. Views returned by Bytes must not be used afterwards.
// Closing twice is a no-op.
func (f *File) Close() error {
	if f.data == nil {
		return nil
	}
	err := unmapFile(f.data)
	f.data = nil
	if err != nil {
		return fmt.Errorf("%s: munmap: %w", f.path, err)
	}
	return nil
}

// ErrNotFound matches (with errors.Is) the error for a tensor name that is not present.
var ErrNotFound = errors.New("tensor not found")

// notFoundError is "tensor "x" not in <where>; available: ...". It matches ErrNotFound.
type notFoundError struct{ msg string }

func (e *notFoundError) Error() string        { return e.msg }
func (e *notFoundError) Is(target error) bool { return target == ErrNotFound }

// notFound builds the error for a missing tensor, listing a few of the available names,
// preferring those that share the last dotted component of the name asked for.
func notFound(name, where string, names []string) error {
	if len(names) == 0 {
		return &notFoundError{fmt.Sprintf("tensor %q not in %s, which holds no tensors", name, where)}
	}
	const show = 5
	var picks []string
	last := name
	if i := strings.LastIndexByte(name, '.'); i >= 0 {
		last = name[i+1:]
	}
	if last != "" {
		for _, n := range names {
			if strings.Contains(n, last) && len(picks) < show {
				picks = append(picks, n)
			}
		}
	}
	if len(picks) == 0 {
		picks = names[:min(show, len(names))]
	}
	more := ""
	if len(names) > len(picks) {
		more = fmt.Sprintf(", ... (%d tensors in all)", len(names))
	}
	quoted := make([]string, len(picks))
	for i, p := range picks {
		quoted[i] = fmt.Sprintf("%q", p)
	}
	return &notFoundError{fmt.Sprintf("tensor %q not in %s; available: %s%s", name, where, strings.Join(quoted, ", "), more)}
}
