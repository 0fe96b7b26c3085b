package kernels

import (
	"bytes"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"testing"
)

// TestEntries: each module's committed PTX defines exactly the kernels it lists.
func TestEntries(t *testing.T) {
	for _, m := range Modules {
		var got []string
		for _, line := range strings.Split(m.PTX, "\n") {
			if rest, ok := strings.CutPrefix(strings.TrimSpace(line), ".visible .entry "); ok {
				got = append(got, strings.TrimSuffix(rest, "("))
			}
		}
		want := map[string]bool{}
		for _, e := range m.Entries {
			want[e] = true
		}
		for _, g := range got {
			if !want[g] {
				t.Errorf("%s.ptx defines %q, which Modules does not list", m.Name, g)
			}
			delete(want, g)
		}
		for e := range want {
			t.Errorf("%s.ptx lacks kernel %q (run go generate ./kernels)", m.Name, e)
		}
		if !strings.Contains(m.PTX, ".target sm_80") {
			t.Errorf("%s.ptx is not compiled for compute_80", m.Name)
		}
	}
}

// TestPTXAssembles: ptxas accepts the committed PTX for Ampere and Hopper (skipped without the
// CUDA toolkit).
func TestPTXAssembles(t *testing.T) {
	ptxas, err := exec.LookPath("ptxas")
	if err != nil {
		t.Skip("ptxas not found (install the CUDA toolkit: ../shared/tools/install-nvcc.sh)")
	}
	for _, m := range Modules {
		for _, sm := range []string{"sm_80", "sm_90"} {
			out, err := exec.Command(ptxas, "-arch="+sm, "-o", filepath.Join(t.TempDir(), "k.cubin"), m.Name+".ptx").CombinedOutput()
			if err != nil {
				t.Errorf("ptxas -arch=%s %s.ptx: %v\n%s", sm, m.Name, err, out)
			}
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
	for _, m := range Modules {
		if rel == "" || !strings.Contains(m.PTX, "compilation tools, "+rel+",") {
			t.Skipf("local nvcc (%s) is not the release that made %s.ptx", strings.TrimSpace(rel), m.Name)
		}
		out := filepath.Join(t.TempDir(), m.Name+".ptx")
		if b, err := exec.Command(nvcc, "-ptx", "-arch=compute_80", "-O3", "-o", out, m.Name+".cu").CombinedOutput(); err != nil {
			t.Fatalf("nvcc %s.cu: %v\n%s", m.Name, err, b)
		}
		fresh, err := os.ReadFile(out)
		if err != nil {
			t.Fatal(err)
		}
		if !bytes.Equal(fresh, []byte(m.PTX)) {
			t.Errorf("%s.ptx is stale: run go generate ./kernels and commit the result", m.Name)
		}
	}
}
