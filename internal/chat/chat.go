// Package chat renders a model's chat template (the Jinja `chat_template` of
// tokenizer_config.json) the way transformers' apply_chat_template does: Jinja with
// trim_blocks and lstrip_blocks, the special-token strings (bos_token, eos_token, ...) as
// variables, `raise_exception`, a `tojson` filter that writes like Python's json.dumps, and
// the caller's extra variables (e.g. enable_thinking).
//
// The Jinja engine is github.com/nikolalohinski/gonja/v2. It renders every reference
// conversation of the llama3 and qwen3 tokenizers exactly (see chat_test.go). Known
// differences from Python Jinja2 that no reference template hits: `{{ none }}` prints ""
// (Python prints "None"), and `tojson` writes map keys sorted (Python keeps insertion order).
package chat

import (
	"encoding/json"
	"errors"
	"fmt"
	"os"
	"path/filepath"
	"strings"
	"time"

	"github.com/nikolalohinski/gonja/v2"
	"github.com/nikolalohinski/gonja/v2/config"
	"github.com/nikolalohinski/gonja/v2/exec"
	"github.com/nikolalohinski/gonja/v2/loaders"
)

// Message is one turn of a conversation: Role is "system", "user", "assistant" or "tool".
type Message struct {
	Role    string `json:"role"`
	Content string `json:"content"`
}

// Template is a compiled chat template. Compile once, render many times.
type Template struct {
	tpl *exec.Template
	// Vars are variables passed on every render (the special-token strings of a model);
	// the vars of a Render call override them.
	Vars map[string]any
}

// Compile parses a Jinja chat template.
func Compile(source string) (t *Template, err error) {
	defer func() {
		if r := recover(); r != nil {
			t, err = nil, fmt.Errorf("chat template: the Jinja engine failed on this template: %v", r)
		}
	}()
	cfg := config.New()
	cfg.TrimBlocks = true      // transformers: trim_blocks=True
	cfg.LeftStripBlocks = true // transformers: lstrip_blocks=True
	root, err := loaders.NewFileSystemLoader("")
	if err != nil {
		return nil, fmt.Errorf("chat template: %v", err)
	}
	const name = "chat_template"
	loader, err := loaders.NewShiftedLoader(name, strings.NewReader(source), root)
	if err != nil {
		return nil, fmt.Errorf("chat template: %v", err)
	}
	tpl, err := exec.NewTemplate(name, cfg, loader, environment())
	if err != nil {
		return nil, fmt.Errorf("chat template does not parse as Jinja: %v", err)
	}
	return &Template{tpl: tpl}, nil
}

// Render renders msgs with the template. addGenerationPrompt asks the template to end with
// the header of an assistant turn; vars holds extra template variables (e.g.
// "enable_thinking": false, "bos_token": "<s>"). A template that calls raise_exception
// returns its message as the error.
func (t *Template) Render(msgs []Message, addGenerationPrompt bool, vars map[string]any) (out string, err error) {
	defer func() {
		if r := recover(); r != nil {
			out, err = "", fmt.Errorf("chat template: the Jinja engine failed while rendering: %v", r)
		}
	}()
	data := map[string]any{}
	for k, v := range t.Vars {
		data[k] = v
	}
	for k, v := range vars {
		data[k] = v
	}
	list := make([]any, len(msgs))
	for i, m := range msgs {
		list[i] = map[string]any{"role": m.Role, "content": m.Content}
	}
	data["messages"] = list
	data["add_generation_prompt"] = addGenerationPrompt
	var raised error
	data["raise_exception"] = func(msg string) (string, error) {
		raised = errors.New(msg)
		return "", raised
	}
	data["strftime_now"] = func(format string) string { return strftime(time.Now(), format) }
	out, err = t.tpl.ExecuteToString(exec.NewContext(data))
	if raised != nil {
		return "", fmt.Errorf("chat template rejected the conversation: %v", raised)
	}
	if err != nil {
		return "", fmt.Errorf("chat template: %v", err)
	}
	return out, nil
}

// Render compiles template and renders msgs with it; see Template.Render.
func Render(template string, msgs []Message, addGenerationPrompt bool, vars map[string]any) (string, error) {
	t, err := Compile(template)
	if err != nil {
		return "", err
	}
	return t.Render(msgs, addGenerationPrompt, vars)
}

// specialTokenNames are the tokenizer_config.json fields that transformers passes to the
// template as strings.
var specialTokenNames = []string{"bos_token", "eos_token", "unk_token", "sep_token", "pad_token", "cls_token", "mask_token"}

