package merge

import (
	"fmt"
	"math"
	"strconv"
	"strings"
)

// ParseSize reads a size such as "5GB", "500MB", "2GiB", "10KB" or "123456" (bytes).
// KB, MB, GB and TB are powers of 1000 (as transformers' max_shard_size); KiB, MiB, GiB and TiB
// powers of 1024. Case and a space before the unit do not matter.
func ParseSize(s string) (int64, error) {
	t := strings.ToUpper(strings.TrimSpace(s))
	units := []struct {
		suffix string
		mult   float64
	}{
		{"KIB", 1 << 10}, {"MIB", 1 << 20}, {"GIB", 1 << 30}, {"TIB", 1 << 40},
		{"KB", 1e3}, {"MB", 1e6}, {"GB", 1e9}, {"TB", 1e12}, {"B", 1},
	}
	mult := 1.0
	for _, u := range units {
		if strings.HasSuffix(t, u.suffix) {
			t, mult = strings.TrimSpace(strings.TrimSuffix(t, u.suffix)), u.mult
			break
		}
	}
	v, err := strconv.ParseFloat(t, 64)
	if err != nil || math.IsNaN(v) || math.IsInf(v, 0) || v <= 0 || v*mult > math.MaxInt64/2 {
		return 0, fmt.Errorf("size %q is not a positive size; write it like 5GB, 500MB, 2GiB or a number of bytes", s)
	}
	n := int64(v * mult)
	if n < 1 {
		return 0, fmt.Errorf("size %q is less than one byte", s)
	}
	return n, nil
}
