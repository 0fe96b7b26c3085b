package gguf

import (
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"math"
	"math/rand/v2"
	"os"
	"path/filepath"
	"strconv"
	"strings"
	"syscall"
	"testing"

	gp "github.com/gpustack/gguf-parser-go"

	"github.com/loractl/loractl/internal/model"
	"github.com/loractl/loractl/internal/refdata"
	"github.com/loractl/loractl/internal/safetensors"
	"github.com/loractl/loractl/internal/tokenizer/sentencepiece"
)

// synthModel writes a random untied llama model folder with BF16 weights, llama3 RoPE scaling
// and a made-up byte-level BPE tokenizer.json (vocab 512), so it needs no reference data.
func synthModel(t *testing.T, rng *rand.Rand) (string, map[string][]float32) {
	t.Helper()
	dir := t.TempDir()
	vocab := map[string]int{}
	var merges []string
	for i := 0; i < 510; i++ {
		vocab[fmt.Sprintf("t%d", i)] = i
	}
	for i := 0; i < 20; i++ {
		merges = append(merges, fmt.Sprintf("t%d t%d", rng.IntN(500), rng.IntN(500)))
	}
	tj, _ := json.Marshal(map[string]any{
		"added_tokens":   []map[string]any{{"id": 510, "content": "<|bos|>", "special": true}, {"id": 511, "content": "<|eos|>", "special": true}},
		"pre_tokenizer":  map[string]any{"type": "ByteLevel", "add_prefix_space": false, "use_regex": true},
		"model":          map[string]any{"type": "BPE", "vocab": vocab, "merges": merges},
		"post_processor": nil,
	})
	os.WriteFile(filepath.Join(dir, "tokenizer.json"), tj, 0o644)
	os.WriteFile(filepath.Join(dir, "tokenizer_config.json"), []byte(`{"bos_token": "<|bos|>", "eos_token": "<|eos|>", "chat_template": "{{ messages }}"}`), 0o644)
	heads, kv, hd := 4, 2, 16
	C, F, V, L := heads*hd, 96, 512, 2
	cfg := map[string]any{
		"model_type": "llama", "hidden_size": C, "intermediate_size": F, "num_hidden_layers": L,
		"num_attention_heads": heads, "num_key_value_heads": kv, "vocab_size": V, "rms_norm_eps": 1e-6,
		"rope_theta": 500000.0, "max_position_embeddings": 4096, "tie_word_embeddings": false,
		"bos_token_id": 510, "eos_token_id": 511, "torch_dtype": "bfloat16",
		"rope_scaling": map[string]any{"rope_type": "llama3", "factor": 8.0, "low_freq_factor": 1.0, "high_freq_factor": 4.0, "original_max_position_embeddings": 64},
	}
	b, _ := json.Marshal(cfg)
	os.WriteFile(filepath.Join(dir, "config.json"), b, 0o644)
	vals := map[string][]float32{}
	var ts []safetensors.Tensor
	add := func(name string, shape ...int) {
		n := 1
		for _, d := range shape {
			n *= d
		}
		v := randVec(rng, n, 0.05+rng.Float64())
		for i := range v { // exactly representable in BF16, so the source values are known
			v[i] = safetensors.BF16ToFloat32(safetensors.Float32ToBF16(v[i]))
		}
		data, _ := safetensors.EncodeFloat32(safetensors.BF16, v)
		vals[name] = v
		ts = append(ts, safetensors.Tensor{Name: name, DType: safetensors.BF16, Shape: shape, Data: data})
	}
	add("model.embed_tokens.weight", V, C)
	add("lm_head.weight", V, C)
	add("model.norm.weight", C)
	for l := 0; l < L; l++ {
		p := fmt.Sprintf("model.layers.%d.", l)
		add(p+"input_layernorm.weight", C)
		add(p+"post_attention_layernorm.weight", C)
		add(p+"self_attn.q_proj.weight", heads*hd, C)
		add(p+"self_attn.k_proj.weight", kv*hd, C)
		add(p+"self_attn.v_proj.weight", kv*hd, C)
		add(p+"self_attn.o_proj.weight", C, heads*hd)
		add(p+"mlp.gate_proj.weight", F, C)
		add(p+"mlp.up_proj.weight", F, C)
		add(p+"mlp.down_proj.weight", C, F)
	}
	if err := safetensors.Write(filepath.Join(dir, "model.safetensors"), ts, map[string]string{"format": "pt"}); err != nil {
		t.Fatal(err)
	}
	return dir, vals
}

