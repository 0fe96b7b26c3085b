package lora

import (
	"encoding/json"
	"math"
	"os"
	"testing"
)

// TestTorchGenMatchesPEFT: the shared VeRA projections equal, bit for bit, those that PyTorch's
// CPU generator and PEFT's _kaiming_init draw for the same projection_prng_key (reference values
// written by PyTorch into testdata/torch_vera_init.json).
func TestTorchGenMatchesPEFT(t *testing.T) {
	raw, err := os.ReadFile("testdata/torch_vera_init.json")
	if err != nil {
		t.Fatal(err)
	}
	var ref struct {
		Cases []struct {
			Seed   uint64
			R      int
			MaxIn  int      `json:"max_in"`
			MaxOut int      `json:"max_out"`
			VeraA  []uint32 `json:"vera_A"`
			VeraB  []uint32 `json:"vera_B"`
		}
	}
	if err := json.Unmarshal(raw, &ref); err != nil || len(ref.Cases) == 0 {
		t.Fatalf("testdata/torch_vera_init.json: %v", err)
	}
	for _, c := range ref.Cases {
		A, B := VeRAProjections(c.Seed, c.R, c.MaxIn, c.MaxOut)
		for name, p := range map[string][2]any{"vera_A": {A, c.VeraA}, "vera_B": {B, c.VeraB}} {
			got, want := p[0].([]float32), p[1].([]uint32)
			if len(got) != len(want) {
				t.Fatalf("seed %d %s: %d values, reference %d", c.Seed, name, len(got), len(want))
			}
			for i := range got {
				if math.Float32bits(got[i]) != want[i] {
					t.Fatalf("seed %d %s[%d] = %g, PyTorch %g", c.Seed, name, i, got[i], math.Float32frombits(want[i]))
				}
			}
		}
	}
}
