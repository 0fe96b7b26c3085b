package lora

import (
	"crypto/sha256"
	"encoding/hex"
	"errors"
	"fmt"
	"os"
	"path/filepath"
	"strings"

	"github.com/loractl/loractl/internal/model"
)

// FingerprintKey is the key of the base-model fingerprint in the __metadata__ of an adapter's
// safetensors header. PEFT and the safetensors library ignore metadata keys they do not know,
// so the file stays a plain PEFT adapter.
const FingerprintKey = "loractl.base_fingerprint"

// fingerprintVersion prefixes every fingerprint, so a later change of what is hashed is told
// apart from a different base model.
const fingerprintVersion = "arch1"

// Fingerprint identifies the shape of a base model as an adapter sees it: the architecture
// fields of config.json that decide tensor names and shapes (model_type, sizes, heads, vocab,
// tied embeddings, biases), and the name and shape of every tensor the model holds. Tensor data
// and dtypes are left out on purpose: the same base stored as F32, BF16 or in a quantized
// folder keeps its fingerprint, while any change of architecture or shape changes it.
func Fingerprint(c *model.Config) string {
	h := sha256.New()
	fmt.Fprintf(h, "model_type=%s\nhidden_size=%d\nintermediate_size=%d\nnum_hidden_layers=%d\n",
		c.ModelType, c.HiddenSize, c.IntermediateSize, c.NumHiddenLayers)
	fmt.Fprintf(h, "num_attention_heads=%d\nnum_key_value_heads=%d\nhead_dim=%d\nvocab_size=%d\n",
		c.NumAttentionHeads, c.NumKeyValueHeads, c.HeadDim, c.VocabSize)
	fmt.Fprintf(h, "tie_word_embeddings=%t\nqkv_bias=%t\no_bias=%t\nmlp_bias=%t\nqk_norm=%t\n",
		c.TieWordEmbeddings, c.QKVBias(), c.OBias(), c.MLPBias, c.QKNorm())
	fmt.Fprintf(h, "model.embed_tokens.weight %d,%d\n", c.VocabSize, c.HiddenSize)
	for _, m := range Modules(c) {
		fmt.Fprintf(h, "%s %d,%d\n", m.Weight(), m.Out, m.In)
	}
	if !c.TieWordEmbeddings {
		fmt.Fprintf(h, "lm_head.weight %d,%d\n", c.VocabSize, c.HiddenSize)
	}
	return fingerprintVersion + ":" + hex.EncodeToString(h.Sum(nil))
}

// CheckFingerprint compares the fingerprint recorded in the adapter (if any) with the base
// model's. An adapter without one (PEFT's own, or an older loractl's) passes; the shape check
// (CheckBase) still applies to it. where names the adapter folder in the error.
func (a *Adapter) CheckFingerprint(c *model.Config, where string) error {
	rec := a.Config.Fingerprint
	if rec == "" {
		return nil
	}
	if !strings.HasPrefix(rec, fingerprintVersion+":") {
		return nil // written by a loractl that hashed something else: fall back to the shape check
	}
	if got := Fingerprint(c); got != rec {
		base := a.Config.Base
		if base == "" {
			base = "(not recorded)"
		}
		return fmt.Errorf("%s: the adapter was trained on a different base model (base_model_name_or_path %s; fingerprint %.18s, this base %s (%s) has %.18s); merge it onto the base it was trained on",
			where, base, rec, c.Path, c.ModelType, got)
	}
	return nil
}

// LoadFor loads the adapter in dir for the base model c: Load, then CheckBase and
// CheckFingerprint. Every command that applies an adapter to a base goes through it. fix, when
// not empty, is the command's own advice, appended in parentheses to a base-mismatch error.
func LoadFor(dir string, c *model.Config, fix string) (*Adapter, error) {
	a, err := Load(dir)
	if err != nil && errors.Is(err, errVeRANeedsBase) {
		// A VeRA adapter from another tool: the base gives the modules' input widths.
		raw, rerr := os.ReadFile(filepath.Join(dir, ConfigFile))
		if rerr != nil {
			return nil, rerr
		}
		a, err = loadVeRA(dir, raw, veraInputs(c))
	}
	if err != nil {
		return nil, err
	}
	err = a.CheckBase(c, dir)
	if err == nil {
		err = a.CheckFingerprint(c, dir)
	}
	if err != nil && fix != "" {
		err = fmt.Errorf("%w (%s)", err, fix)
	}
	if err != nil {
		return nil, err
	}
	return a, nil
}