func TestExportSyntheticUntied(t *testing.T) {
	rng := newRNG(t)
	dir, vals := synthModel(t, rng)
	cfg, err := model.LoadConfig(dir)
	if err != nil {
		t.Fatal(err)
	}
	out := filepath.Join(t.TempDir(), "s.gguf")
	rep, err := ExportModel(dir, out, FormatQ4_0, false)
	if err != nil {
		t.Fatal(err)
	}
	f, err := Open(out)
	if err != nil {
		t.Fatal(err)
	}
	defer f.Close()
	// Untied: output.weight is written, as Q8_0 (the output matrix under gguf-q4_0); the
	// embedding is Q4_0; rope_freqs holds the llama3 factors.
	types := map[string]GGMLType{"output.weight": Q8_0, "token_embd.weight": Q4_0, "rope_freqs.weight": F32, "blk.1.ffn_down.weight": Q4_0, "blk.0.attn_norm.weight": F32}
	for name, want := range types {
		ti, ok := f.Tensor(name)
		if !ok || ti.Type != want {
			t.Fatalf("%s: present %v, type %s, want %s (report %+v)", name, ok, ti.Type, want, rep)
		}
	}
	for k, want := range map[string]Value{"tokenizer.ggml.model": "gpt2", "tokenizer.ggml.pre": "gpt-2", "tokenizer.ggml.bos_token_id": uint32(510), "tokenizer.ggml.eos_token_id": uint32(511), "tokenizer.chat_template": "{{ messages }}"} {
		if got, _ := f.Get(k); got != want {
			t.Errorf("%s = %v, want %v", k, got, want)
		}
	}
	if m, _ := f.Get("tokenizer.ggml.merges"); len(m.([]string)) != 20 {
		t.Errorf("merges %v", m)
	}
	rf, _ := f.Float32("rope_freqs.weight")
	if len(rf) != cfg.HeadDim/2 {
		t.Fatalf("rope_freqs has %d values, want %d", len(rf), cfg.HeadDim/2)
	}
	// Factors run from 1 (high frequencies) to the scaling factor (low), never outside.
	if rf[0] != 1 || rf[len(rf)-1] != float32(cfg.RopeScaling.Factor) {
		t.Fatalf("rope_freqs %v", rf)
	}
	for i := 1; i < len(rf); i++ {
		if rf[i] < rf[i-1] {
			t.Fatalf("rope_freqs not monotone: %v", rf)
		}
	}
	for _, ti := range f.Tensors {
		if ti.Name == "rope_freqs.weight" {
			continue
		}
		hf, heads := hfName(t, ti.Name, cfg)
		src := vals[hf]
		got, err := f.Float32(ti.Name)
		if err != nil {
			t.Fatal(err)
		}
		if heads > 0 {
			got = UnpermuteRows(got, int(ti.Shape[1]), int(ti.Shape[0]), heads)
		}
		checkBound(t, ti.Name, ti.Type, src, got)
	}
	if pf, err := gp.ParseGGUFFile(out); err != nil || pf.Architecture().Architecture != "llama" || pf.Header.TensorCount != uint64(len(f.Tensors)) {
		t.Fatalf("gguf-parser-go: %v", err)
	}
}

func TestExportFullDisk(t *testing.T) {
	rng := newRNG(t)
	dir, _ := synthModel(t, rng)
	outDir := t.TempDir()
	out := filepath.Join(outDir, "s.gguf")
	for _, n := range []int{0, 4096, 100000} {
		tempWrapper = func(w io.Writer) io.Writer { return &failAfter{w: w, n: n} }
		_, err := ExportModel(dir, out, FormatQ8_0, false)
		tempWrapper = nil
		if err == nil || !errors.Is(err, syscall.ENOSPC) || !strings.Contains(err.Error(), out) {
			t.Fatalf("disk full after %d bytes: %v", n, err)
		}
		if ents, _ := os.ReadDir(outDir); len(ents) != 0 {
			t.Fatalf("disk full after %d bytes left %v", n, ents)
		}
	}
}

