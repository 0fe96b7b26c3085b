// Package refdata locates the shared reference data for tests: a real tiny Llama
// (stories260K) with llama2.c's outputs, tokenizers with reference encodings, and corpora.
// The folder is found only through $LORACTL_TESTDATA; when it is unset, tests that need it
// skip with a message that says how to set it.
package refdata

import (
	"bufio"
	"encoding/json"
	"os"
	"path/filepath"
	"testing"
)

// Env names the environment variable that holds the absolute path of the reference folder.
const Env = "LORACTL_TESTDATA"

// Dir returns the reference folder, or skips the test when Env is unset.
func Dir(tb testing.TB) string {
	tb.Helper()
	dir := os.Getenv(Env)
	if dir == "" {
		tb.Skip(Env + " not set: point it at the shared reference folder (e.g. export " + Env + "=$(realpath ../shared))")
	}
	return dir
}

// Path joins elem onto the reference folder (skipping the test when it is unset).
func Path(tb testing.TB, elem ...string) string {
	tb.Helper()
	return filepath.Join(append([]string{Dir(tb)}, elem...)...)
}

// Stories260K returns the folder of the stories260K model.
func Stories260K(tb testing.TB) string {
	tb.Helper()
	return Path(tb, "models", "stories260K")
}

// ReadJSONL decodes every non-empty line of path into a T, failing the test on any error or
// when the file has no lines.
func ReadJSONL[T any](tb testing.TB, path string) []T {
	tb.Helper()
	f, err := os.Open(path)
	if err != nil {
		tb.Fatalf("reference file: %v", err)
	}
	defer f.Close()
	var out []T
	sc := bufio.NewScanner(f)
	sc.Buffer(make([]byte, 1<<20), 1<<28)
	for n := 1; sc.Scan(); n++ {
		if len(sc.Bytes()) == 0 {
			continue
		}
		var v T
		if err := json.Unmarshal(sc.Bytes(), &v); err != nil {
			tb.Fatalf("%s line %d: %v", path, n, err)
		}
		out = append(out, v)
	}
	if err := sc.Err(); err != nil {
		tb.Fatalf("%s: %v", path, err)
	}
	if len(out) == 0 {
		tb.Fatalf("%s: no lines; the reference file is empty", path)
	}
	return out
}
