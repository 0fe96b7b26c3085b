package optim

import (
	"math"
	"strings"
	"testing"
)

// Expected values are transformers' lr_lambda formulas evaluated by hand, with peak 1e-3,
// warmup 10 and total 110 (so 100 decay steps):
//
//	warmup     step/10
//	constant   1
//	linear     (110−step)/100
//	cosine     0.5·(1+cos(π·(step−10)/100))
func TestScheduleKeySteps(t *testing.T) {
	const peak = 1e-3
	cases := map[string][]struct {
		step int
		want float64
	}{
		"constant": {{0, 0}, {5, 0.5 * peak}, {10, peak}, {60, peak}, {110, peak}, {500, peak}},
		"linear":   {{0, 0}, {1, 0.1 * peak}, {5, 0.5 * peak}, {10, peak}, {35, 0.75 * peak}, {60, 0.5 * peak}, {109, 0.01 * peak}, {110, 0}, {200, 0}},
		"cosine": {{0, 0}, {5, 0.5 * peak}, {10, peak},
			{35, 0.5 * (1 + math.Sqrt2/2) * peak}, // cos(π/4)
			{60, 0.5 * peak},                      // cos(π/2) = 0
			{85, 0.5 * (1 - math.Sqrt2/2) * peak}, // cos(3π/4)
			{110, 0}, {150, 0}},
	}
	for kind, steps := range cases {
		s, err := NewSchedule(kind, peak, 10, 110)
		if err != nil {
			t.Fatal(err)
		}
		for _, c := range steps {
			if got := s.LR(c.step); math.Abs(got-c.want) > 1e-15 {
				t.Errorf("%s LR(%d) = %.17g, want %.17g", kind, c.step, got, c.want)
			}
		}
	}
}

func TestScheduleWithoutWarmupStartsAtPeak(t *testing.T) {
	for _, kind := range ScheduleKinds {
		s, err := NewSchedule(kind, 2e-4, 0, 50)
		if err != nil {
			t.Fatal(err)
		}
		if got := s.LR(0); got != 2e-4 {
			t.Errorf("%s LR(0) = %g with no warmup, want the peak 2e-4", kind, got)
		}
	}
}

// The decaying schedules never increase after warmup and never go below 0.
func TestScheduleMonotoneAfterWarmup(t *testing.T) {
	for _, kind := range []string{"linear", "cosine"} {
		s, err := NewSchedule(kind, 3e-4, 7, 93)
		if err != nil {
			t.Fatal(err)
		}
		prev := s.LR(7)
		for step := 8; step <= 120; step++ {
			lr := s.LR(step)
			if lr > prev || lr < 0 {
				t.Fatalf("%s: LR(%d) = %g after LR(%d) = %g", kind, step, lr, step-1, prev)
			}
			prev = lr
		}
	}
}

func TestNewScheduleErrors(t *testing.T) {
	for _, tc := range []struct {
		kind          string
		lr            float64
		warmup, total int
		want          string
	}{
		{"cosine_with_restarts", 1e-3, 0, 10, "valid schedules: constant, linear, cosine"},
		{"linear", 0, 0, 10, "positive"},
		{"linear", math.NaN(), 0, 10, "positive"},
		{"linear", 1e-3, 0, 0, "at least 1"},
		{"linear", 1e-3, -1, 10, "warmup -1"},
		{"linear", 1e-3, 11, 10, "lower warmup"},
	} {
		_, err := NewSchedule(tc.kind, tc.lr, tc.warmup, tc.total)
		if err == nil || !strings.Contains(err.Error(), tc.want) {
			t.Errorf("NewSchedule(%q, %g, %d, %d) error = %v, want one containing %q", tc.kind, tc.lr, tc.warmup, tc.total, err, tc.want)
		}
	}
}