func TestExportNotANumber(t *testing.T) {
	rng := newRNG(t)
	dir, vals := synthModel(t, rng)
	// Rewrite the checkpoint with one NaN in a random matrix.
	ck, _ := safetensors.OpenCheckpoint(dir)
	var ts []safetensors.Tensor
	names := ck.Names()
	bad := names[rng.IntN(len(names))]
	for _, n := range names {
		v := append([]float32(nil), vals[n]...)
		if n == bad {
			v[rng.IntN(len(v))] = float32(math.NaN())
		}
		info, _ := ck.Info(n)
		data, _ := safetensors.EncodeFloat32(safetensors.F32, v)
		ts = append(ts, safetensors.Tensor{Name: n, DType: safetensors.F32, Shape: info.Shape, Data: data})
	}
	ck.Close()
	if err := safetensors.Write(filepath.Join(dir, "model.safetensors"), ts, nil); err != nil {
		t.Fatal(err)
	}
	outDir := t.TempDir()
	_, err := ExportModel(dir, filepath.Join(outDir, "x.gguf"), FormatF16, false)
	if err == nil || !strings.Contains(err.Error(), bad) || !strings.Contains(err.Error(), "not numbers") {
		t.Fatalf("NaN in %s: %v", bad, err)
	}
	if ents, _ := os.ReadDir(outDir); len(ents) != 0 {
		t.Fatalf("left %v", ents)
	}
}

// TestBPEVocab builds the byte-level BPE vocabularies of the llama3 and qwen3 tokenizers and
// checks them against tokenizer.json, then has gguf-parser-go read them back.
func TestBPEVocab(t *testing.T) {
	for _, c := range []struct{ name, pre string }{{"llama3", "llama-bpe"}, {"qwen3", "qwen2"}} {
		src := refdata.Path(t, "tokenizers", c.name)
		data, err := os.ReadFile(filepath.Join(src, "tokenizer.json"))
		if err != nil {
			t.Fatal(err)
		}
		var tj struct {
			Model struct {
				Vocab  map[string]int    `json:"vocab"`
				Merges []json.RawMessage `json:"merges"`
			} `json:"model"`
			Added []struct {
				ID      int    `json:"id"`
				Content string `json:"content"`
				Special bool   `json:"special"`
			} `json:"added_tokens"`
		}
		if err := json.Unmarshal(data, &tj); err != nil {
			t.Fatal(err)
		}
		n := 0
		for _, id := range tj.Model.Vocab {
			n = max(n, id+1)
		}
		for _, a := range tj.Added {
			n = max(n, a.ID+1)
		}
		vocabSize := n + 3 // room for [PADn] entries, as a model with a padded embedding has
		cfg := &model.Config{VocabSize: vocabSize, BOSTokenID: -1}
		v, err := LoadVocab(src, cfg)
		if err != nil {
			t.Fatal(err)
		}
		if v.Model != "gpt2" || v.Pre != c.pre || len(v.Tokens) != vocabSize || len(v.Types) != vocabSize || len(v.Merges) != len(tj.Model.Merges) {
			t.Fatalf("%s: model %s pre %s, %d tokens, %d types, %d merges (want %d tokens, %d merges)", c.name, v.Model, v.Pre, len(v.Tokens), len(v.Types), len(v.Merges), vocabSize, len(tj.Model.Merges))
		}
		for tok, id := range tj.Model.Vocab {
			if v.Tokens[id] != tok || v.Types[id] != tokNormal {
				t.Fatalf("%s: token %d is %q type %d, want %q normal", c.name, id, v.Tokens[id], v.Types[id], tok)
			}
		}
		for _, a := range tj.Added {
			if v.Tokens[a.ID] != a.Content || (a.Special && v.Types[a.ID] != tokControl) {
				t.Fatalf("%s: added token %d: %q type %d", c.name, a.ID, v.Tokens[a.ID], v.Types[a.ID])
			}
		}
		for i := n; i < vocabSize; i++ {
			if v.Types[i] != tokUnused || !strings.HasPrefix(v.Tokens[i], "[PAD") {
				t.Fatalf("%s: id %d: %q type %d, want a [PAD] unused token", c.name, i, v.Tokens[i], v.Types[i])
			}
		}
		if v.ChatTemplates[""] == "" {
			t.Fatalf("%s: no chat template", c.name)
		}
		if v.EOS < 0 {
			t.Fatalf("%s: no eos id", c.name)
		}
		// A vocabulary-only file, read back by gguf-parser-go.
		out := filepath.Join(t.TempDir(), "vocab.gguf")
		kv := append([]KV{{"general.architecture", "llama"}}, v.KV()...)
		if err := WriteFile(out, false, kv, nil); err != nil {
			t.Fatal(err)
		}
		pf, err := gp.ParseGGUFFile(out)
		if err != nil {
			t.Fatalf("%s: gguf-parser-go: %v", c.name, err)
		}
		tk := pf.Tokenizer()
		t.Logf("%s: gguf-parser-go tokenizer %q, %d tokens, %d merges, eos %d, %d added", c.name, tk.Model, tk.TokensLength, tk.MergesLength, tk.EOSTokenID, tk.AddedTokensLength)
		if tk.Model != "gpt2" || tk.TokensLength != uint64(vocabSize) || tk.MergesLength != uint64(len(v.Merges)) || tk.EOSTokenID != int64(v.EOS) {
			t.Fatalf("%s: parsed tokenizer %+v", c.name, tk)
		}
	}
}

