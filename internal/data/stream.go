package data

import (
	"bufio"
	"encoding/json"
	"fmt"
	"io"
	"os"
	"strings"

	"github.com/loractl/loractl/internal/tokenizer"
)

// Reader reads a JSONL data file one record at a time, for evaluation over files of any size.
// Each record becomes an Example by exactly the code ReadFile uses (shape detection,
// tokenisation, chat templating, loss mask, truncation to Options.SeqLen), so a Reader and
// ReadFile see the same Examples; only one line is held in memory at a time.
//
// Unlike ReadFile, a Reader does not drop records without any trained position: it returns
// them with Record.Trained == 0 and leaves the decision to the caller.
type Reader struct {
	f     *os.File
	sc    *bufio.Scanner
	tok   tokenizer.Encoder
	opt   Options
	stats Stats
	line  int   // lines read so far (the number of the last one)
	bytes int64 // bytes of the file consumed so far
}

// Record is one record of a Reader: its Example and where it came from.
type Record struct {
	Example
	Line      int  // 1-based line number in the file
	Truncated bool // the sample was cut to SeqLen positions
	Trained   int  // positions with a label (0: the record has nothing to score)
	// Prompt and Completion are the raw fields of a prompt/completion record (HasCompletion).
	Prompt, Completion string
	HasCompletion      bool
}

// OpenReader opens path for reading records with tok and opt (see ReadFile for the rules).
func OpenReader(path string, tok tokenizer.Encoder, opt Options) (*Reader, error) {
	st := Stats{Path: path, Format: opt.Format}
	if st.Format == "" {
		st.Format = FormatAuto
	}
	switch st.Format {
	case FormatAuto, FormatText, FormatPromptCompletion, FormatMessages:
	default:
		return nil, fmt.Errorf("data format %q is not one of auto, text, prompt_completion, messages", opt.Format)
	}
	if opt.SeqLen < 1 {
		return nil, fmt.Errorf("data: seq_len must be at least 1, got %d", opt.SeqLen)
	}
	f, err := os.Open(path)
	if err != nil {
		return nil, fmt.Errorf("data: %v", err)
	}
	sc := bufio.NewScanner(f)
	sc.Buffer(make([]byte, 1<<16), 1<<30)
	return &Reader{f: f, sc: sc, tok: tok, opt: opt, stats: st}, nil
}

// Next returns the next non-empty record, or io.EOF after the last one. A line that is not a
// valid record is an error naming the file and line, unless Options.SkipBadLines (then it is
// counted in Stats.Skipped). Stats.Samples counts the records returned.
func (r *Reader) Next() (Record, error) {
	for r.sc.Scan() {
		r.line++
		r.bytes += int64(len(r.sc.Bytes())) + 1
		raw := strings.TrimSpace(r.sc.Text())
		if raw == "" {
			continue
		}
		r.stats.Lines++
		ids, train, err := parseLine(raw, &r.stats.Format, r.tok, r.opt)
		if err != nil {
			if r.opt.SkipBadLines {
				r.stats.Skipped++
				continue
			}
			return Record{}, fmt.Errorf("%s:%d: %v", r.stats.Path, r.line, err)
		}
		ex, cut := makeExample(ids, train, r.opt.SeqLen)
		rec := Record{Example: ex, Line: r.line, Truncated: cut}
		for _, l := range ex.Labels {
			if l != Ignore {
				rec.Trained++
			}
		}
		if r.stats.Format == FormatPromptCompletion {
			var pc struct {
				Prompt     string `json:"prompt"`
				Completion string `json:"completion"`
			}
			if json.Unmarshal([]byte(raw), &pc) == nil { // parseLine accepted the line already
				rec.Prompt, rec.Completion, rec.HasCompletion = pc.Prompt, pc.Completion, true
			}
		}
		if cut {
			r.stats.Truncated++
		}
		if rec.Trained == 0 {
			r.stats.NoLoss++
		}
		r.stats.Samples++
		r.stats.Positions += len(ex.IDs)
		r.stats.Trained += rec.Trained
		return rec, nil
	}
	if err := r.sc.Err(); err != nil {
		return Record{}, fmt.Errorf("%s: %v", r.stats.Path, err)
	}
	return Record{}, io.EOF
}

// Stats returns the counts so far; Format is the detected shape once a record was read.
func (r *Reader) Stats() Stats { return r.stats }

// Offset returns the number of bytes of the file consumed so far (for progress reports).
func (r *Reader) Offset() int64 { return r.bytes }

// Close closes the file.
func (r *Reader) Close() error { return r.f.Close() }
