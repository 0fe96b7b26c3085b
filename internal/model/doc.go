// Package model implements the Llama-family decoder (model_type llama, mistral, qwen2, qwen3)
// on a backend.Backend: config.json parsing, safetensors weight loading, the forward pass with
// a KV cache, sampling and generation.
//
// Data flow of one forward pass over T tokens at positions pos0..pos0+T-1 (llama.go):
//
//	tokens (T)
//	  → embed_tokens                                  x (T, C)
//	  → N × [ RMSNorm(x)                              xb (T, C)
//	          q, k, v = xb·Wqᵀ(+b), xb·Wkᵀ(+b), xb·Wvᵀ(+b)   (T, NH·D), (T, NKV·D), (T, NKV·D)
//	          [qwen3: per-head RMSNorm of q and k]
//	          RoPE(q), RoPE(k)  (rotate_half pairs (i, i+D/2))
//	          append k, v to the KV cache              (S, NKV·D) per layer
//	          causal GQA attention over the cache      att (T, NH·D)
//	          x += att·Woᵀ(+b)                         (residual)
//	          RMSNorm(x) → silu(xb·Wgateᵀ) * (xb·Wupᵀ) (T, F) → ·Wdownᵀ
//	          x += mlp                                 (residual) ]
//	  → RMSNorm(x) → ·lm_headᵀ (embed_tokens when tied) logits (T, V)
//
// ForwardAll returns the logits of every position (for tests and evaluation); Step feeds
// tokens incrementally through a KVCache and returns the last position's logits; Generate
// drives Step with a Sampler. Activations are preallocated and reused, so generation does no
// per-token buffer allocation.
package model
