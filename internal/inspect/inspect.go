// Package inspect describes a model folder, a .safetensors file or an adapter folder: its
// architecture, the config fields that matter, the parameter count, the dtype mix and the
// tensor table. The cli's inspect command prints a Report as text or JSON.
package inspect

import (
	"encoding/json"
	"errors"
	"fmt"
	"os"
	"path/filepath"
	"sort"

	"github.com/loractl/loractl/internal/model"
	"github.com/loractl/loractl/internal/safetensors"
	"github.com/loractl/loractl/internal/tokenizer"
)

// Kinds of inspected paths.
const (
	KindModel       = "model"       // a HuggingFace model folder (config.json + safetensors)
	KindAdapter     = "adapter"     // a PEFT adapter folder (adapter_config.json + adapter_model.safetensors)
	KindSafetensors = "safetensors" // a single .safetensors file
)

// Report is everything inspect knows about a path.
type Report struct {
	Path          string            `json:"path"`
	Kind          string            `json:"kind"`
	Architecture  string            `json:"architecture,omitempty"`
	Config        *model.Config     `json:"config,omitempty"`
	AdapterConfig map[string]any    `json:"adapter_config,omitempty"`
	Tokenizer     *TokenizerInfo    `json:"tokenizer,omitempty"`
	Files         []string          `json:"files"`
	Metadata      map[string]string `json:"metadata,omitempty"`
	NumParams     int64             `json:"num_params"` // elements over all tensors (tied weights counted once)
	NumBytes      int64             `json:"num_bytes"`
	DTypes        []DTypeCount      `json:"dtypes"`
	Tensors       []Tensor          `json:"tensors"`
}

// TokenizerInfo says which tokenizer a model folder carries.
type TokenizerInfo struct {
	File      string `json:"file"`
	VocabSize int    `json:"vocab_size"`
	BOS       int    `json:"bos_id"`
	EOS       int    `json:"eos_id"`
	Error     string `json:"error,omitempty"`
}

// DTypeCount sums the tensors of one dtype.
type DTypeCount struct {
	DType   string `json:"dtype"`
	Tensors int    `json:"tensors"`
	Params  int64  `json:"params"`
	Bytes   int64  `json:"bytes"`
}

// Tensor is one row of the tensor table.
type Tensor struct {
	Name  string `json:"name"`
	DType string `json:"dtype"`
	Shape []int  `json:"shape"`
	Bytes int64  `json:"bytes"`
	File  string `json:"file,omitempty"` // shard file, for sharded checkpoints
}

// Inspect examines path, which may be a model folder, an adapter folder or a .safetensors file.
func Inspect(path string) (*Report, error) {
	st, err := os.Stat(path)
	if err != nil {
		return nil, fmt.Errorf("inspect %s: no such file or directory; give a model folder, an adapter folder or a .safetensors file", path)
	}
	r := &Report{Path: path}
	weights := path
	switch {
	case !st.IsDir():
		r.Kind = KindSafetensors
	case exists(filepath.Join(path, "adapter_config.json")):
		r.Kind = KindAdapter
		if r.AdapterConfig, err = readJSONObject(filepath.Join(path, "adapter_config.json")); err != nil {
			return nil, err
		}
		weights = filepath.Join(path, "adapter_model.safetensors")
		if !exists(weights) {
			return nil, fmt.Errorf("%s: adapter_config.json is there but adapter_model.safetensors is missing; the adapter folder is incomplete", path)
		}
	case exists(filepath.Join(path, model.ConfigFile)):
		r.Kind = KindModel
		if r.Config, err = model.LoadConfig(path); err != nil {
			return nil, err
		}
		if raw, err := readJSONObject(filepath.Join(path, model.ConfigFile)); err == nil {
			if a, ok := raw["architectures"].([]any); ok && len(a) > 0 {
				r.Architecture, _ = a[0].(string)
			}
		}
		r.Tokenizer = tokenizerInfo(path)
	default:
		return nil, fmt.Errorf("%s: no config.json or adapter_config.json here; give a HuggingFace model folder, a PEFT adapter folder or a .safetensors file", path)
	}

	ck, err := safetensors.OpenCheckpoint(weights)
	if err != nil {
		return nil, err
	}
	defer ck.Close()
	r.Files = ck.Files()
	r.Metadata = ck.Metadata()
	sharded := len(r.Files) > 1
	byType := map[string]*DTypeCount{}
	for _, name := range ck.Names() {
		info, _ := ck.Info(name)
		t := Tensor{Name: name, DType: string(info.DType), Shape: info.Shape, Bytes: info.NumBytes()}
		if sharded {
			if f, ok := ck.File(name); ok {
				t.File = filepath.Base(f.Path())
			}
		}
		r.Tensors = append(r.Tensors, t)
		r.NumParams += info.NumElements()
		r.NumBytes += t.Bytes
		dc := byType[t.DType]
		if dc == nil {
			dc = &DTypeCount{DType: t.DType}
			byType[t.DType] = dc
		}
		dc.Tensors++
		dc.Params += info.NumElements()
		dc.Bytes += t.Bytes
	}
	for _, dc := range byType {
		r.DTypes = append(r.DTypes, *dc)
	}
	sort.Slice(r.DTypes, func(i, j int) bool { return r.DTypes[i].Params > r.DTypes[j].Params })
	return r, nil
}

func tokenizerInfo(dir string) *TokenizerInfo {
	file := ""
	for _, f := range []string{"tokenizer.json", "tokenizer.model", "vocab.json"} {
		if exists(filepath.Join(dir, f)) {
			file = f
			break
		}
	}
	if file == "" {
		return nil
	}
	info := &TokenizerInfo{File: file}
	tok, err := tokenizer.Open(dir)
	if err != nil {
		info.Error = err.Error()
		return info
	}
	info.VocabSize, info.BOS, info.EOS = tok.VocabSize(), tok.BOS(), tok.EOS()
	return info
}

func exists(p string) bool {
	_, err := os.Stat(p)
	return err == nil
}

func readJSONObject(path string) (map[string]any, error) {
	b, err := os.ReadFile(path)
	if err != nil {
		return nil, fmt.Errorf("%s: %w", path, err)
	}
	var m map[string]any
	if err := json.Unmarshal(b, &m); err != nil {
		return nil, fmt.Errorf("%s: not a JSON object (%v); the file is corrupt", path, err)
	}
	if m == nil {
		return nil, errors.New(path + ": not a JSON object; the file is corrupt")
	}
	return m, nil
}
