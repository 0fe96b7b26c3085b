package merge

import (
	"bytes"
	"encoding/json"
	"errors"
	"fmt"
	"io/fs"
	"os"
	"path/filepath"
	"slices"

	"github.com/loractl/loractl/internal/tokenizer"
)

// TokenizerFiles are the files copied unchanged from the base into the merged folder when
// present: the tokenizer itself, its config (which holds the chat template) and the separate
// chat-template files newer transformers versions write.
var TokenizerFiles = []string{
	"tokenizer.json", "tokenizer.model", "tokenizer_config.json", "special_tokens_map.json",
	"added_tokens.json", "vocab.json", "merges.txt", "chat_template.jinja", "chat_template.json",
}

const generationFile = "generation_config.json"

// writeSideFiles writes config.json, generation_config.json and the tokenizer files into dir.
func (mg *merger) writeSideFiles(dir string) error {
	base := mg.opt.Base
	cfgPath := filepath.Join(base, "config.json")
	raw, err := os.ReadFile(cfgPath)
	if err != nil {
		return fmt.Errorf("base %s: %w", base, err)
	}
	tdt := torchDType(mg.outDT)
	var drop []string
	if mg.qi != nil {
		drop = []string{"quantization_config"} // the merged weights are dense
	}
	cfg, err := setTopLevel(raw, map[string]any{"torch_dtype": tdt}, map[string]string{"dtype": "torch_dtype"}, drop...)
	if err != nil {
		return fmt.Errorf("%s: %w", cfgPath, err)
	}
	if err := mg.writeFile(filepath.Join(dir, "config.json"), cfg); err != nil {
		return err
	}
	for _, n := range TokenizerFiles {
		b, err := os.ReadFile(filepath.Join(base, n))
		if errors.Is(err, fs.ErrNotExist) {
			continue
		}
		if err != nil {
			return fmt.Errorf("base %s: %w", base, err)
		}
		if err := mg.writeFile(filepath.Join(dir, n), b); err != nil {
			return err
		}
	}
	gen, err := mg.generationConfig(raw)
	if err != nil {
		return err
	}
	return mg.writeFile(filepath.Join(dir, generationFile), gen)
}

// generationConfig returns the merged folder's generation_config.json: the base's, with
// eos_token_id filled in when it lacks one; or a new one. The EOS id comes from the base's
// generation_config.json, else config.json's eos_token_id, else the tokenizer's EOS token
// (tokenizer_config.json's eos_token resolved to its id).
func (mg *merger) generationConfig(cfgRaw []byte) ([]byte, error) {
	base := mg.opt.Base
	path := filepath.Join(base, generationFile)
	raw, err := os.ReadFile(path)
	if err != nil && !errors.Is(err, fs.ErrNotExist) {
		return nil, fmt.Errorf("base %s: %w", base, err)
	}
	have := err == nil
	var gen map[string]json.RawMessage
	if have {
		if err := json.Unmarshal(raw, &gen); err != nil {
			return nil, fmt.Errorf("%s: not a JSON object: %v; fix or remove the file", path, err)
		}
		if e, ok := gen["eos_token_id"]; ok && string(e) != "null" {
			return raw, nil // the base's own, unchanged
		}
	}
	var cfg map[string]json.RawMessage
	_ = json.Unmarshal(cfgRaw, &cfg) // config.json parsed once already
	set := map[string]any{}
	if e, ok := cfg["eos_token_id"]; ok && string(e) != "null" {
		set["eos_token_id"] = e
	} else if tok, err := tokenizer.Open(base); err == nil && tok.EOS() >= 0 {
		set["eos_token_id"] = tok.EOS()
	} else {
		mg.note("no EOS token id in generation_config.json, config.json or the tokenizer of the base; generation_config.json has no eos_token_id")
	}
	if !have {
		if b, ok := cfg["bos_token_id"]; ok && string(b) != "null" {
			set["bos_token_id"] = b
		}
		if p, ok := cfg["pad_token_id"]; ok && string(p) != "null" {
			set["pad_token_id"] = p
		}
		set["_from_model_config"] = true
		raw = []byte("{}")
		if e, ok := set["eos_token_id"]; ok {
			mg.note(fmt.Sprintf("the base has no generation_config.json; wrote one with eos_token_id %s", jsonText(e)))
		}
	}
	return setTopLevel(raw, set, nil)
}

func jsonText(v any) string {
	b, _ := json.Marshal(v)
	return string(b)
}

// setTopLevel returns the JSON object doc with the keys of set replaced (or appended, in
// sorted order) and the keys in alsoIfPresent set to set's first value when doc has them,
// keeping every other key in its original order and its value byte for byte; indented
// by two spaces as transformers writes. Keys in drop are removed.
func setTopLevel(doc []byte, set map[string]any, alias map[string]string, drop ...string) ([]byte, error) {
	dec := json.NewDecoder(bytes.NewReader(doc))
	tok, err := dec.Token()
	if err != nil || tok != json.Delim('{') {
		return nil, fmt.Errorf("not a JSON object")
	}
	type kv struct {
		k string
		v json.RawMessage
	}
	var kvs []kv
	seen := map[string]bool{}
	for dec.More() {
		t, err := dec.Token()
		if err != nil {
			return nil, fmt.Errorf("malformed JSON: %v", err)
		}
		k, _ := t.(string)
		var v json.RawMessage
		if err := dec.Decode(&v); err != nil {
			return nil, fmt.Errorf("malformed JSON at %q: %v", k, err)
		}
		if slices.Contains(drop, k) {
			continue
		}
		kvs = append(kvs, kv{k, v})
		seen[k] = true
	}
	for i := range kvs {
		if v, ok := set[kvs[i].k]; ok {
			b, err := json.Marshal(v)
			if err != nil {
				return nil, err
			}
			kvs[i].v = b
		}
		if to, ok := alias[kvs[i].k]; ok {
			if v, ok := set[to]; ok {
				b, err := json.Marshal(v)
				if err != nil {
					return nil, err
				}
				kvs[i].v = b
			}
		}
	}
	var add []string
	for k := range set {
		if !seen[k] {
			add = append(add, k)
		}
	}
	slices.Sort(add)
	for _, k := range add {
		b, err := json.Marshal(set[k])
		if err != nil {
			return nil, err
		}
		kvs = append(kvs, kv{k, b})
	}
	var out bytes.Buffer
	out.WriteString("{")
	for i, e := range kvs {
		if i > 0 {
			out.WriteString(",")
		}
		kb, _ := json.Marshal(e.k)
		out.WriteString("\n  ")
		out.Write(kb)
		out.WriteString(": ")
		var ind bytes.Buffer
		if err := json.Indent(&ind, e.v, "  ", "  "); err != nil {
			return nil, fmt.Errorf("malformed JSON at %q: %v", e.k, err)
		}
		out.Write(ind.Bytes())
	}
	out.WriteString("\n}\n")
	return out.Bytes(), nil
}
