package backend

// FlashAttention is the optional capability of Trainers whose attention training pass keeps no
// T×T matrix (flash-attention style: tiles of keys, an online softmax, the scores recomputed in
// the backward). Callers find it by type assertion and use it where FlashAttentionFits says so;
// otherwise they use AttentionTrainForward / AttentionBackward and the saved probabilities.
// Masks, layouts and gradients are those of AttentionTrainForward / AttentionBackward.
type FlashAttention interface {
	// FlashAttentionFits reports whether the two ops below take head dimension D.
	FlashAttentionFits(D int) bool

	// AttentionTrainForwardLSE is AttentionTrainForward saving, instead of the probabilities,
	//	lse (B, NH, T) = log Σ_s exp(q_t·k_s/sqrt(D)) over the keys s query t sees,
	// so the backward needs B·NH·T floats where the probabilities need B·NH·T·T.
	// out (B, T, NH·D), q (B, T, NH·D), k, v (B, T, NKV·D), seg nil or len B·T.
	AttentionTrainForwardLSE(out, lse, q, k, v Buffer, seg []int, B, T, NH, NKV, D int)

	// AttentionBackwardLSE is AttentionBackward given the forward's output and lse instead of
	// the probabilities: dq, dk, dv += the gradients (nil: not computed). dout and out
	// (B, T, NH·D), lse (B, NH, T), q, k, v and seg as in the forward.
	AttentionBackwardLSE(dq, dk, dv, dout, out, lse, q, k, v Buffer, seg []int, B, T, NH, NKV, D int)
}
