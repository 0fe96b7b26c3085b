package data

import "fmt"

// Batch is B rows of T positions, row-major (index b*T + t).
//
//	Tokens[i]    input token id (0 in padding)
//	Targets[i]   the token position i must predict, or Ignore (-100: padding, untrained)
//	Positions[i] position id within its sample; restarts at 0 for every sample
//	Segments[i]  sample number within its row (0, 1, ...); -1 in padding
//
// Attention must stay within a segment: position i of a row may attend to position j ≤ i of
// the same row only when Segments[j] == Segments[i]. Then no sample sees another, and a
// packed batch gives each sample exactly the loss it has alone.
type Batch struct {
	Tokens, Targets, Positions, Segments []int
	B, T                                 int
}

// newBatch returns an all-padding batch.
func newBatch(b, t int) Batch {
	bt := Batch{B: b, T: t, Tokens: make([]int, b*t), Targets: make([]int, b*t),
		Positions: make([]int, b*t), Segments: make([]int, b*t)}
	for i := range bt.Targets {
		bt.Targets[i] = Ignore
		bt.Segments[i] = -1
	}
	return bt
}

// put writes ex at row r, offset off, as segment seg.
func (bt *Batch) put(ex Example, r, off, seg int) {
	base := r*bt.T + off
	for t := range ex.IDs {
		bt.Tokens[base+t] = ex.IDs[t]
		bt.Targets[base+t] = ex.Labels[t]
		bt.Positions[base+t] = t
		bt.Segments[base+t] = seg
	}
}

// Loader hands out training batches forever, epoch after epoch. Each epoch visits every
// example once in an order drawn from (seed, epoch) alone, so the order does not depend on
// how many batches were taken before, and State/Restore continue a run exactly.
//
// With packing, examples are laid into each row in order while they fit; the next example
// that does not fit starts the next row (examples are never split). Without packing each
// row holds one example. Rows are padded.
type Loader struct {
	examples []Example
	b, t     int
	packing  bool
	seed     uint64
	epoch    int
	cursor   int   // index into order of the next example
	order    []int // permutation of examples for epoch
}

// State is the position of a Loader in its data order: enough, with the same examples and
// seed, to continue exactly. It is plain data for checkpoint files.
type State struct {
	Seed     uint64 `json:"seed"`
	Examples int    `json:"examples"` // number of examples, checked on Restore
	Epoch    int    `json:"epoch"`    // epochs completed
	Cursor   int    `json:"cursor"`   // examples of the current epoch already handed out
}

// NewLoader makes a Loader of b rows of t positions. Every example must fit in t positions.
func NewLoader(examples []Example, b, t int, packing bool, seed uint64) (*Loader, error) {
	if len(examples) == 0 {
		return nil, fmt.Errorf("data: no examples to load")
	}
	if b < 1 || t < 1 {
		return nil, fmt.Errorf("data: batch size and sequence length must be at least 1, got %d and %d", b, t)
	}
	for i, ex := range examples {
		if len(ex.IDs) == 0 {
			return nil, fmt.Errorf("data: example %d is empty", i)
		}
		if len(ex.IDs) > t || len(ex.IDs) != len(ex.Labels) {
			return nil, fmt.Errorf("data: example %d has %d positions (%d labels), more than the sequence length %d; read the data with the same seq_len", i, len(ex.IDs), len(ex.Labels), t)
		}
	}
	l := &Loader{examples: examples, b: b, t: t, packing: packing, seed: seed}
	l.order = permutation(len(examples), seed, 0)
	return l, nil
}

// State returns the loader's position.
func (l *Loader) State() State {
	return State{Seed: l.seed, Examples: len(l.examples), Epoch: l.epoch, Cursor: l.cursor}
}

