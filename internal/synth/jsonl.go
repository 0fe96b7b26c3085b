package synth

import (
	"bytes"
	"encoding/json"
	"fmt"

	"github.com/loractl/loractl/internal/atomicfile"
)

// WriteJSONL writes records as JSON Lines (one JSON object per line) at path, atomically
// (see WriteFileAtomic). Use Text records for pretraining and PromptCompletion for
// fine-tuning. HTML characters are not escaped, so "a<b" stays readable.
func WriteJSONL[T any](path string, records []T) error {
	var buf bytes.Buffer
	enc := json.NewEncoder(&buf)
	enc.SetEscapeHTML(false)
	for i, r := range records {
		if err := enc.Encode(r); err != nil { // Encode ends each record with "\n"
			return fmt.Errorf("write %s: record %d: %w", path, i+1, err)
		}
	}
	return WriteFileAtomic(path, buf.Bytes())
}

// WriteFileAtomic writes data to path atomically (see package atomicfile).
func WriteFileAtomic(path string, data []byte) error { return atomicfile.Write(path, data) }
