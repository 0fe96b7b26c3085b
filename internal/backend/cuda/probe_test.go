//go:build !cuda

package cuda

import (
	"strings"
	"testing"
)

// TestProbeWithoutCUDA: a build without the tag says so and how to get one.
func TestProbeWithoutCUDA(t *testing.T) {
	r := Probe()
	if r.Built || r.Usable() || r.Err != ErrNotBuilt.Error() {
		t.Fatalf("Probe() = %+v, want the not-built report", r)
	}
	if s := r.String(); !strings.Contains(s, "-tags cuda") {
		t.Errorf("String() = %q, want the rebuild hint", s)
	}
}