// Restore moves the loader to s, taken from a loader over the same examples and seed.
func (l *Loader) Restore(s State) error {
	if s.Seed != l.seed || s.Examples != len(l.examples) {
		return fmt.Errorf("data: the saved data order is for seed %d over %d examples, but this run has seed %d over %d examples; resume with the same data and train.seed", s.Seed, s.Examples, l.seed, len(l.examples))
	}
	if s.Epoch < 0 || s.Cursor < 0 || s.Cursor > len(l.examples) {
		return fmt.Errorf("data: saved data cursor %d (epoch %d) is out of range for %d examples", s.Cursor, s.Epoch, len(l.examples))
	}
	l.epoch, l.cursor = s.Epoch, s.Cursor
	l.order = permutation(len(l.examples), l.seed, uint64(l.epoch))
	return nil
}

// Epoch returns the number of completed epochs.
func (l *Loader) Epoch() int { return l.epoch }

// peek returns the next example in the order, moving to the next epoch when one ends.
func (l *Loader) peek() Example {
	if l.cursor == len(l.order) {
		l.epoch++
		l.cursor = 0
		l.order = permutation(len(l.examples), l.seed, uint64(l.epoch))
	}
	return l.examples[l.order[l.cursor]]
}

// Next returns the next batch.
func (l *Loader) Next() Batch {
	bt := newBatch(l.b, l.t)
	for r := range l.b {
		off, seg := 0, 0
		for {
			ex := l.peek()
			if off+len(ex.IDs) > l.t || (seg > 0 && !l.packing) {
				break
			}
			bt.put(ex, r, off, seg)
			l.cursor++
			off += len(ex.IDs)
			seg++
		}
	}
	return bt
}

// EvalBatches lays out every example once, in file order, in batches of b rows of t
// positions (packed or one per row); the last batch may have padding rows.
func EvalBatches(examples []Example, b, t int, packing bool) ([]Batch, error) {
	var out []Batch
	bt := newBatch(b, t)
	r, off, seg := 0, 0, 0
	for i, ex := range examples {
		if len(ex.IDs) > t {
			return nil, fmt.Errorf("data: eval example %d has %d positions, more than the sequence length %d", i, len(ex.IDs), t)
		}
		if off+len(ex.IDs) > t || (seg > 0 && !packing) {
			r, off, seg = r+1, 0, 0
			if r == b {
				out = append(out, bt)
				bt = newBatch(b, t)
				r = 0
			}
		}
		bt.put(ex, r, off, seg)
		off += len(ex.IDs)
		seg++
	}
	if len(examples) > 0 {
		out = append(out, bt)
	}
	return out, nil
}

// Split holds out round(fraction·n) examples (at least 1 when fraction > 0 and n > 1) for
// evaluation, chosen by seed; both parts keep file order.
func Split(examples []Example, fraction float64, seed uint64) (train, eval []Example) {
	n := len(examples)
	k := int(fraction*float64(n) + 0.5)
	if fraction > 0 && k == 0 && n > 1 {
		k = 1
	}
	if k >= n {
		k = n - 1
	}
	if k <= 0 {
		return examples, nil
	}
	held := make([]bool, n)
	for _, i := range permutation(n, seed, ^uint64(0))[:k] {
		held[i] = true
	}
	for i, ex := range examples {
		if held[i] {
			eval = append(eval, ex)
		} else {
			train = append(train, ex)
		}
	}
	return train, eval
}

// permutation returns a Fisher-Yates shuffle of 0..n-1 drawn from (seed, stream) with
// splitmix64, written out here so the order never changes with the Go version.
func permutation(n int, seed, stream uint64) []int {
	p := make([]int, n)
	for i := range p {
		p[i] = i
	}
	s := seed ^ (stream+1)*0x9E3779B97F4A7C15
	next := func() uint64 {
		s += 0x9E3779B97F4A7C15
		z := s
		z = (z ^ (z >> 30)) * 0xBF58476D1CE4E5B9
		z = (z ^ (z >> 27)) * 0x94D049BB133111EB
		return z ^ (z >> 31)
	}
	for i := n - 1; i > 0; i-- {
		// uniform j in [0, i] by rejection
		bound := uint64(i + 1)
		limit := ^uint64(0) - (^uint64(0) % bound)
		v := next()
		for v >= limit {
			v = next()
		}
		j := int(v % bound)
		p[i], p[j] = p[j], p[i]
	}
	return p
}
