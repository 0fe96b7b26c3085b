//go:build !unix

package safetensors

import (
	"io"
	"os"
)

// mapFile reads the whole file: platforms without mmap get a plain, eager copy.
func mapFile(f *os.File, size int) ([]byte, error) {
	b := make([]byte, size)
	if _, err := io.ReadFull(f, b); err != nil {
		return nil, err
	}
	return b, nil
}

// unmapFile is a no-op for the copy made by mapFile.
func unmapFile(b []byte) error { return nil }
