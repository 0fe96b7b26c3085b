package config

import (
	"reflect"
	"strings"
	"testing"

	"github.com/spf13/pflag"
	"go.yaml.in/yaml/v3"
)

func trainFlags() *pflag.FlagSet {
	fs := pflag.NewFlagSet("train", pflag.ContinueOnError)
	fs.String("out", "", "")
	fs.Int("max-steps", 0, "")
	fs.Int("save-every", 0, "")
	fs.Bool("overwrite", false, "")
	return fs
}

const baseYAML = `
model:
  path: ${LORACTL_TEST_MODEL}
data:
  train: train.jsonl
  seq_len: 128
lora:
  r: 4
  targets: [q_proj, k_proj, v_proj]
train:
  lr: 1e-3
  max_steps: 50
output:
  dir: out/a
`

func TestResolveTrainLayers(t *testing.T) {
	t.Setenv("LORACTL_TEST_MODEL", "/models/tiny")
	t.Setenv("LORACTL_TRAIN_BATCH_SIZE", "8")
	t.Setenv("LORACTL_LORA_TARGETS", "[o_proj]")
	file := writeFile(t, baseYAML)
	fs := trainFlags()
	if err := fs.Parse([]string{"--max-steps", "7", "--out", "out/b"}); err != nil {
		t.Fatal(err)
	}
	c, err := ResolveTrain(file, []string{"lora.r=16", "train.lr=2e-4", "data.packing=false"}, fs)
	if err != nil {
		t.Fatal(err)
	}
	want := DefaultTrain()
	want.Model.Path = "/models/tiny"       // file, ${VAR} expanded
	want.Data.Train = "train.jsonl"        // file
	want.Data.SeqLen = 128                 // file
	want.Data.Packing = false              // --set over default
	want.LoRA.R = 16                       // --set over file
	want.LoRA.Targets = []string{"o_proj"} // env over file
	want.Train.LR = 2e-4                   // --set over file
	want.Train.MaxSteps = 7                // flag shortcut over file
	want.Train.BatchSize = 8               // env over default
	want.Output.Dir = "out/b"              // flag shortcut over file
	if !reflect.DeepEqual(*c, want) {
		t.Fatalf("resolved\n%+v\nwant\n%+v", *c, want)
	}
}

func TestResolveTrainSetBeatsFlagAndEnv(t *testing.T) {
	t.Setenv("LORACTL_TRAIN_MAX_STEPS", "3")
	fs := trainFlags()
	fs.Parse([]string{"--max-steps", "5"})
	c, err := ResolveTrain("", []string{"train.max_steps=9", "model.path=m", "data.train=d.jsonl"}, fs)
	if err != nil {
		t.Fatal(err)
	}
	if c.Train.MaxSteps != 9 {
		t.Fatalf("max_steps %d, want 9 from --set", c.Train.MaxSteps)
	}
	c, _ = ResolveTrain("", []string{"model.path=m", "data.train=d.jsonl"}, fs)
	if c.Train.MaxSteps != 5 {
		t.Fatalf("max_steps %d, want 5 from the flag over the environment", c.Train.MaxSteps)
	}
}

func TestResolveTrainUnknownKeysHint(t *testing.T) {
	cases := []struct {
		yaml, set, want string
	}{
		{"lora:\n  rank: 8\n", "", `unknown key "lora.rank"`},
		{"train:\n  learning_rate: 1\n", "", `"train.learning_rate"`},
		{"lora:\n  alpah: 8\n", "", `did you mean "lora.alpha"`},
		{"", "train.lr_rate=1", `unknown key "train.lr_rate" (did you mean "train.lr"?)`},
		{"", "lr=1", `did you mean "train.lr"`},
		{"optimizer: adam\n", "", `unknown key "optimizer"`},
	}
	for _, c := range cases {
		file := ""
		if c.yaml != "" {
			file = writeFile(t, c.yaml)
		}
		var sets []string
		if c.set != "" {
			sets = []string{c.set}
		}
		_, err := ResolveTrain(file, sets, nil)
		if err == nil || !strings.Contains(err.Error(), c.want) {
			t.Errorf("yaml %q set %q: got %v, want %q", c.yaml, c.set, err, c.want)
		}
		if err != nil && file != "" && !strings.Contains(err.Error(), file) {
			t.Errorf("error does not name the file: %v", err)
		}
	}
}

