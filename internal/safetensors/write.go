package safetensors

import (
	"bufio"
	"fmt"
	"os"
	"path/filepath"
	"sort"
)

// Tensor is a tensor to write: raw little-endian data of the given dtype and shape.
type Tensor struct {
	Name  string
	DType DType
	Shape []int // empty for a 0-d scalar
	Data  []byte
}

// Layout validates tensors and returns their header entries in file order: by dtype size
// (largest first, which keeps every tensor aligned to its element size when the data
// section starts at a multiple of 8), then by name. This is the order the Python/Rust
// safetensors library uses.
func Layout(tensors []Tensor) ([]TensorInfo, error) {
	seen := make(map[string]bool, len(tensors))
	order := make([]int, len(tensors))
	for i, t := range tensors {
		order[i] = i
		if t.Name == metadataKey {
			return nil, fmt.Errorf("tensor name %q is reserved for metadata; rename the tensor", t.Name)
		}
		if seen[t.Name] {
			return nil, fmt.Errorf("tensor %q given twice; names must be unique", t.Name)
		}
		seen[t.Name] = true
		if !t.DType.Valid() {
			return nil, fmt.Errorf("tensor %q: unknown dtype %q (known: %s)", t.Name, string(t.DType), knownDTypes)
		}
		for _, d := range t.Shape {
			if d < 0 {
				return nil, fmt.Errorf("tensor %q: negative dimension in shape %v", t.Name, t.Shape)
			}
		}
		n, ok := shapeBytes(t.Shape, t.DType)
		if !ok {
			return nil, fmt.Errorf("tensor %q: shape %v of %s overflows int64 bytes", t.Name, t.Shape, t.DType)
		}
		if n != int64(len(t.Data)) {
			return nil, fmt.Errorf("tensor %q: shape %v of %s needs %d bytes but Data has %d", t.Name, t.Shape, t.DType, n, len(t.Data))
		}
	}
	sort.SliceStable(order, func(a, b int) bool {
		ta, tb := tensors[order[a]], tensors[order[b]]
		if sa, sb := ta.DType.Size(), tb.DType.Size(); sa != sb {
			return sa > sb
		}
		return ta.Name < tb.Name
	})
	infos := make([]TensorInfo, len(tensors))
	var pos int64
	for i, k := range order {
		t := tensors[k]
		shape := append([]int{}, t.Shape...)
		infos[i] = TensorInfo{Name: t.Name, DType: t.DType, Shape: shape, Begin: pos, End: pos + int64(len(t.Data))}
		pos += int64(len(t.Data))
	}
	return infos, nil
}

// Write writes tensors and metadata (nil or empty for none) as a safetensors file at path.
// Sizes are validated first. The file is written to a temporary file in the same directory,
// fsynced, renamed over path and the directory fsynced, so path never holds a half-written
// file; on any error the temporary file is removed and path is left untouched.
func Write(path string, tensors []Tensor, metadata map[string]string) (err error) {
	infos, err := Layout(tensors)
	if err != nil {
		return fmt.Errorf("write %s: %w", path, err)
	}
	header := EncodeHeader(infos, metadata)
	if n := len(header) - 8; n > MaxHeaderSize {
		return fmt.Errorf("write %s: header would be %d bytes, over the %d-byte limit; store fewer tensors or less metadata per file", path, n, MaxHeaderSize)
	}
	byName := make(map[string][]byte, len(tensors))
	for _, t := range tensors {
		byName[t.Name] = t.Data
	}

	dir, base := filepath.Split(path)
	if dir == "" {
		dir = "."
	}
	tmp, err := os.CreateTemp(dir, "."+base+".tmp-*")
	if err != nil {
		return fmt.Errorf("write %s: create temp file: %w", path, err)
	}
	tmpName := tmp.Name()
	defer func() {
		if err != nil {
			tmp.Close()
			os.Remove(tmpName)
		}
	}()
	w := bufio.NewWriterSize(tmp, 1<<20)
	if _, err = w.Write(header); err != nil {
		return fmt.Errorf("write %s: %w", tmpName, err)
	}
	for _, t := range infos {
		if _, err = w.Write(byName[t.Name]); err != nil {
			return fmt.Errorf("write %s: %w", tmpName, err)
		}
	}
	if err = w.Flush(); err != nil {
		return fmt.Errorf("write %s: %w", tmpName, err)
	}
	if err = tmp.Chmod(0o644); err != nil {
		return fmt.Errorf("write %s: chmod: %w", tmpName, err)
	}
	if err = tmp.Sync(); err != nil {
		return fmt.Errorf("write %s: fsync: %w", tmpName, err)
	}
	if err = tmp.Close(); err != nil {
		return fmt.Errorf("write %s: close: %w", tmpName, err)
	}
	if err = os.Rename(tmpName, path); err != nil {
		return fmt.Errorf("write %s: rename temp file into place: %w", path, err)
	}
	// The rename is done; a failing directory sync must not remove anything.
	if d, derr := os.Open(dir); derr == nil {
		serr := d.Sync()
		d.Close()
		if serr != nil {
			return fmt.Errorf("write %s: fsync directory %s: %w (the file is in place)", path, dir, serr)
		}
	}
	return nil
}
