package model

import (
	"errors"
	"slices"
	"testing"

	"github.com/loractl/loractl/internal/backend/cpu"
)

func loadTiny(t *testing.T) *Model {
	t.Helper()
	dir, _ := tinyCases[5].tc.build(t) // qwen2, V = 70, max_position_embeddings 64
	m, err := Load(dir, cpu.New())
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(m.Close)
	return m
}

func TestGenerateGreedyMatchesForwardAll(t *testing.T) {
	m := loadTiny(t)
	prompt := randomTokens(21, 6, m.Config().VocabSize)
	const n = 20
	got, err := Generate(m, prompt, n, NewSampler(0, 0, 1, 0), nil, nil)
	if err != nil {
		t.Fatal(err)
	}
	if len(got) != n {
		t.Fatalf("generated %d tokens, want %d", len(got), n)
	}
	// Independent check: a full forward over prompt+generated, argmax at each position.
	seq := append(slices.Clone(prompt), got...)
	logits, err := m.ForwardAll(seq[:len(seq)-1])
	if err != nil {
		t.Fatal(err)
	}
	V := m.Config().VocabSize
	for i := range got {
		pos := len(prompt) - 1 + i
		if want := argmax(logits[pos*V : (pos+1)*V]); got[i] != want {
			t.Fatalf("token %d: Generate chose %d, argmax of the full forward is %d", i, got[i], want)
		}
	}
}

func TestGenerateStop(t *testing.T) {
	m := loadTiny(t)
	prompt := randomTokens(22, 4, m.Config().VocabSize)
	s := func() *Sampler { return NewSampler(0.9, 0, 1, 5) }
	full, err := Generate(m, prompt, 30, s(), nil, nil)
	if err != nil {
		t.Fatal(err)
	}
	stop := full[7]
	k := slices.Index(full, stop) // first time the stop id appears
	got, err := Generate(m, prompt, 30, s(), []int{999, stop}, nil)
	if err != nil {
		t.Fatal(err)
	}
	if !slices.Equal(got, full[:k+1]) {
		t.Fatalf("with stop id %d: got %v, want %v (the stop token included as the last id)", stop, got, full[:k+1])
	}
}

func TestGenerateCallbackAndEdges(t *testing.T) {
	m := loadTiny(t)
	greedy := NewSampler(0, 0, 1, 0)

	got, err := Generate(m, []int{1}, 0, greedy, nil, nil)
	if err != nil || len(got) != 0 {
		t.Fatalf("n=0: got %v, %v; want no tokens and no error", got, err)
	}

	boom := errors.New("client went away")
	var seen []int
	got, err = Generate(m, []int{1, 5}, 10, greedy, nil, func(id int) error {
		seen = append(seen, id)
		if len(seen) == 3 {
			return boom
		}
		return nil
	})
	if !errors.Is(err, boom) || len(got) != 3 || !slices.Equal(got, seen) {
		t.Fatalf("callback error: got %v, %v; want 3 tokens and the callback's error", got, err)
	}

	_, err = Generate(m, nil, 5, greedy, nil, nil)
	wantErr(t, err, "empty prompt", "BOS token, id 1")

	_, err = Generate(m, make([]int, 10), 55, greedy, nil, nil)
	wantErr(t, err, "prompt of 10 tokens", "55 new tokens", "max_position_embeddings 64", "shorter prompt or -n of at most 54")

	_, err = Generate(m, make([]int, 65), 0, greedy, nil, nil)
	wantErr(t, err, "the prompt has 65 tokens", "max_position_embeddings 64", "use a shorter prompt")

	_, err = Generate(m, []int{1}, -1, greedy, nil, nil)
	wantErr(t, err, "must not be negative")

	// Exactly at the limit is fine.
	got, err = Generate(m, make([]int, 10), 54, greedy, nil, nil)
	if err != nil || len(got) != 54 {
		t.Fatalf("prompt 10 + n 54 = 64 positions: got %d tokens, %v", len(got), err)
	}
}

func TestStepAllocations(t *testing.T) {
	m := loadTiny(t)
	c := m.NewKVCache(64)
	defer c.Close()
	if _, err := m.Step(c, []int{1, 2, 3}); err != nil {
		t.Fatal(err)
	}
	tok := []int{4}
	allocs := testing.AllocsPerRun(20, func() {
		if _, err := m.Step(c, tok); err != nil {
			t.Fatal(err)
		}
	})
	if allocs != 0 {
		t.Errorf("Step allocates %.1f times per token, want 0", allocs)
	}
}
