package safetensors

import (
	"bytes"
	"encoding/json"
	"fmt"
	"os"
	"path/filepath"
	"sort"
	"strings"
)

// IndexFile is the name of the index of a sharded checkpoint.
const IndexFile = "model.safetensors.index.json"

// SingleFile is the name of an unsharded checkpoint inside a model directory.
const SingleFile = "model.safetensors"

// Checkpoint is a model's weights, possibly spread over several shard files.
type Checkpoint struct {
	path     string  // what OpenCheckpoint was given
	files    []*File // sorted by path
	where    map[string]*File
	names    []string // sorted
	metadata map[string]string
}

// OpenCheckpoint opens a model's weights. path may be:
//   - a directory holding model.safetensors.index.json (sharded; the index wins),
//     or model.safetensors, or exactly one *.safetensors file;
//   - a .safetensors file;
//   - an *.index.json file.
//
// For a sharded checkpoint it checks that every shard exists, every tensor of the
// weight_map is in its shard, and no tensor is in two shards (or in a shard but not in
// the weight_map).
func OpenCheckpoint(path string) (*Checkpoint, error) {
	st, err := os.Stat(path)
	if err != nil {
		return nil, fmt.Errorf("open checkpoint: %w", err)
	}
	if !st.IsDir() {
		if strings.HasSuffix(path, ".json") {
			return openSharded(path)
		}
		return openSingle(path, path)
	}
	idx := filepath.Join(path, IndexFile)
	if _, err := os.Stat(idx); err == nil {
		return openSharded(idx)
	}
	single := filepath.Join(path, SingleFile)
	if _, err := os.Stat(single); err == nil {
		return openSingle(path, single)
	}
	matches, err := filepath.Glob(filepath.Join(path, "*.safetensors"))
	if err != nil {
		return nil, fmt.Errorf("%s: %w", path, err)
	}
	switch len(matches) {
	case 0:
		return nil, fmt.Errorf("%s: no %s, %s or *.safetensors file in this directory; point at a model directory or a .safetensors file", path, IndexFile, SingleFile)
	case 1:
		return openSingle(path, matches[0])
	}
	for i := range matches {
		matches[i] = filepath.Base(matches[i])
	}
	return nil, fmt.Errorf("%s: %d .safetensors files (%s) but no %s; pass one file, or add an index", path, len(matches), strings.Join(matches, ", "), IndexFile)
}

// openSingle builds a checkpoint from one file.
func openSingle(path, file string) (*Checkpoint, error) {
	f, err := Open(file)
	if err != nil {
		return nil, err
	}
	c := &Checkpoint{path: path, files: []*File{f}, where: map[string]*File{}, metadata: f.Metadata()}
	for _, t := range f.Tensors() {
		c.where[t.Name] = f
	}
	c.names = f.Names()
	return c, nil
}

// shardIndex is model.safetensors.index.json after strict parsing.
type shardIndex struct {
	metadata  map[string]string // values that are not strings kept as their JSON text
	weightMap map[string]string // tensor name → shard file name
}

// parseIndex reads an index file, rejecting duplicate keys and non-string shard names.
func parseIndex(path string) (*shardIndex, error) {
	raw, err := os.ReadFile(path)
	if err != nil {
		return nil, fmt.Errorf("read index: %w", err)
	}
	var top map[string]json.RawMessage
	if err := json.Unmarshal(raw, &top); err != nil {
		return nil, fmt.Errorf("%s: not a JSON object: %v", path, err)
	}
	idx := &shardIndex{}
	wm, ok := top["weight_map"]
	if !ok {
		return nil, fmt.Errorf("%s: no \"weight_map\"; a shard index maps tensor names to shard files", path)
	}
	dec := json.NewDecoder(bytes.NewReader(wm))
	idx.weightMap, err = readStringMap(dec, "weight_map")
	if err != nil {
		return nil, fmt.Errorf("%s: %w", path, err)
	}
	if len(idx.weightMap) == 0 {
		return nil, fmt.Errorf("%s: weight_map is empty", path)
	}
	if md, ok := top["metadata"]; ok && !bytes.Equal(bytes.TrimSpace(md), []byte("null")) {
		var m map[string]json.RawMessage
		if err := json.Unmarshal(md, &m); err != nil {
			return nil, fmt.Errorf("%s: \"metadata\" is not an object: %v", path, err)
		}
		idx.metadata = make(map[string]string, len(m))
		for k, v := range m {
			var s string
			if json.Unmarshal(v, &s) == nil {
				idx.metadata[k] = s
			} else {
				idx.metadata[k] = string(bytes.TrimSpace(v)) // e.g. total_size: a number
			}
		}
	}
	return idx, nil
}

