package merge

import (
	"encoding/json"
	"fmt"
	"os"
	"path/filepath"
	"runtime"
	"runtime/debug"
	"strings"
	"testing"

	"github.com/loractl/loractl/internal/synth"
)

// TestStreamingMemory: merging a synthetic model several times larger than its largest tensor
// keeps the merge's own buffers near a few rows (linear) or one tensor per adapter (ties), and
// the heap growth well under the model size.
func TestStreamingMemory(t *testing.T) {
	shape := synth.LlamaShape{Dim: 256, Layers: 6, Heads: 8, KVHeads: 4, Hidden: 688, Vocab: 2048}
	base := synthBase(t, shape, 11)
	_, ad := newAdapter(t, base, []string{"all-linear"}, 8, 16, false, 12)
	_, ad2 := newAdapter(t, base, []string{"all-linear"}, 8, 16, false, 13)
	for _, m := range []Method{Linear, TIES} {
		runtime.GC()
		sum := mustRun(t, Options{Base: base, Adapters: []AdapterSpec{{ad, 1}, {ad2, 0.5}}, Out: outDir(t), Method: m, Density: 0.5})
		growth := int64(sum.PeakHeapBytes) - int64(sum.StartHeapBytes)
		t.Logf("%s: base %d B, largest tensor %d B, adapters %d B, merge buffers %d B, heap growth %d B",
			m, sum.BaseBytes, sum.LargestTensorBytes, sum.AdapterBytes, sum.PeakBufferBytes, growth)
		limit := 2 * sum.LargestTensorBytes // linear: row blocks only
		if m == TIES {
			limit = 8 * sum.LargestTensorBytes // two float64 task vectors and their merge
		}
		if sum.PeakBufferBytes > limit {
			t.Fatalf("%s: merge buffers peaked at %d B, over %d B", m, sum.PeakBufferBytes, limit)
		}
		if growth > sum.BaseBytes/2+limit {
			t.Fatalf("%s: the heap grew by %d B merging a %d B model", m, growth, sum.BaseBytes)
		}
	}
}

// TestStreamingPeakReport measures the peak memory of merges of synthetic models of the sizes
// in $LORACTL_MERGE_PEAK (e.g. "100,300", in MB of F32 weights) for docs/PERF.md; it is skipped
// when the variable is unset because building the models takes a while. With
// $LORACTL_MERGE_PEAK_KEEP set to a folder, the bases and adapters are kept there so the
// loractl binary can be measured on them too.
func TestStreamingPeakReport(t *testing.T) {
	sizes := os.Getenv("LORACTL_MERGE_PEAK")
	if sizes == "" {
		t.Skip("LORACTL_MERGE_PEAK not set (e.g. LORACTL_MERGE_PEAK=100,300 to measure merges of 100 MB and 300 MB models)")
	}
	shapes := map[string]synth.LlamaShape{
		"100": {Dim: 512, Layers: 8, Heads: 8, KVHeads: 4, Hidden: 1376, Vocab: 8192},
		"300": {Dim: 768, Layers: 10, Heads: 12, KVHeads: 4, Hidden: 2048, Vocab: 16000},
	}
	keep := os.Getenv("LORACTL_MERGE_PEAK_KEEP")
	var rows []string
	for _, s := range strings.Split(sizes, ",") {
		shape, ok := shapes[s]
		if !ok {
			t.Fatalf("no synthetic shape for %q MB (have 100, 300)", s)
		}
		base := synthBase(t, shape, 21)
		_, a1 := newAdapter(t, base, []string{"all-linear"}, 16, 32, false, 22)
		_, a2 := newAdapter(t, base, []string{"all-linear"}, 16, 32, false, 23)
		if keep != "" {
			for _, p := range [][2]string{{base, "base-" + s}, {a1, "adapter1-" + s}, {a2, "adapter2-" + s}} {
				dst := filepath.Join(keep, p[1])
				os.RemoveAll(dst)
				if err := os.Rename(p[0], dst); err != nil {
					t.Fatal(err)
				}
			}
			base, a1, a2 = filepath.Join(keep, "base-"+s), filepath.Join(keep, "adapter1-"+s), filepath.Join(keep, "adapter2-"+s)
		}
		for _, m := range []Method{Linear, SVD, TIES, DARETIES} {
			runtime.GC()
			debug.FreeOSMemory()
			rank := 0
			if m == SVD {
				rank = 16
			}
			sum := mustRun(t, Options{Base: base, Adapters: []AdapterSpec{{a1, 1}, {a2, 0.5}}, Out: outDir(t), Method: m, Density: 0.5, Rank: rank})
			js, _ := json.Marshal(sum)
			t.Logf("%s", js)
			rows = append(rows, fmt.Sprintf("| %s MB synthetic | %s | %.1f MiB | %.1f MiB | %.1f MiB | %.1f MiB | %.1f MiB | %.1fs |", s, m,
				mib(sum.BaseBytes), mib(sum.LargestTensorBytes), mib(sum.AdapterBytes), mib(sum.PeakBufferBytes),
				mib(int64(sum.PeakHeapBytes)-int64(sum.StartHeapBytes)), sum.Seconds))
		}
	}
	t.Logf("\n| model | method | base weights | largest tensor | adapters | merge buffers (peak) | heap growth (peak) | time |\n|---|---|---|---|---|---|---|---|\n%s", strings.Join(rows, "\n"))
}

func mib(n int64) float64 { return float64(n) / (1 << 20) }
