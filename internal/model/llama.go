package model

import (
	"errors"
	"fmt"

	"github.com/loractl/loractl/internal/backend"
)

// Model is a Llama-family decoder (llama, mistral, qwen2, qwen3) with its weights on a backend.
// A Model keeps preallocated activation buffers, so it is not safe for concurrent use; load
// one Model per goroutine.
type Model struct {
	cfg *Config
	be  backend.Backend

	embed   backend.Buffer // (V, C) embed_tokens
	layers  []layerWeights // (L,)
	norm    backend.Buffer // (C) final RMSNorm
	lmHead  backend.Buffer // (V, C); the same buffer as embed when tied
	invFreq backend.Buffer // (D/2) RoPE inverse frequencies

	act activations
}

// activations are the per-token working buffers of a forward pass, sized for up to cap tokens
// and reused across calls (llama2.c's RunState). They grow only when a longer input arrives.
type activations struct {
	cap  int
	x    backend.Buffer // (T, C) residual stream
	xb   backend.Buffer // (T, C) RMSNorm output (input to attention, MLP, lm_head)
	xb2  backend.Buffer // (T, C) attention or MLP output, before the residual add
	q    backend.Buffer // (T, NH·D) queries
	k    backend.Buffer // (T, NKV·D) new keys, before they are appended to the cache
	v    backend.Buffer // (T, NKV·D) new values
	att  backend.Buffer // (T, NH·D) attention output (heads concatenated)
	gate backend.Buffer // (T, F) gate_proj output, then silu(gate)·up
	up   backend.Buffer // (T, F) up_proj output

	last     backend.Buffer // (1, C) final-normed hidden state of the last position (Step)
	logits   backend.Buffer // (V) logits of the last position (Step)
	hostLast []float32      // (V) host copy of logits, returned by Step
}

// KVCache holds the rotated keys and the values of every layer for the positions fed so far.
// It belongs to the Model that made it.
type KVCache struct {
	m      *Model
	k, v   []backend.Buffer // (L,) each (S, NKV·D)
	maxSeq int              // S, the capacity in positions
	pos    int              // positions filled so far
}

// Len returns the number of positions in the cache (the position of the next token).
func (c *KVCache) Len() int { return c.pos }

// Cap returns the number of positions the cache can hold.
func (c *KVCache) Cap() int { return c.maxSeq }

// Reset empties the cache so that the next token is at position 0.
func (c *KVCache) Reset() { c.pos = 0 }

// Close releases the cache's backend storage.
func (c *KVCache) Close() {
	for l := range c.k {
		c.m.be.Free(c.k[l])
		c.m.be.Free(c.v[l])
	}
	c.k, c.v = nil, nil
	c.maxSeq, c.pos = 0, 0
}

// newModel returns a model with the config and RoPE table set and no weights yet.
func newModel(cfg *Config, b backend.Backend) (*Model, error) {
	m := &Model{cfg: cfg, be: b, layers: make([]layerWeights, cfg.NumHiddenLayers)}
	inv := cfg.RoPEInvFreq() // (D/2,)
	m.invFreq = b.Alloc(len(inv))
	if err := b.Upload(m.invFreq, inv); err != nil {
		return nil, fmt.Errorf("upload RoPE frequencies to %s: %w", b.Name(), err)
	}
	return m, nil
}

// Config returns the model's configuration. Callers must not modify it.
func (m *Model) Config() *Config { return m.cfg }

// Backend returns the backend the model runs on.
func (m *Model) Backend() backend.Backend { return m.be }

// Close releases the model's backend storage.
func (m *Model) Close() {
	free := func(b backend.Buffer) {
		if b != nil {
			m.be.Free(b)
		}
	}
	for _, s := range m.specs() {
		free(*s.dst)
		*s.dst = nil
	}
	m.lmHead = nil
	free(m.invFreq)
	m.invFreq = nil
	m.freeActivations()
}

// NewKVCache returns an empty cache for up to maxSeq positions. maxSeq ≤ 0 or larger than
// max_position_embeddings means max_position_embeddings. Memory: 2·L·maxSeq·NKV·D floats.
func (m *Model) NewKVCache(maxSeq int) *KVCache {
	if maxSeq <= 0 || maxSeq > m.cfg.MaxPositionEmbeddings {
		maxSeq = m.cfg.MaxPositionEmbeddings
	}
	L, KV := m.cfg.NumHiddenLayers, m.cfg.KVDim()
	c := &KVCache{m: m, k: make([]backend.Buffer, L), v: make([]backend.Buffer, L), maxSeq: maxSeq}
	for l := 0; l < L; l++ {
		c.k[l] = m.be.Alloc(maxSeq * KV)
		c.v[l] = m.be.Alloc(maxSeq * KV)
	}
	return c
}

