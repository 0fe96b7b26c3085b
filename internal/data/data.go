// Package data turns JSONL training files into token sequences with loss masks, and those
// into batches (packed or padded), in a seeded order that a resume can continue exactly.
//
// A file holds one JSON object per line, in one of three shapes (detected from the first
// line that is valid JSON, or fixed by Options.Format):
//
//	{"text": "..."}                                  loss on every token
//	{"prompt": "...", "completion": "..."}           loss on the completion (and EOS) only,
//	                                                 unless Options.TrainOnPrompt
//	{"messages": [{"role": "...", "content": "..."}]} rendered with the model's chat template;
//	                                                 loss on the assistant turns only
//
// Other fields of a line are ignored.
//
// # Tokens
//
// text: Encode(text, addSpecial=true) (BOS when the tokenizer adds one), then EOS.
// prompt/completion: Encode(prompt, true) followed by Encode(completion, false), then EOS;
// the two parts are tokenized separately so the boundary is exact.
// messages: the rendered conversation is encoded with addSpecial=false (the template writes
// its own BOS) and no EOS is appended: each assistant turn already ends with the template's
// end-of-turn token, which is part of the loss (see assistantSpans for the method).
//
// # Example convention
//
// A sample of n tokens s[0..n) becomes an Example of n-1 positions:
//
//	IDs[t]    = s[t]                        t = 0..n-2
//	Labels[t] = s[t+1] if token t+1 is trained, else -100
//
// i.e. Labels is already shifted: position t is trained to predict Labels[t]. The last token
// (usually EOS) is only a target, never an input. A sample longer than SeqLen+1 tokens is cut
// to SeqLen+1 tokens (so its Example has exactly SeqLen positions; the cut drops its EOS) and
// counted in Stats.Truncated.
package data

import (
	"bufio"
	"encoding/json"
	"fmt"
	"os"
	"strings"

	"github.com/loractl/loractl/internal/chat"
	"github.com/loractl/loractl/internal/tokenizer"
)

// Ignore is the label of a position that has no loss.
const Ignore = -100

// Format is the shape of the lines of a data file.
type Format string

// The formats; FormatAuto detects the shape from the file's first valid line.
const (
	FormatAuto             Format = "auto"
	FormatText             Format = "text"
	FormatPromptCompletion Format = "prompt_completion"
	FormatMessages         Format = "messages"
)

// Options controls how a file becomes Examples.
type Options struct {
	Format        Format         // "" or FormatAuto: detect
	SeqLen        int            // positions per Example at most (≥ 1)
	TrainOnPrompt bool           // prompt/completion: loss on the prompt tokens too
	SkipBadLines  bool           // skip (and count) lines that are not valid JSON or lack the fields
	Chat          *chat.Template // needed for the messages shape (chat.Load(modelDir))
	ChatVars      map[string]any // extra template variables, e.g. "enable_thinking": false
}

// Example is one training sample: IDs are the input tokens and Labels[t] is the token that
// position t must predict, or Ignore (-100). len(IDs) == len(Labels) ≤ SeqLen.
type Example struct {
	IDs    []int
	Labels []int
}

// Stats reports what reading a file did.
type Stats struct {
	Path      string
	Format    Format
	Lines     int // non-empty lines read
	Samples   int // Examples returned
	Skipped   int // bad lines skipped (Options.SkipBadLines)
	Truncated int // samples cut to SeqLen positions
	NoLoss    int // samples dropped because no position had a label (e.g. empty completion)
	Positions int // total positions of the Examples
	Trained   int // positions with a label
}

// line is one decoded JSONL record; which fields are set depends on the shape.
type line struct {
	Text       *string        `json:"text"`
	Prompt     *string        `json:"prompt"`
	Completion *string        `json:"completion"`
	Messages   []chat.Message `json:"messages"`
}

