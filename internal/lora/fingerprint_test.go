package lora

import (
	"math/rand/v2"
	"path/filepath"
	"strings"
	"testing"

	"github.com/loractl/loractl/internal/safetensors"
)

// TestFingerprintSavedAndChecked: Save records the base fingerprint in the safetensors
// metadata next to {"format":"pt"}, Load reads it back, CheckFingerprint accepts the same
// architecture and rejects another; an adapter without one passes.
func TestFingerprintSavedAndChecked(t *testing.T) {
	c := storiesConfig(t)
	fp := Fingerprint(c)
	if !strings.HasPrefix(fp, "arch1:") || len(fp) != len("arch1:")+64 {
		t.Fatalf("fingerprint %q", fp)
	}
	mods, _ := Select(Modules(c), []string{"q_proj"}, nil)
	a, err := New(Config{R: 2, Alpha: 4, Base: "stories260K", Fingerprint: fp}, mods, InitDefault, rand.New(rand.NewPCG(1, 2)))
	if err != nil {
		t.Fatal(err)
	}
	dir := filepath.Join(t.TempDir(), "a")
	if err := a.Save(dir); err != nil {
		t.Fatal(err)
	}
	f, err := safetensors.Open(filepath.Join(dir, WeightsFile))
	if err != nil {
		t.Fatal(err)
	}
	md := f.Metadata()
	f.Close()
	if md["format"] != "pt" || md[FingerprintKey] != fp {
		t.Fatalf("metadata %v", md)
	}
	b, err := Load(dir)
	if err != nil {
		t.Fatal(err)
	}
	if b.Config.Fingerprint != fp || b.Config.Base != "stories260K" {
		t.Fatalf("loaded config %+v", b.Config)
	}
	if err := b.CheckFingerprint(c, dir); err != nil {
		t.Fatal(err)
	}
	// Another architecture: same module shapes, untied embeddings.
	other := *c
	other.TieWordEmbeddings = !c.TieWordEmbeddings
	if Fingerprint(&other) == fp {
		t.Fatal("tie_word_embeddings does not change the fingerprint")
	}
	if err := b.CheckFingerprint(&other, dir); err == nil || !strings.Contains(err.Error(), dir) || !strings.Contains(err.Error(), "different base model") {
		t.Fatalf("mismatch error %v", err)
	}
	b.Config.Fingerprint = ""
	if err := b.CheckFingerprint(&other, dir); err != nil {
		t.Fatalf("an adapter without a fingerprint is refused: %v", err)
	}
}