// ForwardAll runs the model over tokens from position 0 with a fresh cache and returns the
// logits of every position: (T, V), row t predicting the token after tokens[t].
func (m *Model) ForwardAll(tokens []int) ([]float32, error) {
	T, V := len(tokens), m.cfg.VocabSize
	if T > m.cfg.MaxPositionEmbeddings {
		return nil, fmt.Errorf("forward: %d tokens exceed max_position_embeddings %d of %s; use a shorter sequence",
			T, m.cfg.MaxPositionEmbeddings, m.cfg.Path)
	}
	c := m.NewKVCache(T)
	defer c.Close()
	if err := m.forward(c, tokens); err != nil {
		return nil, err
	}
	// Final norm and lm_head over all T positions.
	logits := m.be.Alloc(T * V) // (T, V)
	defer m.be.Free(logits)
	a := &m.act
	m.be.RMSNormForward(a.xb, a.x, m.norm, T, m.cfg.HiddenSize, float32(m.cfg.RMSNormEps))
	m.be.MatMulForward(logits, a.xb, m.lmHead, nil, T, m.cfg.HiddenSize, V)
	out := make([]float32, T*V) // (T, V)
	if err := m.be.Download(out, logits); err != nil {
		return nil, fmt.Errorf("forward: download logits from %s: %w", m.be.Name(), err)
	}
	return out, nil
}

// Step feeds tokens at the next positions of the cache (a whole prompt, or one generated
// token) and returns the logits (V) of the last one. The returned slice is owned by the model
// and overwritten by the next call. Only the last position goes through lm_head.
func (m *Model) Step(c *KVCache, tokens []int) ([]float32, error) {
	if err := m.forward(c, tokens); err != nil {
		return nil, err
	}
	T, C, V := len(tokens), m.cfg.HiddenSize, m.cfg.VocabSize
	a := &m.act
	m.be.Copy(a.last, 0, a.x, (T-1)*C, C)
	m.be.RMSNormForward(a.last, a.last, m.norm, 1, C, float32(m.cfg.RMSNormEps))
	m.be.MatMulForward(a.logits, a.last, m.lmHead, nil, 1, C, V)
	if err := m.be.Download(a.hostLast, a.logits); err != nil {
		return nil, fmt.Errorf("step: download logits from %s: %w", m.be.Name(), err)
	}
	return a.hostLast, nil
}

// checkInput validates tokens against the vocabulary and the cache before any op runs.
func (m *Model) checkInput(c *KVCache, tokens []int) error {
	cfg := m.cfg
	switch {
	case c == nil || c.m != m:
		return errors.New("forward: the KV cache was not made by this model's NewKVCache")
	case c.k == nil:
		return errors.New("forward: the KV cache is closed")
	case len(tokens) == 0:
		return errors.New("forward: no tokens to feed (need at least one)")
	case c.pos+len(tokens) > c.maxSeq:
		return fmt.Errorf("forward: %d cached positions + %d new tokens exceed the KV cache capacity %d; make a larger cache with NewKVCache (at most max_position_embeddings = %d)",
			c.pos, len(tokens), c.maxSeq, cfg.MaxPositionEmbeddings)
	case cfg.SlidingWindow > 0 && c.pos+len(tokens) > cfg.SlidingWindow:
		return fmt.Errorf("forward: %d positions exceed the sliding_window %d of %s; sliding-window attention is not implemented, so keep sequences within the window",
			c.pos+len(tokens), cfg.SlidingWindow, cfg.Path)
	}
	for i, id := range tokens {
		if id < 0 || id >= cfg.VocabSize {
			return fmt.Errorf("forward: token %d (at index %d) is outside the vocabulary [0, %d) of %s; the tokenizer does not match the model",
				id, i, cfg.VocabSize, cfg.Path)
		}
	}
	return nil
}

