package emu

import (
	"math"
	"math/rand/v2"
	"path/filepath"
	"strings"
	"testing"
)

// TestEmulatorCatches: each kernel of testdata/faults.cu has a bug of a class the emulator
// exists to catch; each must be reported (and the correct twin must pass).
func TestEmulatorCatches(t *testing.T) {
	here, err := filepath.Abs(".")
	if err != nil {
		t.Fatal(err)
	}
	names := []string{"fault_exit_before_barrier", "fault_split_barrier", "fault_shuffle_exited_lane",
		"fault_shuffle_partial_warp", "fault_shuffle_diverged", "fault_shuffle_inactive_source",
		"fault_out_of_bounds", "fault_write_input", "fault_unwritten", "fault_race", "fault_stale_shared", "fault_none"}
	bin := emulatorOf(t, "faults", []string{filepath.Join(here, "testdata", "faults.cu")}, names)
	r := rand.New(rand.NewPCG(30, 30))
	x := randv(r, 256, 1)
	for i := range x {
		x[i] += 2 // never 0
	}
	for _, c := range []struct {
		kernel      string
		grid, block int
		args        []arg
		want        string // in the error; "" when the launch must succeed
	}{
		{"fault_exit_before_barrier", 1, 64, []arg{out(64)}, "barrier divergence"},
		{"fault_split_barrier", 1, 64, []arg{out(64)}, "different __syncthreads"},
		{"fault_shuffle_exited_lane", 1, 32, []arg{out(32)}, "has exited"},
		{"fault_shuffle_partial_warp", 1, 48, []arg{out(48)}, "beyond the 16 threads"},
		{"fault_shuffle_diverged", 1, 32, []arg{out(32)}, "different warp operations"},
		{"fault_shuffle_inactive_source", 1, 32, []arg{out(32)}, "not in the mask"},
		{"fault_out_of_bounds", 2, 64, []arg{out(100), i32(100)}, "past the end of argument 0"},
		{"fault_write_input", 1, 64, []arg{out(64), in(x[:64]), i32(64)}, "read-only input"},
		{"fault_out_of_bounds", 2, 64, []arg{out(100), i64(100)}, "takes an int"},
		{"fault_race", 1, 256, []arg{out(256), in(x)}, "differs between the forward and the reverse schedule"},
		{"fault_none", 1, 256, []arg{out(256), in(x)}, ""},
	} {
		_, err := runLaunch(t, bin, c.kernel, c.grid, c.block, c.args...)
		switch {
		case c.want == "" && err != nil:
			t.Errorf("%s: %v", c.kernel, err)
		case c.want != "" && err == nil:
			t.Errorf("%s: the emulator did not catch it (want %q)", c.kernel, c.want)
		case c.want != "" && !strings.Contains(err.Error(), c.want):
			t.Errorf("%s: error %q, want it to say %q", c.kernel, err, c.want)
		default:
			t.Logf("%s: %v", c.kernel, strings.TrimSpace(strings.ReplaceAll(errString(err), "\n", " ")))
		}
	}
	// Poisoned outputs and shared memory: the bug shows as NaN in the output.
	res, err := runLaunch(t, bin, "fault_unwritten", 1, 64, out(64), i32(64))
	if err != nil {
		t.Fatal(err)
	}
	if o := res.f32(0); !math.IsNaN(float64(o[63])) || o[0] != 1 {
		t.Errorf("fault_unwritten: out[63] = %g, want the NaN poison (out[0] = %g)", o[63], o[0])
	}
	res, err = runLaunch(t, bin, "fault_stale_shared", 2, 32, out(2))
	if err != nil {
		t.Fatal(err)
	}
	if o := res.f32(0); o[0] != 2 || !math.IsNaN(float64(o[1])) {
		t.Errorf("fault_stale_shared: out = %v, want [2 NaN] (block 1 must see fresh, poisoned shared memory)", o)
	}
}

func errString(err error) string {
	if err == nil {
		return "ok"
	}
	return err.Error()
}
