package model

import (
	"errors"
	"fmt"
	"slices"
)

// Generate continues prompt with up to n NEW tokens (n counts generated tokens only, not the
// prompt) and returns them, without the prompt.
//
// Each token is chosen by s from the logits of the previous position and reported to onToken
// (if not nil) as soon as it is chosen; an error from onToken stops generation and is returned
// with the tokens so far. If a token in stop (e.g. the EOS ids from config.json) is chosen,
// generation ends early and that stop token IS included as the last returned id, so callers
// can tell a stop from running out of n; drop it before decoding if it should not be shown.
//
// The prompt must hold at least one token (the BOS token), and len(prompt)+n must not exceed
// max_position_embeddings.
func Generate(m *Model, prompt []int, n int, s *Sampler, stop []int, onToken func(id int) error) ([]int, error) {
	cfg := m.Config()
	switch {
	case len(prompt) == 0:
		bos := "the BOS token"
		if cfg.BOSTokenID >= 0 {
			bos = fmt.Sprintf("the BOS token, id %d", cfg.BOSTokenID)
		}
		return nil, fmt.Errorf("generate: empty prompt; it needs at least %s", bos)
	case n < 0:
		return nil, fmt.Errorf("generate: the number of new tokens must not be negative, got %d", n)
	case s == nil:
		return nil, errors.New("generate: no sampler (use NewSampler(0, 0, 1, seed) for greedy decoding)")
	case len(prompt) > cfg.MaxPositionEmbeddings:
		return nil, fmt.Errorf("generate: the prompt has %d tokens, longer than the model's context (max_position_embeddings %d); use a shorter prompt",
			len(prompt), cfg.MaxPositionEmbeddings)
	case len(prompt)+n > cfg.MaxPositionEmbeddings:
		return nil, fmt.Errorf("generate: prompt of %d tokens + %d new tokens = %d exceeds the model's max_position_embeddings %d; use a shorter prompt or -n of at most %d",
			len(prompt), n, len(prompt)+n, cfg.MaxPositionEmbeddings, max(cfg.MaxPositionEmbeddings-len(prompt), 0))
	}
	out := make([]int, 0, n)
	if n == 0 {
		return out, nil
	}
	c := m.NewKVCache(len(prompt) + n - 1) // the last new token is never fed back
	defer c.Close()
	logits, err := m.Step(c, prompt)
	if err != nil {
		return nil, fmt.Errorf("generate: prompt: %w", err)
	}
	next := make([]int, 1) // (1) the token fed at each step
	for i := 0; i < n; i++ {
		id := s.Sample(logits)
		out = append(out, id)
		if onToken != nil {
			if err := onToken(id); err != nil {
				return out, err
			}
		}
		if slices.Contains(stop, id) || i == n-1 {
			break
		}
		next[0] = id
		if logits, err = m.Step(c, next); err != nil {
			return out, fmt.Errorf("generate: token %d: %w", i+1, err)
		}
	}
	return out, nil
}