// ReadFile reads a JSONL data file into Examples with tok. Errors name the file and line.
func ReadFile(path string, tok tokenizer.Encoder, opt Options) ([]Example, Stats, error) {
	st := Stats{Path: path, Format: opt.Format}
	if st.Format == "" {
		st.Format = FormatAuto
	}
	switch st.Format {
	case FormatAuto, FormatText, FormatPromptCompletion, FormatMessages:
	default:
		return nil, st, fmt.Errorf("data format %q is not one of auto, text, prompt_completion, messages", opt.Format)
	}
	if opt.SeqLen < 1 {
		return nil, st, fmt.Errorf("data: seq_len must be at least 1, got %d", opt.SeqLen)
	}
	f, err := os.Open(path)
	if err != nil {
		return nil, st, fmt.Errorf("data: %v", err)
	}
	defer f.Close()

	var out []Example
	sc := bufio.NewScanner(f)
	sc.Buffer(make([]byte, 1<<16), 1<<30)
	for n := 1; sc.Scan(); n++ {
		raw := strings.TrimSpace(sc.Text())
		if raw == "" {
			continue
		}
		st.Lines++
		ids, train, err := parseLine(raw, &st.Format, tok, opt)
		if err != nil {
			if opt.SkipBadLines {
				st.Skipped++
				continue
			}
			return nil, st, fmt.Errorf("%s:%d: %v (fix the line, or set data.skip_bad_lines: true to skip such lines)", path, n, err)
		}
		ex, cut := makeExample(ids, train, opt.SeqLen)
		if cut {
			st.Truncated++
		}
		trained := 0
		for _, l := range ex.Labels {
			if l != Ignore {
				trained++
			}
		}
		if trained == 0 {
			st.NoLoss++
			continue
		}
		st.Positions += len(ex.IDs)
		st.Trained += trained
		out = append(out, ex)
	}
	if err := sc.Err(); err != nil {
		return nil, st, fmt.Errorf("%s: %v", path, err)
	}
	st.Samples = len(out)
	if len(out) == 0 {
		return nil, st, fmt.Errorf("%s: no usable samples (%d lines, %d skipped as bad, %d without any trained token); check the file and data.format", path, st.Lines, st.Skipped, st.NoLoss)
	}
	return out, st, nil
}

// parseLine decodes one record, fixing *format on the first valid line when it is auto, and
// returns its tokens and which of them are trained.
func parseLine(raw string, format *Format, tok tokenizer.Encoder, opt Options) (ids []int, train []bool, err error) {
	var rec line
	if err := json.Unmarshal([]byte(raw), &rec); err != nil {
		return nil, nil, fmt.Errorf("not a valid JSON object with string fields: %v", err)
	}
	if *format == FormatAuto {
		switch {
		case rec.Messages != nil:
			*format = FormatMessages
		case rec.Prompt != nil || rec.Completion != nil:
			*format = FormatPromptCompletion
		case rec.Text != nil:
			*format = FormatText
		default:
			return nil, nil, fmt.Errorf(`the record has none of "text", "prompt"/"completion", "messages"`)
		}
	}
	add := func(part []int, trained bool) {
		ids = append(ids, part...)
		for range part {
			train = append(train, trained)
		}
	}
	eos := func() {
		if e := tok.EOS(); e >= 0 {
			add([]int{e}, true)
		}
	}
	switch *format {
	case FormatText:
		if rec.Text == nil {
			return nil, nil, fmt.Errorf(`the record lacks the "text" field of the text format`)
		}
		add(tok.Encode(*rec.Text, true), true)
		eos()
	case FormatPromptCompletion:
		if rec.Prompt == nil || rec.Completion == nil {
			return nil, nil, fmt.Errorf(`the record lacks "prompt" or "completion" (prompt_completion format)`)
		}
		add(tok.Encode(*rec.Prompt, true), opt.TrainOnPrompt)
		add(tok.Encode(*rec.Completion, false), true)
		eos()
	case FormatMessages:
		if len(rec.Messages) == 0 {
			return nil, nil, fmt.Errorf(`the record lacks a non-empty "messages" list (messages format)`)
		}
		for i, m := range rec.Messages {
			if m.Role == "" {
				return nil, nil, fmt.Errorf("message %d has no \"role\"", i)
			}
		}
		if opt.Chat == nil {
			return nil, nil, fmt.Errorf("messages need the model's chat template, and none was given")
		}
		return Conversation(opt.Chat, opt.ChatVars, tok, rec.Messages)
	}
	return ids, train, nil
}

// makeExample shifts a sample into an Example, cutting it to seqLen positions.
func makeExample(ids []int, train []bool, seqLen int) (Example, bool) {
	cut := false
	if len(ids) > seqLen+1 {
		ids, train, cut = ids[:seqLen+1], train[:seqLen+1], true
	}
	n := max(len(ids)-1, 0)
	ex := Example{IDs: make([]int, n), Labels: make([]int, n)}
	for t := range n {
		ex.IDs[t] = ids[t]
		ex.Labels[t] = Ignore
		if train[t+1] {
			ex.Labels[t] = ids[t+1]
		}
	}
	return ex, cut
}
