package cli

import "fmt"

// ggufOptions are what `loractl quantize` hands to the GGUF writer for --format gguf-*.
type ggufOptions struct {
	Model     string // HF model folder
	Out       string // output .gguf file
	Format    string // gguf-f16 | gguf-q8_0 | gguf-q4_0
	Overwrite bool
}

// runQuantizeGGUF writes a single-file GGUF model. quantize.go calls it for the gguf-* formats.
func runQuantizeGGUF(s *streams, o ggufOptions) error {
	return fmt.Errorf("quantize --format %s is not implemented yet (issue #6)", o.Format)
}
