package gguf

import (
	"os"
	"path/filepath"
	"testing"

	gp "github.com/gpustack/gguf-parser-go"

	"github.com/loractl/loractl/internal/model"
)

// TestParserGoReadsExports checks our files with an independent GGUF parser
// (github.com/gpustack/gguf-parser-go): it must parse them, and report the architecture,
// tensor count, per-tensor types and shapes, and the tokenizer as written.
func TestParserGoReadsExports(t *testing.T) {
	dir := stories(t)
	cfg, err := model.LoadConfig(dir)
	if err != nil {
		t.Fatal(err)
	}
	for _, format := range []string{FormatF16, FormatQ8_0, FormatQ4_0} {
		out := filepath.Join(t.TempDir(), "stories260K-"+format+".gguf")
		if _, err := ExportModel(dir, out, format, false); err != nil {
			t.Fatal(err)
		}
		pf, err := gp.ParseGGUFFile(out)
		if err != nil {
			t.Fatalf("%s: gguf-parser-go: %v", format, err)
		}
		ours, err := Open(out)
		if err != nil {
			t.Fatal(err)
		}
		arch, md, tok := pf.Architecture(), pf.Metadata(), pf.Tokenizer()
		st, _ := os.Stat(out)
		t.Logf("%s: %d bytes; gguf-parser-go: version %d, type %q, architecture %q, file type %s, %d tensors, parameters %s, blocks %d, embedding %d, heads %d/%d, context %d, vocab %d; tokenizer %q with %d tokens, bos %d eos %d unk %d",
			format, st.Size(), pf.Header.Version, md.Type, arch.Architecture, md.FileTypeDescriptor, pf.Header.TensorCount, md.Parameters,
			arch.BlockCount, arch.EmbeddingLength, arch.AttentionHeadCount, arch.AttentionHeadCountKV, arch.MaximumContextLength, arch.VocabularyLength,
			tok.Model, tok.TokensLength, tok.BOSTokenID, tok.EOSTokenID, tok.UnknownTokenID)
		if md.Type != "model" || arch.Architecture != "llama" || md.Architecture != "llama" {
			t.Errorf("%s: type %q, architecture %q", format, md.Type, arch.Architecture)
		}
		if pf.Header.TensorCount != uint64(len(ours.Tensors)) || len(pf.TensorInfos) != len(ours.Tensors) {
			t.Fatalf("%s: parser sees %d tensors, we wrote %d", format, pf.Header.TensorCount, len(ours.Tensors))
		}
		for i, ti := range pf.TensorInfos {
			w := ours.Tensors[i]
			if ti.Name != w.Name || uint32(ti.Type) != uint32(w.Type) || len(ti.Dimensions) != len(w.Shape) || ti.Offset != w.Offset {
				t.Fatalf("%s: tensor %d: parser %s %s %v @%d, ours %s %s %v @%d", format, i, ti.Name, ti.Type, ti.Dimensions, ti.Offset, w.Name, w.Type, w.Shape, w.Offset)
			}
			for k := range w.Shape {
				if ti.Dimensions[k] != w.Shape[k] {
					t.Fatalf("%s: %s dims %v, ours %v", format, ti.Name, ti.Dimensions, w.Shape)
				}
			}
		}
		if arch.BlockCount != uint64(cfg.NumHiddenLayers) || arch.EmbeddingLength != uint64(cfg.HiddenSize) ||
			arch.AttentionHeadCount != uint64(cfg.NumAttentionHeads) || arch.AttentionHeadCountKV != uint64(cfg.NumKeyValueHeads) ||
			arch.VocabularyLength != uint64(cfg.VocabSize) {
			t.Errorf("%s: architecture as parsed: %+v", format, arch)
		}
		if tok.Model != "llama" || tok.TokensLength != uint64(cfg.VocabSize) || tok.BOSTokenID != int64(cfg.BOSTokenID) || tok.EOSTokenID != int64(cfg.EOSTokenIDs[0]) {
			t.Errorf("%s: tokenizer as parsed: %+v", format, tok)
		}
		ours.Close()
	}
}

func TestParserGoReadsAdapter(t *testing.T) {
	base := stories(t)
	cfg, err := model.LoadConfig(base)
	if err != nil {
		t.Fatal(err)
	}
	dir, a := randomAdapter(t, base, cfg, true, base)
	out := filepath.Join(t.TempDir(), "lora.gguf")
	if _, err := ExportLoRA(dir, out, "", false); err != nil {
		t.Fatal(err)
	}
	pf, err := gp.ParseGGUFFile(out)
	if err != nil {
		t.Fatalf("gguf-parser-go: %v", err)
	}
	md := pf.Metadata()
	alpha, ok := pf.Header.MetadataKV.Get("adapter.lora.alpha")
	t.Logf("adapter: gguf-parser-go type %q, architecture %q, %d tensors, adapter.lora.alpha %v", md.Type, md.Architecture, pf.Header.TensorCount, alpha.Value)
	if md.Type != "adapter" || md.Architecture != "llama" || pf.Header.TensorCount != uint64(2*len(a.Pairs)) {
		t.Errorf("type %q, architecture %q, %d tensors", md.Type, md.Architecture, pf.Header.TensorCount)
	}
	if !ok || alpha.ValueFloat32() != LoRAAlpha(a.Config) {
		t.Errorf("adapter.lora.alpha %v, want %g", alpha.Value, LoRAAlpha(a.Config))
	}
	if at, ok := pf.Header.MetadataKV.Get("adapter.type"); !ok || at.ValueString() != "lora" {
		t.Errorf("adapter.type %v", at.Value)
	}
}
