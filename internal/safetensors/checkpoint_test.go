package safetensors

import (
	"bytes"
	"encoding/json"
	"math/rand/v2"
	"os"
	"path/filepath"
	"reflect"
	"sort"
	"strings"
	"testing"
)

// shardedModel writes tensors split over shards (shard name → tensor names) and an index
// in a new directory, returning the directory and the tensors by name.
func shardedModel(t *testing.T, rng *rand.Rand, shards map[string][]string, weightMap map[string]string) (string, map[string]Tensor) {
	t.Helper()
	dir := t.TempDir()
	all := map[string]Tensor{}
	for shard, names := range shards {
		var ts []Tensor
		for i, n := range names {
			tt := randTensor(rng, n, []DType{F32, BF16, F16}[i%3], 1+rng.IntN(4), 1+rng.IntN(5))
			ts = append(ts, tt)
			all[n] = tt
		}
		if err := Write(filepath.Join(dir, shard), ts, map[string]string{"format": "pt"}); err != nil {
			t.Fatal(err)
		}
	}
	if weightMap == nil {
		weightMap = map[string]string{}
		for shard, names := range shards {
			for _, n := range names {
				weightMap[n] = shard
			}
		}
	}
	writeIndex(t, dir, map[string]any{"metadata": map[string]any{"total_size": 1234}, "weight_map": weightMap})
	return dir, all
}

func writeIndex(t *testing.T, dir string, v any) {
	t.Helper()
	b, err := json.MarshalIndent(v, "", "  ")
	if err != nil {
		t.Fatal(err)
	}
	if err := os.WriteFile(filepath.Join(dir, IndexFile), b, 0o644); err != nil {
		t.Fatal(err)
	}
}

func TestCheckpointSharded(t *testing.T) {
	rng := rand.New(rand.NewPCG(5, 6))
	shards := map[string][]string{
		"model-00001-of-00003.safetensors": {"embed.weight", "layers.0.q.weight", "layers.0.k.weight"},
		"model-00002-of-00003.safetensors": {"layers.1.q.weight", "layers.1.k.weight"},
		"model-00003-of-00003.safetensors": {"norm.weight"},
	}
	dir, all := shardedModel(t, rng, shards, nil)
	for _, path := range []string{dir, filepath.Join(dir, IndexFile)} {
		c, err := OpenCheckpoint(path)
		if err != nil {
			t.Fatal(err)
		}
		var want []string
		for n := range all {
			want = append(want, n)
		}
		sort.Strings(want)
		if !reflect.DeepEqual(c.Names(), want) {
			t.Errorf("Names %v, want %v", c.Names(), want)
		}
		if len(c.Files()) != 3 || !strings.HasSuffix(c.Files()[0], "model-00001-of-00003.safetensors") {
			t.Errorf("Files %v", c.Files())
		}
		for name, tt := range all {
			b, err := c.Bytes(name)
			if err != nil || !bytes.Equal(b, tt.Data) {
				t.Errorf("%s: bytes differ (err %v)", name, err)
			}
			info, ok := c.Info(name)
			if !ok || info.DType != tt.DType || info.NumBytes() != int64(len(tt.Data)) {
				t.Errorf("%s: info %+v", name, info)
			}
			want, _ := DecodeFloat32(tt.DType, tt.Data)
			got, err := c.Float32(name)
			if err != nil || len(got) != len(want) {
				t.Fatalf("%s: Float32 %v", name, err)
			}
			for i := range got {
				if got[i] != want[i] && (got[i] == got[i] || want[i] == want[i]) {
					t.Fatalf("%s[%d] = %v, want %v", name, i, got[i], want[i])
				}
			}
		}
		if md := c.Metadata(); md["format"] != "pt" || md["total_size"] != "1234" {
			t.Errorf("metadata %v", md)
		}
		if _, err := c.Bytes("layers.2.q.weight"); err == nil || !strings.Contains(err.Error(), `tensor "layers.2.q.weight" not in`) || !strings.Contains(err.Error(), "layers.0.q.weight") {
			t.Errorf("not found: %v", err)
		}
		if err := c.Close(); err != nil {
			t.Fatal(err)
		}
	}
}

