package cpu_test

import (
	"testing"

	"github.com/loractl/loractl/internal/backend"
	"github.com/loractl/loractl/internal/backend/backendtest"
	"github.com/loractl/loractl/internal/backend/cpu"
)

// TestConformance runs the shared backend suite (forward ops, training ops, gradient checks and
// the composite one-layer check) on the CPU backend. Run with -v to see the error table.
func TestConformance(t *testing.T) {
	backendtest.Run(t, func() backend.Backend { return cpu.New() })
}
