package chat

import (
	"os"
	"path/filepath"
	"slices"
	"strings"
	"testing"

	"github.com/loractl/loractl/internal/refdata"
	"github.com/loractl/loractl/internal/tokenizer"
)

// chatRef is one line of tokenizers/*/chat_reference.jsonl.
type chatRef struct {
	Messages            []Message      `json:"messages"`
	AddGenerationPrompt bool           `json:"add_generation_prompt"`
	Kwargs              map[string]any `json:"kwargs"`
	Text                string         `json:"text"`
	IDs                 []int          `json:"ids"`
}

// TestReference renders every reference conversation with the model's own template and
// special tokens, and checks the text and its encoding against @huggingface/jinja's (and
// Python Jinja2's) rendering.
func TestReference(t *testing.T) {
	for _, name := range []string{"llama3", "qwen3"} {
		t.Run(name, func(t *testing.T) {
			dir := refdata.Path(t, "tokenizers", name)
			tpl, err := Load(dir)
			if err != nil {
				t.Fatal(err)
			}
			tok, err := tokenizer.Open(dir)
			if err != nil {
				t.Fatal(err)
			}
			refs := refdata.ReadJSONL[chatRef](t, filepath.Join(dir, "chat_reference.jsonl"))
			for i, r := range refs {
				got, err := tpl.Render(r.Messages, r.AddGenerationPrompt, r.Kwargs)
				if err != nil {
					t.Fatalf("line %d: %v", i+1, err)
				}
				if got != r.Text {
					t.Errorf("line %d: text\n got %q\nwant %q", i+1, got, r.Text)
					continue
				}
				if ids := tok.Encode(got, false); !slices.Equal(ids, r.IDs) {
					t.Errorf("line %d: ids\n got %v\nwant %v", i+1, ids, r.IDs)
				}
			}
			if len(refs) != 8 {
				t.Errorf("%d reference lines, want 8", len(refs))
			}
		})
	}
}

// TestPythonJinja checks Jinja behaviour that the reference templates do not reach. The
// expected strings were produced by Python Jinja2 3.1.6 set up as transformers does
// (ImmutableSandboxedEnvironment(trim_blocks=True, lstrip_blocks=True), tojson =
// json.dumps(x, ensure_ascii=False, indent=indent)) with messages=[{"content": " hi ",
// "role": "user"}], bos_token="<s>", enable_thinking=False.
func TestPythonJinja(t *testing.T) {
	cases := []struct{ src, want string }{
		{"{% for m in messages %}{{ m.role }}\n{% endfor %}", "user\n"},
		{"{{ messages | tojson }}", "[{\"content\": \" hi \", \"role\": \"user\"}]"},
		{"{{ messages[0] | tojson(indent=2) }}", "{\n  \"content\": \" hi \",\n  \"role\": \"user\"\n}"},
		{"{{ bos_token }}{{ messages[0].content | trim }}{% if enable_thinking is defined and enable_thinking is false %}!{% endif %}", "<s>hi!"},
	}
	for _, c := range cases {
		got, err := Render(c.src, []Message{{Role: "user", Content: " hi "}}, false,
			map[string]any{"bos_token": "<s>", "enable_thinking": false})
		if err != nil {
			t.Errorf("%q: %v", c.src, err)
			continue
		}
		if got != c.want {
			t.Errorf("%q:\n got %q\nwant %q", c.src, got, c.want)
		}
	}
}

// TestPyJSON checks the tojson writer on values a template cannot easily build; expected
// strings from Python's json.dumps(v, ensure_ascii=False) on the same values.
func TestPyJSON(t *testing.T) {
	v := map[string]any{"a": []any{1, 2.5, nil, true, "é<'\\\n\x01"}, "b": 1e-05, "c": 1234567.0}
	want := "{\"a\": [1, 2.5, null, true, \"é<'\\\\\\n\\u0001\"], \"b\": 1e-05, \"c\": 1234567.0}"
	var b strings.Builder
	if err := writePyJSON(&b, v, -1, 0); err != nil {
		t.Fatal(err)
	}
	if b.String() != want {
		t.Errorf("got %q\nwant %q", b.String(), want)
	}
}

func TestRaiseException(t *testing.T) {
	src := "{% if messages[0].role != 'user' %}{{ raise_exception('Conversations must start with a user turn') }}{% endif %}ok"
	if _, err := Render(src, []Message{{Role: "assistant", Content: "x"}}, false, nil); err == nil ||
		!strings.Contains(err.Error(), "must start with a user turn") {
		t.Errorf("err = %v, want the template's message", err)
	}
	got, err := Render(src, []Message{{Role: "user", Content: "x"}}, false, nil)
	if err != nil || got != "ok" {
		t.Errorf("got %q, %v; want \"ok\"", got, err)
	}
}

func TestBadTemplates(t *testing.T) {
	for _, src := range []string{"{% if %}", "{% for x in %}{% endfor %}", "{{ 1 + }}", "{% endif %}", "{{ x.y.z() }}"} {
		if _, err := Render(src, nil, false, nil); err == nil {
			t.Logf("%q rendered without error", src) // not all are errors in Jinja either; must not panic
		}
	}
}

func TestLoadErrors(t *testing.T) {
	dir := t.TempDir()
	if _, err := Load(dir); err == nil || !strings.Contains(err.Error(), "tokenizer_config.json") {
		t.Errorf("missing file: err = %v", err)
	}
	path := filepath.Join(dir, "tokenizer_config.json")
	os.WriteFile(path, []byte(`{"bos_token": "<s>"}`), 0o644)
	if _, err := Load(dir); err == nil || !strings.Contains(err.Error(), "no chat_template") {
		t.Errorf("no template: err = %v", err)
	}
	os.WriteFile(path, []byte(`{"bos_token": {"content": "<s>"}, "chat_template": [{"name": "tool_use", "template": "x"}, {"name": "default", "template": "{{ bos_token }}{{ messages[0].content }}"}]}`), 0o644)
	tpl, err := Load(dir)
	if err != nil {
		t.Fatal(err)
	}
	if got, err := tpl.Render([]Message{{"user", "hi"}}, false, nil); err != nil || got != "<s>hi" {
		t.Errorf("got %q, %v; want \"<s>hi\"", got, err)
	}
}