func TestCheckpointShardErrors(t *testing.T) {
	shards := map[string][]string{"a.safetensors": {"x", "y"}, "b.safetensors": {"z"}}
	cases := []struct {
		name      string
		shards    map[string][]string
		weightMap map[string]string
		index     string // raw index JSON, overrides weightMap
		want      string
	}{
		{"missing shard", shards, map[string]string{"x": "a.safetensors", "y": "a.safetensors", "z": "c.safetensors"}, "", "shard c.safetensors is missing"},
		{"tensor not in its shard", shards, map[string]string{"x": "a.safetensors", "y": "b.safetensors", "z": "b.safetensors"}, "", `puts tensor "y" in b.safetensors but that shard does not hold it`},
		{"tensor listed nowhere", shards, map[string]string{"x": "a.safetensors", "z": "b.safetensors"}, "", `holds tensor "y" that the weight_map does not list`},
		{"tensor in two shards", map[string][]string{"a.safetensors": {"x", "y"}, "b.safetensors": {"y", "z"}}, map[string]string{"x": "a.safetensors", "y": "a.safetensors", "z": "b.safetensors"}, "", `tensor "y" is in both a.safetensors and b.safetensors`},
		{"path escape", shards, nil, `{"weight_map":{"x":"../a.safetensors"}}`, "not a plain file name"},
		{"duplicate key", shards, nil, `{"weight_map":{"x":"a.safetensors","x":"b.safetensors"}}`, `key "x" appears twice`},
		{"no weight_map", shards, nil, `{"metadata":{}}`, `no "weight_map"`},
		{"empty weight_map", shards, nil, `{"weight_map":{}}`, "weight_map is empty"},
		{"not JSON", shards, nil, `{"weight_map":`, "not a JSON object"},
		{"shard name not string", shards, nil, `{"weight_map":{"x":1}}`, `value of "x" must be a string`},
	}
	for _, c := range cases {
		t.Run(c.name, func(t *testing.T) {
			dir, _ := shardedModel(t, rand.New(rand.NewPCG(1, 1)), c.shards, c.weightMap)
			if c.index != "" {
				if err := os.WriteFile(filepath.Join(dir, IndexFile), []byte(c.index), 0o644); err != nil {
					t.Fatal(err)
				}
			}
			ck, err := OpenCheckpoint(dir)
			if err == nil {
				ck.Close()
				t.Fatal("accepted")
			}
			t.Log(err)
			if !strings.Contains(err.Error(), c.want) || !strings.Contains(err.Error(), dir) {
				t.Errorf("got %v, want %q and the path", err, c.want)
			}
		})
	}
	// A corrupt shard reports the shard's own path.
	dir, _ := shardedModel(t, rand.New(rand.NewPCG(1, 1)), shards, nil)
	bad := filepath.Join(dir, "b.safetensors")
	if err := os.WriteFile(bad, []byte{1, 2, 3}, 0o644); err != nil {
		t.Fatal(err)
	}
	if _, err := OpenCheckpoint(dir); err == nil || !strings.Contains(err.Error(), bad) {
		t.Errorf("corrupt shard: %v", err)
	}
}

func TestCheckpointLayouts(t *testing.T) {
	rng := rand.New(rand.NewPCG(9, 9))
	one := []Tensor{randTensor(rng, "w", F32, 2, 2)}
	write := func(path string) {
		t.Helper()
		if err := Write(path, one, map[string]string{"format": "pt"}); err != nil {
			t.Fatal(err)
		}
	}
	// model.safetensors in a directory (wins over other files).
	d1 := t.TempDir()
	write(filepath.Join(d1, "model.safetensors"))
	write(filepath.Join(d1, "other.safetensors"))
	// Exactly one *.safetensors with another name.
	d2 := t.TempDir()
	write(filepath.Join(d2, "adapter_model.safetensors"))
	// A file path.
	f3 := filepath.Join(t.TempDir(), "x.safetensors")
	write(f3)
	for _, c := range []struct{ path, file string }{
		{d1, filepath.Join(d1, "model.safetensors")},
		{d2, filepath.Join(d2, "adapter_model.safetensors")},
		{f3, f3},
	} {
		ck, err := OpenCheckpoint(c.path)
		if err != nil {
			t.Fatal(err)
		}
		if !reflect.DeepEqual(ck.Files(), []string{c.file}) || !reflect.DeepEqual(ck.Names(), []string{"w"}) || ck.Metadata()["format"] != "pt" {
			t.Errorf("%s: files %v names %v md %v", c.path, ck.Files(), ck.Names(), ck.Metadata())
		}
		if b, err := ck.Bytes("w"); err != nil || !bytes.Equal(b, one[0].Data) {
			t.Errorf("%s: bytes %v", c.path, err)
		}
		ck.Close()
	}
	// Errors: empty dir, ambiguous dir, missing path.
	d4 := t.TempDir()
	if _, err := OpenCheckpoint(d4); err == nil || !strings.Contains(err.Error(), "no model.safetensors.index.json, model.safetensors or *.safetensors") {
		t.Errorf("empty dir: %v", err)
	}
	write(filepath.Join(d4, "a.safetensors"))
	write(filepath.Join(d4, "b.safetensors"))
	if _, err := OpenCheckpoint(d4); err == nil || !strings.Contains(err.Error(), "2 .safetensors files (a.safetensors, b.safetensors)") {
		t.Errorf("ambiguous dir: %v", err)
	}
	if _, err := OpenCheckpoint(filepath.Join(d4, "missing")); err == nil || !strings.Contains(err.Error(), "missing") {
		t.Errorf("missing path: %v", err)
	}
}

func TestCheckpointStories260K(t *testing.T) {
	c, err := OpenCheckpoint(filepath.Dir(storiesPath(t)))
	if err != nil {
		t.Fatal(err)
	}
	defer c.Close()
	if len(c.Names()) != 47 || !sort.StringsAreSorted(c.Names()) {
		t.Fatalf("%d names, sorted %v", len(c.Names()), sort.StringsAreSorted(c.Names()))
	}
	if _, ok := c.Info("lm_head.weight"); ok {
		t.Error("lm_head.weight should be absent (tied embeddings)")
	}
	v, err := c.Float32("model.norm.weight")
	if err != nil || len(v) != 64 {
		t.Fatalf("norm: %d values, %v", len(v), err)
	}
}