// openSharded opens every shard named by an index file and cross-checks them.
func openSharded(indexPath string) (_ *Checkpoint, err error) {
	idx, err := parseIndex(indexPath)
	if err != nil {
		return nil, err
	}
	dir := filepath.Dir(indexPath)
	c := &Checkpoint{path: indexPath, where: make(map[string]*File, len(idx.weightMap))}
	defer func() {
		if err != nil {
			c.Close() // unmap the shards opened so far
		}
	}()
	// Open each distinct shard once, in name order.
	byShard := map[string]*File{}
	var shards []string
	for _, s := range idx.weightMap {
		if _, ok := byShard[s]; !ok {
			byShard[s] = nil
			shards = append(shards, s)
		}
	}
	sort.Strings(shards)
	for _, s := range shards {
		if !filepath.IsLocal(s) {
			return nil, fmt.Errorf("%s: shard name %q is not a plain file name inside %s; fix the weight_map", indexPath, s, dir)
		}
		p := filepath.Join(dir, s)
		if _, err := os.Stat(p); err != nil {
			return nil, fmt.Errorf("%s: shard %s is missing (%v); download every shard listed in the weight_map", indexPath, s, err)
		}
		f, err := Open(p)
		if err != nil {
			return nil, err
		}
		byShard[s] = f
		c.files = append(c.files, f)
	}
	// Every listed tensor must be in its shard.
	for name, s := range idx.weightMap {
		f := byShard[s]
		if _, ok := f.Info(name); !ok {
			return nil, fmt.Errorf("%s: weight_map puts tensor %q in %s but that shard does not hold it; the index and shards do not match", indexPath, name, s)
		}
	}
	// Every tensor in a shard must be listed for that shard, and be in one shard only.
	seen := map[string]string{}
	for _, s := range shards {
		for _, t := range byShard[s].Tensors() {
			if other, dup := seen[t.Name]; dup {
				return nil, fmt.Errorf("%s: tensor %q is in both %s and %s; a tensor must live in one shard", indexPath, t.Name, other, s)
			}
			seen[t.Name] = s
			if want, ok := idx.weightMap[t.Name]; !ok {
				return nil, fmt.Errorf("%s: shard %s holds tensor %q that the weight_map does not list; regenerate the index", indexPath, s, t.Name)
			} else if want != s {
				return nil, fmt.Errorf("%s: tensor %q is in %s but the weight_map says %s; a tensor must live in one shard", indexPath, t.Name, s, want)
			}
			c.where[t.Name] = byShard[s]
		}
	}
	for name := range c.where {
		c.names = append(c.names, name)
	}
	sort.Strings(c.names)
	// Metadata: the first shard's, overlaid with the index's own (stringified).
	c.metadata = map[string]string{}
	for k, v := range c.files[0].Metadata() {
		c.metadata[k] = v
	}
	for k, v := range idx.metadata {
		c.metadata[k] = v
	}
	return c, nil
}

// Path returns the path OpenCheckpoint was given.
func (c *Checkpoint) Path() string { return c.path }

// Files returns the paths of the safetensors files, sorted.
func (c *Checkpoint) Files() []string {
	out := make([]string, len(c.files))
	for i, f := range c.files {
		out[i] = f.Path()
	}
	return out
}

// Names returns all tensor names, sorted. Callers must not modify the slice.
func (c *Checkpoint) Names() []string { return c.names }

// Info returns the description of tensor name; Begin/End are relative to its own file.
func (c *Checkpoint) Info(name string) (TensorInfo, bool) {
	f, ok := c.where[name]
	if !ok {
		return TensorInfo{}, false
	}
	return f.Info(name)
}

// File returns the file that holds tensor name.
func (c *Checkpoint) File(name string) (*File, bool) {
	f, ok := c.where[name]
	return f, ok
}

// Bytes returns a zero-copy, read-only view of the tensor's raw data, valid until Close.
func (c *Checkpoint) Bytes(name string) ([]byte, error) {
	f, ok := c.where[name]
	if !ok {
		return nil, notFound(name, c.path, c.names)
	}
	return f.Bytes(name)
}

// Float32 returns the tensor converted to a new float32 slice, from any float dtype.
func (c *Checkpoint) Float32(name string) ([]float32, error) {
	f, ok := c.where[name]
	if !ok {
		return nil, notFound(name, c.path, c.names)
	}
	return f.Float32(name)
}

// Metadata returns the file's __metadata__ for a single file; for a sharded checkpoint,
// the first shard's __metadata__ overlaid with the index's "metadata" (non-string values,
// such as total_size, as their JSON text). May be nil. Callers must not modify it.
func (c *Checkpoint) Metadata() map[string]string { return c.metadata }

// Close unmaps every file. Views returned by Bytes must not be used afterwards.
func (c *Checkpoint) Close() error {
	var first error
	for _, f := range c.files {
		if err := f.Close(); err != nil && first == nil {
			first = err
		}
	}
	return first
}
