package optim

import (
	"fmt"
	"math"
	"strings"
)

// ScheduleKinds lists the learning-rate schedules NewSchedule knows, each with linear warmup.
var ScheduleKinds = []string{"constant", "linear", "cosine"}

// Schedule is a learning-rate schedule as transformers builds it with LambdaLR:
//
//	constant  get_constant_schedule_with_warmup
//	linear    get_linear_schedule_with_warmup
//	cosine    get_cosine_schedule_with_warmup, num_cycles 0.5 (half a cosine, peak to 0)
//
// During warmup (step < Warmup) every kind rises linearly from 0: PeakLR·step/Warmup.
type Schedule struct {
	Kind   string  // one of ScheduleKinds
	PeakLR float64 // the learning rate at the end of warmup
	Warmup int     // warmup steps; 0 for none
	Total  int     // total optimizer steps of the run
}

// NewSchedule checks its arguments and returns a schedule. kind is one of ScheduleKinds.
func NewSchedule(kind string, peakLR float64, warmup, total int) (Schedule, error) {
	known := false
	for _, k := range ScheduleKinds {
		known = known || k == kind
	}
	switch {
	case !known:
		return Schedule{}, fmt.Errorf("lr schedule %q is unknown; valid schedules: %s", kind, strings.Join(ScheduleKinds, ", "))
	case !(peakLR > 0) || math.IsInf(peakLR, 0):
		return Schedule{}, fmt.Errorf("learning rate %g must be a positive number, e.g. 2e-4", peakLR)
	case total < 1:
		return Schedule{}, fmt.Errorf("lr schedule: total steps %d must be at least 1", total)
	case warmup < 0:
		return Schedule{}, fmt.Errorf("lr schedule: warmup %d must be ≥ 0", warmup)
	case warmup > total:
		return Schedule{}, fmt.Errorf("lr schedule: warmup %d is longer than the %d training steps; lower warmup", warmup, total)
	}
	return Schedule{Kind: kind, PeakLR: peakLR, Warmup: warmup, Total: total}, nil
}

// LR returns the learning rate for the update that follows step completed updates: LR(0) for
// the first update, LR(1) for the second, as LambdaLR with scheduler.step() after every
// optimizer.step(). Steps past Total give the value at Total (0 for linear and cosine);
// transformers' cosine would rise again there, but a run never goes past Total.
func (s Schedule) LR(step int) float64 {
	return s.PeakLR * s.factor(min(step, s.Total))
}

// factor is the lr_lambda of transformers' schedule.
func (s Schedule) factor(step int) float64 {
	if step < s.Warmup {
		return float64(step) / float64(max(1, s.Warmup))
	}
	if s.Kind == "constant" {
		return 1
	}
	if s.Kind == "linear" {
		return max(0, float64(s.Total-step)/float64(max(1, s.Total-s.Warmup)))
	}
	// cosine, num_cycles = 0.5
	const numCycles = 0.5
	progress := float64(step-s.Warmup) / float64(max(1, s.Total-s.Warmup))
	return max(0, 0.5*(1+math.Cos(math.Pi*numCycles*2*progress)))
}
