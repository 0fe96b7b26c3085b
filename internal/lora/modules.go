// Package lora holds low-rank adapters: which Linear modules of a model they attach to, their
// A and B matrices, initialisation, scaling, and reading and writing them in the exact PEFT
// format (adapter_model.safetensors + adapter_config.json) so that PEFT, transformers and
// llama.cpp load them.
//
// An adapted Linear computes y = W0·x + s·B·(A·x) with W0 (out, in) frozen, A (r, in),
// B (out, r) and s = alpha/r (alpha/√r with rsLoRA).
package lora

import (
	"fmt"
	"regexp"
	"slices"
	"sort"
	"strings"

	"github.com/loractl/loractl/internal/model"
)

// Module is one Linear layer of a decoder block that an adapter can attach to.
type Module struct {
	Path  string // HF module path, e.g. "model.layers.3.self_attn.q_proj"
	Layer int    // decoder block index
	Name  string // short name, e.g. "q_proj"
	In    int    // input features
	Out   int    // output features
}

// Weight returns the checkpoint name of the module's frozen weight.
func (m Module) Weight() string { return m.Path + ".weight" }

// LinearNames are the short names of a Llama-family block's Linear layers, in block order.
var LinearNames = []string{"q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj"}

// Modules lists every adaptable Linear of a model (lm_head excluded, as PEFT's all-linear does).
func Modules(c *model.Config) []Module {
	C, F := c.HiddenSize, c.IntermediateSize
	Q, KV := c.QDim(), c.KVDim()
	dims := map[string][2]int{ // name → (in, out)
		"q_proj": {C, Q}, "k_proj": {C, KV}, "v_proj": {C, KV}, "o_proj": {Q, C},
		"gate_proj": {C, F}, "up_proj": {C, F}, "down_proj": {F, C},
	}
	var mods []Module
	for l := 0; l < c.NumHiddenLayers; l++ {
		for _, n := range LinearNames {
			part := "self_attn"
			if n == "gate_proj" || n == "up_proj" || n == "down_proj" {
				part = "mlp"
			}
			d := dims[n]
			mods = append(mods, Module{
				Path: fmt.Sprintf("model.layers.%d.%s.%s", l, part, n), Layer: l, Name: n, In: d[0], Out: d[1],
			})
		}
	}
	return mods
}

// Select picks the modules named by targets: short names ("q_proj"), "all-linear", or
// "re:<regex>" matched against the whole module path (PEFT's string form of target_modules).
// layers, when not empty, keeps only those block indices (PEFT's layers_to_transform).
// A target that matches nothing is an error listing the available names.
func Select(mods []Module, targets []string, layers []int) ([]Module, error) {
	maxLayer := -1
	for _, m := range mods {
		maxLayer = max(maxLayer, m.Layer)
	}
	for _, l := range layers {
		if l < 0 || l > maxLayer {
			return nil, fmt.Errorf("lora.layers: layer %d does not exist; the model has layers 0..%d", l, maxLayer)
		}
	}
	chosen := map[string]bool{}
	for _, t := range targets {
		var match func(Module) bool
		switch {
		case t == "all-linear":
			match = func(Module) bool { return true }
		case strings.HasPrefix(t, "re:"):
			re, err := regexp.Compile("^(?:" + strings.TrimPrefix(t, "re:") + ")$")
			if err != nil {
				return nil, fmt.Errorf("lora.targets: %q is not a valid regular expression: %v", t, err)
			}
			match = func(m Module) bool { return re.MatchString(m.Path) }
		default:
			match = func(m Module) bool { return m.Name == t }
		}
		n := 0
		for _, m := range mods {
			if match(m) {
				chosen[m.Path] = true
				n++
			}
		}
		if n == 0 {
			return nil, fmt.Errorf("lora.targets: %q matches no module; available names: %s, all-linear, or re:<regex> over paths like %s",
				t, strings.Join(LinearNames, ", "), mods[0].Path)
		}
	}
	var out []Module
	for _, m := range mods {
		if chosen[m.Path] && (len(layers) == 0 || slices.Contains(layers, m.Layer)) {
			out = append(out, m)
		}
	}
	if len(out) == 0 {
		return nil, fmt.Errorf("lora.targets %v with lora.layers %v select no module", targets, layers)
	}
	return out, nil
}

// peftTargets returns PEFT's target_modules and layers_to_transform for an adapter over mods:
// the short names (with layers) when mods are every such module of the layers they cover (all
// numLayers layers, or those of layers_to_transform), or else one regular expression that PEFT
// full-matches against module paths, naming each module (PEFT forbids layers_to_transform with
// a string target_modules, so it is nil then).
func peftTargets(mods []Module, layers []int, numLayers int) (any, []int) {
	names := shortNames(mods)
	seen := map[string]bool{}
	lay := map[int]bool{}
	maxL := -1
	for _, m := range mods {
		seen[m.Path] = true
		lay[m.Layer] = true
		maxL = max(maxL, m.Layer)
	}
	full := len(seen) == len(lay)*len(names)
	if full && len(layers) > 0 {
		full = len(layers) == len(lay)
		for _, l := range layers {
			full = full && lay[l]
		}
	} else if full && numLayers > 0 {
		full = len(lay) == numLayers
	} else if full {
		full = len(lay) == maxL+1 // every layer from 0 up, as far as is known
	}
	if full {
		return names, layers
	}
	paths := make([]string, 0, len(seen))
	for p := range seen {
		paths = append(paths, regexp.QuoteMeta(p))
	}
	sort.Strings(paths)
	return "(?:" + strings.Join(paths, "|") + ")", nil
}

// shortNames returns the sorted distinct short names of mods (PEFT's target_modules list).
func shortNames(mods []Module) []string {
	seen := map[string]bool{}
	for _, m := range mods {
		seen[m.Name] = true
	}
	names := make([]string, 0, len(seen))
	for n := range seen {
		names = append(names, n)
	}
	sort.Strings(names)
	return names
}
