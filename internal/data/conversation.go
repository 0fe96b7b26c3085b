package data

import (
	"fmt"
	"strings"

	"github.com/loractl/loractl/internal/chat"
	"github.com/loractl/loractl/internal/tokenizer"
)

// Conversation renders msgs with the chat template and returns the token ids of the whole
// conversation (add_generation_prompt=false, encoded without added special tokens, exactly as
// apply_chat_template(tokenize=True)) and which tokens are trained: the assistant turns.
//
// An assistant turn i is found by rendering its prefix:
//
//   - start: render msgs[:i] with add_generation_prompt=true. That text must be a prefix of
//     the whole rendering (history, then the assistant header); the turn's first trained token
//     is the first token where the prefix's encoding and the whole encoding differ, so a token
//     that straddles the header/content boundary is trained too.
//   - end: the first special token (e.g. <|eot_id|>, <|im_end|>) at or after the start,
//     included, so the model learns to end its turn; without one, the end of the text.
//
// This is exact for the llama3 and qwen3 templates (including Qwen3's reasoning blocks,
// which are trained as part of the turn that shows them); a template that renders the
// history differently once later turns follow is reported as an error.
func Conversation(tpl *chat.Template, vars map[string]any, tok tokenizer.Encoder, msgs []chat.Message) ([]int, []bool, error) {
	full, err := tpl.Render(msgs, false, vars)
	if err != nil {
		return nil, nil, err
	}
	ids := tok.Encode(full, false)
	train := make([]bool, len(ids))
	special := func(id int) bool { return id == tok.EOS() }
	if s, ok := tok.(interface{ IsSpecial(int) bool }); ok {
		special = s.IsSpecial
	}
	for i, m := range msgs {
		if m.Role != "assistant" {
			continue
		}
		prefix, err := tpl.Render(msgs[:i], true, vars)
		if err != nil {
			return nil, nil, fmt.Errorf("rendering the conversation before assistant message %d: %v", i, err)
		}
		if !strings.HasPrefix(full, prefix) {
			return nil, nil, fmt.Errorf("the chat template renders the messages before assistant message %d differently when later messages follow, so the assistant turn cannot be located; use the prompt_completion format instead", i)
		}
		p := tok.Encode(prefix, false)
		start := 0
		for start < len(p) && start < len(ids) && p[start] == ids[start] {
			start++
		}
		end := start
		for end < len(ids) && !special(ids[end]) {
			end++
		}
		end = min(end+1, len(ids))
		for t := start; t < end; t++ {
			train[t] = true
		}
	}
	return ids, train, nil
}