func TestValidateTrain(t *testing.T) {
	base := []string{"model.path=m", "data.train=d.jsonl"}
	for _, c := range []struct{ set, want string }{
		{"lora.r=0", "lora.r must be at least 1"},
		{"lora.alpha=0", "lora.alpha must be positive"},
		{"train.lr=-1", "train.lr must be positive"},
		{"train.schedule=exp", `train.schedule is "exp"; valid values: constant, linear, cosine`},
		{"data.seq_len=1", "data.seq_len"},
		{"lora.dropout=1.5", "lora.dropout"},
		{"model.path=", "model.path is empty"},
		{"train.device=gpu", `train.device is "gpu"; valid values: auto, cpu, cuda, cuda:N`},
		{"train.device=cuda:x", `train.device is "cuda:x"`},
		{"model.dtype=f16", `model.dtype is "f16"`},
	} {
		_, err := ResolveTrain("", append(append([]string{}, base...), c.set), nil)
		if err == nil || !strings.Contains(err.Error(), c.want) {
			t.Errorf("--set %s: got %v, want %q", c.set, err, c.want)
		}
	}
	if _, err := ResolveTrain("", append(base, "lora.r"), nil); err == nil || !strings.Contains(err.Error(), "key=value") {
		t.Errorf("malformed --set: %v", err)
	}
	for _, d := range []string{"auto", "cpu", "cuda", "cuda:3"} {
		if _, err := ResolveTrain("", append(append([]string{}, base...), "train.device="+d), nil); err != nil {
			t.Errorf("train.device=%s: %v", d, err)
		}
	}
	if _, err := ResolveTrain("", append(base, "train.max_steps=many"), nil); err == nil {
		t.Errorf("--set train.max_steps=many was accepted")
	}
}

func TestTrainYAMLRoundTrip(t *testing.T) {
	t.Setenv("LORACTL_TEST_MODEL", "/models/tiny")
	c, err := ResolveTrain(writeFile(t, baseYAML), nil, nil)
	if err != nil {
		t.Fatal(err)
	}
	b, err := c.YAML()
	if err != nil {
		t.Fatal(err)
	}
	// The dump is itself a valid config file that resolves to the same values.
	again, err := ResolveTrain(writeFile(t, string(b)), nil, nil)
	if err != nil {
		t.Fatalf("re-reading the dump: %v\n%s", err, b)
	}
	if !reflect.DeepEqual(c, again) {
		t.Fatalf("dump does not round-trip:\n%s", b)
	}
	var tree map[string]any
	if err := yaml.Unmarshal(b, &tree); err != nil || tree["lora"] == nil {
		t.Fatalf("dump is not sectioned YAML: %v\n%s", err, b)
	}
}

func TestEditDistance(t *testing.T) {
	for _, c := range []struct {
		a, b string
		d    int
	}{{"", "", 0}, {"abc", "", 3}, {"kitten", "sitting", 3}, {"alpah", "alpha", 2}, {"lr", "lr", 0}} {
		if got := editDistance(c.a, c.b); got != c.d {
			t.Errorf("editDistance(%q, %q) = %d, want %d", c.a, c.b, got, c.d)
		}
	}
}

func TestUnsetVariableInFile(t *testing.T) {
	file := writeFile(t, "model:\n  path: ${LORACTL_SURELY_UNSET_VAR}/m\ndata:\n  train: d.jsonl\n")
	_, err := ResolveTrain(file, nil, nil)
	if err == nil || !strings.Contains(err.Error(), "LORACTL_SURELY_UNSET_VAR") || !strings.Contains(err.Error(), "model.path") {
		t.Fatalf("unset variable: %v", err)
	}
}