// Load reads the chat template of a model folder and its special-token strings from
// tokenizer_config.json. A `chat_template.jinja` file next to it (newer transformers) takes
// precedence; a template list ([{"name","template"}]) gives its "default" entry.
func Load(dir string) (*Template, error) {
	path := filepath.Join(dir, "tokenizer_config.json")
	data, err := os.ReadFile(path)
	if err != nil {
		return nil, fmt.Errorf("chat template: %v (a chat model folder needs tokenizer_config.json)", err)
	}
	var cfg map[string]json.RawMessage
	if err := json.Unmarshal(data, &cfg); err != nil {
		return nil, fmt.Errorf("%s: not valid JSON: %v", path, err)
	}
	vars := map[string]any{}
	for _, name := range specialTokenNames {
		if s, ok := tokenString(cfg[name]); ok {
			vars[name] = s
		}
	}
	var extra []string
	if raw, ok := cfg["additional_special_tokens"]; ok {
		var list []json.RawMessage
		if json.Unmarshal(raw, &list) == nil {
			for _, r := range list {
				if s, ok := tokenString(r); ok {
					extra = append(extra, s)
				}
			}
		}
	}
	vars["additional_special_tokens"] = extra

	source := ""
	jinjaPath := filepath.Join(dir, "chat_template.jinja")
	if b, err := os.ReadFile(jinjaPath); err == nil {
		source = string(b)
	} else if raw, ok := cfg["chat_template"]; ok {
		if source, err = templateSource(raw); err != nil {
			return nil, fmt.Errorf("%s: chat_template: %v", path, err)
		}
	}
	if source == "" {
		return nil, fmt.Errorf("%s has no chat_template (nor is there a chat_template.jinja): use a chat model, or data in the {\"text\"} or {\"prompt\",\"completion\"} shape", path)
	}
	t, err := Compile(source)
	if err != nil {
		return nil, fmt.Errorf("%s: %v", path, err)
	}
	t.Vars = vars
	return t, nil
}

// tokenString reads a special token given as a string or as {"content": ...}.
func tokenString(raw json.RawMessage) (string, bool) {
	if len(raw) == 0 {
		return "", false
	}
	var s string
	if json.Unmarshal(raw, &s) == nil {
		return s, true
	}
	var obj struct {
		Content *string `json:"content"`
	}
	if json.Unmarshal(raw, &obj) == nil && obj.Content != nil {
		return *obj.Content, true
	}
	return "", false
}

// templateSource reads chat_template as a string or as a list of named templates.
func templateSource(raw json.RawMessage) (string, error) {
	var s string
	if json.Unmarshal(raw, &s) == nil {
		return s, nil
	}
	var list []struct {
		Name     string `json:"name"`
		Template string `json:"template"`
	}
	if err := json.Unmarshal(raw, &list); err != nil {
		return "", fmt.Errorf("neither a string nor a list of {name, template}")
	}
	var names []string
	for _, e := range list {
		if e.Name == "default" {
			return e.Template, nil
		}
		names = append(names, e.Name)
	}
	return "", fmt.Errorf("no template named \"default\" among %v", names)
}

// environment is gonja's default environment with transformers' tojson.
func environment() *exec.Environment {
	env := *gonja.DefaultEnvironment
	filters := exec.NewFilterSet(map[string]exec.FilterFunction{})
	filters.Update(gonja.DefaultEnvironment.Filters)
	_ = filters.Replace("tojson", filterToJSON)
	env.Filters = filters
	return &env
}

// filterToJSON is transformers' tojson: json.dumps(x, ensure_ascii=False, indent=indent,
// separators=separators, sort_keys=sort_keys), i.e. ", " and ": " separators, no HTML
// escaping. Map keys are always sorted (Go maps have no order).
func filterToJSON(e *exec.Evaluator, in *exec.Value, params *exec.VarArgs) *exec.Value {
	if in.IsError() {
		return in
	}
	indent := -1
	if v := params.GetKeywordArgument("indent", nil); !v.IsNil() {
		if !v.IsInteger() {
			return exec.AsValue(fmt.Errorf("tojson: indent must be an integer, got %s", v.String()))
		}
		indent = v.Integer()
	}
	var b strings.Builder
	if err := writePyJSON(&b, in.ToGoSimpleType(false), indent, 0); err != nil {
		return exec.AsValue(err)
	}
	return exec.AsSafeValue(b.String())
}
