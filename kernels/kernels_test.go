package kernels

import (
	"bytes"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"testing"
)

// TestEntries: the committed PTX defines every kernel of Entries, and no other.
func TestEntries(t *testing.T) {
	var got []string
	for _, line := range strings.Split(ElementwisePTX, "\n") {
		if rest, ok := strings.CutPrefix(strings.TrimSpace(line), ".visible .entry "); ok {
			got = append(got, strings.TrimSuffix(rest, "("))
		}
	}
	want := map[string]bool{}
	for _, e := range Entries {
		want[e] = true
	}
	for _, g := range got {
		if !want[g] {
			t.Errorf("elementwise.ptx defines %q, which Entries does not list", g)
		}
		delete(want, g)
	}
	for e := range want {
		t.Errorf("elementwise.ptx lacks kernel %q (run go generate ./kernels)", e)
	}
	if !strings.Contains(ElementwisePTX, ".target sm_80") {
		t.Error("elementwise.ptx is not compiled for compute_80")
	}
}

// TestPTXAssembles: ptxas accepts the committed PTX for Ampere and Hopper (skipped without the
// CUDA toolkit).
func TestPTXAssembles(t *testing.T) {
	ptxas, err := exec.LookPath("ptxas")
	if err != nil {
		t.Skip("ptxas not found (install the CUDA toolkit: ../shared/tools/install-nvcc.sh)")
	}
	for _, sm := range []string{"sm_80", "sm_90"} {
		out, err := exec.Command(ptxas, "-arch="+sm, "-o", filepath.Join(t.TempDir(), "k.cubin"), "elementwise.ptx").CombinedOutput()
		if err != nil {
			t.Errorf("ptxas -arch=%s: %v\n%s", sm, err, out)
		}
	}
}

// TestPTXUpToDate: the committed PTX is what nvcc makes of the .cu file now (skipped without
// nvcc).
func TestPTXUpToDate(t *testing.T) {
	nvcc, err := exec.LookPath("nvcc")
	if err != nil {
		t.Skip("nvcc not found (install the CUDA toolkit: ../shared/tools/install-nvcc.sh)")
	}
	// nvcc writes its release into the PTX header; another release makes other (valid) PTX.
	ver, _ := exec.Command(nvcc, "--version").Output()
	rel := ""
	if i := bytes.Index(ver, []byte("release ")); i >= 0 {
		rel, _, _ = strings.Cut(string(ver[i:]), ",")
	}
	if rel == "" || !strings.Contains(ElementwisePTX, "compilation tools, "+rel+",") {
		t.Skipf("local nvcc (%s) is not the release that made elementwise.ptx", strings.TrimSpace(rel))
	}
	out := filepath.Join(t.TempDir(), "elementwise.ptx")
	if b, err := exec.Command(nvcc, "-ptx", "-arch=compute_80", "-O3", "-o", out, "elementwise.cu").CombinedOutput(); err != nil {
		t.Fatalf("nvcc: %v\n%s", err, b)
	}
	fresh, err := os.ReadFile(out)
	if err != nil {
		t.Fatal(err)
	}
	if !bytes.Equal(fresh, []byte(ElementwisePTX)) {
		t.Error("elementwise.ptx is stale: run go generate ./kernels and commit the result")
	}
}