// forward runs the decoder blocks over tokens at positions c.Len().., appends their keys and
// values to c, and leaves the final residual stream in m.act.x (T, C).
func (m *Model) forward(c *KVCache, tokens []int) error {
	if err := m.checkInput(c, tokens); err != nil {
		return err
	}
	cfg, be, a := m.cfg, m.be, &m.act
	T, pos0, S := len(tokens), c.pos, c.maxSeq
	C, F := cfg.HiddenSize, cfg.IntermediateSize
	NH, NKV, D := cfg.NumAttentionHeads, cfg.NumKeyValueHeads, cfg.HeadDim
	Q, KV := cfg.QDim(), cfg.KVDim()
	eps := float32(cfg.RMSNormEps)
	m.ensureActivations(T)

	be.EmbeddingForward(a.x, m.embed, tokens, C) // x (T, C)
	for l := range m.layers {
		w := &m.layers[l]

		// Attention block: x += o_proj(attention(rope(q), rope(k), v)) on the normed input.
		be.RMSNormForward(a.xb, a.x, w.attnNorm, T, C, eps) // xb (T, C)
		be.MatMulForward(a.q, a.xb, w.wq, w.bq, T, C, Q)    // q (T, NH·D)
		be.MatMulForward(a.k, a.xb, w.wk, w.bk, T, C, KV)   // k (T, NKV·D)
		be.MatMulForward(a.v, a.xb, w.wv, w.bv, T, C, KV)   // v (T, NKV·D)
		if w.qNorm != nil {                                 // qwen3: RMSNorm over each head's D values, before RoPE
			be.RMSNormForward(a.q, a.q, w.qNorm, T*NH, D, eps)
			be.RMSNormForward(a.k, a.k, w.kNorm, T*NKV, D, eps)
		}
		be.RoPEForward(a.q, m.invFreq, 1, T, NH, D, pos0)
		be.RoPEForward(a.k, m.invFreq, 1, T, NKV, D, pos0)
		be.Copy(c.k[l], pos0*KV, a.k, 0, T*KV) // cache rows pos0..pos0+T-1 (S, NKV·D)
		be.Copy(c.v[l], pos0*KV, a.v, 0, T*KV)
		be.AttentionForward(a.att, a.q, c.k[l], c.v[l], 1, T, S, pos0, NH, NKV, D) // att (T, NH·D)
		be.MatMulForward(a.xb2, a.att, w.wo, w.bo, T, Q, C)                        // xb2 (T, C)
		be.AddForward(a.x, a.x, a.xb2, T*C)

		// MLP block: x += down_proj(silu(gate_proj(h)) * up_proj(h)), h the normed input.
		be.RMSNormForward(a.xb, a.x, w.mlpNorm, T, C, eps)         // xb (T, C)
		be.MatMulForward(a.gate, a.xb, w.wGate, w.bGate, T, C, F)  // gate (T, F)
		be.MatMulForward(a.up, a.xb, w.wUp, w.bUp, T, C, F)        // up (T, F)
		be.SwiGLUForward(a.gate, a.gate, a.up, T*F)                // gate (T, F)
		be.MatMulForward(a.xb2, a.gate, w.wDown, w.bDown, T, F, C) // xb2 (T, C)
		be.AddForward(a.x, a.x, a.xb2, T*C)
	}
	c.pos += T
	return nil
}

// ensureActivations makes the activation buffers hold at least T tokens.
func (m *Model) ensureActivations(T int) {
	a := &m.act
	if a.x != nil && a.cap >= T {
		return
	}
	m.freeActivations()
	cfg, be := m.cfg, m.be
	C, F, Q, KV, V := cfg.HiddenSize, cfg.IntermediateSize, cfg.QDim(), cfg.KVDim(), cfg.VocabSize
	a.cap = T
	a.x = be.Alloc(T * C)
	a.xb = be.Alloc(T * C)
	a.xb2 = be.Alloc(T * C)
	a.q = be.Alloc(T * Q)
	a.k = be.Alloc(T * KV)
	a.v = be.Alloc(T * KV)
	a.att = be.Alloc(T * Q)
	a.gate = be.Alloc(T * F)
	a.up = be.Alloc(T * F)
	a.last = be.Alloc(C)
	a.logits = be.Alloc(V)
	a.hostLast = make([]float32, V)
}

// freeActivations releases the activation buffers.
func (m *Model) freeActivations() {
	a := &m.act
	for _, b := range []backend.Buffer{a.x, a.xb, a.xb2, a.q, a.k, a.v, a.att, a.gate, a.up, a.last, a.logits} {
		if b != nil {
			m.be.Free(b)
		}
	}
	*a = activations{}
}