// TestSentencepieceVocab checks the llama vocabulary of stories260K's tokenizer.model against
// the pieces, with the tokenizer_config.json overrides and padding to a larger vocab_size.
func TestSentencepieceVocab(t *testing.T) {
	rng := newRNG(t)
	dir := refdata.Stories260K(t)
	sp, err := sentencepiece.Load(filepath.Join(dir, "tokenizer.model"))
	if err != nil {
		t.Fatal(err)
	}
	tc, err := readTokenizerConfig(dir)
	if err != nil {
		t.Fatal(err)
	}
	extra := 1 + rng.IntN(40)
	v, err := LoadVocab(dir, &model.Config{VocabSize: sp.VocabSize() + extra, BOSTokenID: 1, EOSTokenIDs: []int{2}})
	if err != nil {
		t.Fatal(err)
	}
	if len(v.Tokens) != sp.VocabSize()+extra || v.Model != "llama" || v.Pre != "default" {
		t.Fatalf("%d tokens, model %s, pre %s", len(v.Tokens), v.Model, v.Pre)
	}
	bytesSeen := 0
	for id := 0; id < sp.VocabSize(); id++ {
		text, score, typ, _ := sp.Piece(id)
		if e, ok := tc.AddedDecoder[strconv.Itoa(id)]; ok {
			if v.Tokens[id] != e.Content || v.Scores[id] != -1000 || (e.Special && v.Types[id] != tokControl) {
				t.Fatalf("added token %d: %q %g %d", id, v.Tokens[id], v.Scores[id], v.Types[id])
			}
			continue
		}
		if v.Tokens[id] != text || v.Scores[id] != score {
			t.Fatalf("piece %d: %q %g, want %q %g", id, v.Tokens[id], v.Scores[id], text, score)
		}
		if typ == sentencepiece.Byte {
			bytesSeen++
			if v.Types[id] != tokByte {
				t.Fatalf("byte piece %d has type %d", id, v.Types[id])
			}
		}
	}
	if bytesSeen != 256 {
		t.Fatalf("%d byte pieces", bytesSeen)
	}
	for id := sp.VocabSize(); id < len(v.Tokens); id++ {
		if v.Tokens[id] != "[PAD"+strconv.Itoa(id)+"]" || v.Types[id] != tokUnused || v.Scores[id] != -10000 {
			t.Fatalf("pad %d: %q %d %g", id, v.Tokens[id], v.Types[id], v.Scores[id])
		}
	}
	if v.BOS != 1 || v.EOS != 2 || v.UNK != sp.UNK() || v.AddBOS == nil || !*v.AddBOS {
		t.Fatalf("bos %d eos %d unk %d add_bos %v", v.BOS, v.EOS, v.UNK, v.AddBOS)
	}
}

// TestBPEMergePairs checks merges given as pairs (tokenizers >= 0.20), including a part with a
// space, which gguf-py writes as U+0120.
func TestBPEMergePairs(t *testing.T) {
	rng := newRNG(t)
	dir := t.TempDir()
	n := 8 + rng.IntN(20)
	vocab := map[string]int{"a b": 0, "c": 1}
	for i := 2; i < n; i++ {
		vocab[fmt.Sprintf("w%d", i)] = i
	}
	pairs := [][2]string{{"a b", "c"}}
	for i := 0; i < 1+rng.IntN(5); i++ {
		pairs = append(pairs, [2]string{fmt.Sprintf("w%d", 2+rng.IntN(n-2)), fmt.Sprintf("w%d", 2+rng.IntN(n-2))})
	}
	tj, _ := json.Marshal(map[string]any{
		"pre_tokenizer": map[string]any{"type": "ByteLevel"},
		"model":         map[string]any{"type": "BPE", "vocab": vocab, "merges": pairs},
	})
	os.WriteFile(filepath.Join(dir, "tokenizer.json"), tj, 0o644)
	v, err := LoadVocab(dir, &model.Config{VocabSize: n, BOSTokenID: -1})
	if err != nil {
		t.Fatal(err)
	}
	if len(v.Merges) != len(pairs) || v.Merges[0] != "a\u0120b c" {
		t.Fatalf("merges %q", v.Merges)
	}
	for i, p := range pairs[1:] {
		if v.Merges[i+1] != p[0]+" "+p[1] {
			t.Fatalf("merge %d: %q, want %q", i+1, v.Merges[i+1], p[0]+" "+p[1])
		}
	}
}
