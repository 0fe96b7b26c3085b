package cli

import (
	"bufio"
	"encoding/json"
	"fmt"
	"strconv"
	"strings"

	"github.com/loractl/loractl/internal/config"
	"github.com/loractl/loractl/internal/tokenizer"
	"github.com/spf13/cobra"
)

// tokenizeOptions are the options of `loractl tokenize`.
type tokenizeOptions struct {
	Model     string `mapstructure:"model"`
	NoSpecial bool   `mapstructure:"no-special"`
	JSON      bool   `mapstructure:"json"`
	JSONL     bool   `mapstructure:"jsonl"`
	Decode    string `mapstructure:"decode"`
	SkipSpec  bool   `mapstructure:"skip-special"`
}

func newTokenizeCmd(s *streams) *cobra.Command {
	c := &cobra.Command{
		Use:   "tokenize [TEXT]",
		Short: "Show the token ids of a text, or the text of ids",
		Long: `Tokenize encodes TEXT with a model's tokenizer (tokenizer.json, or tokenizer.model) and
prints the ids on one line. The model folder needs only the tokenizer files, not weights.

  --json      print {"ids":[...],"tokens":[...]} instead
  --decode    print the text of comma-separated ids (special tokens included, as
              transformers' decode does; --skip-special leaves them out)
  --jsonl     read one JSON string per line on stdin, write one {"ids":[...]} line per input`,
		Example: `  loractl tokenize --model ./stories260K "Once upon a time"
  loractl tokenize --model ./stories260K --decode 1,403,407,261,378
  printf '"hello"\n"world"\n' | loractl tokenize --model ./stories260K --jsonl`,
		Args: usageArgs(0, 1, "at most one TEXT (quote it)"),
		RunE: func(c *cobra.Command, args []string) error {
			var o tokenizeOptions
			if err := config.Resolve(c.Flags(), "", &o); err != nil {
				return err
			}
			return runTokenize(s, &o, args)
		},
	}
	f := c.Flags()
	f.String("model", "", "folder with tokenizer.json or tokenizer.model; default $LORACTL_TESTDATA/models/stories260K")
	f.Bool("no-special", false, "do not add special tokens (BOS/EOS) when encoding")
	f.Bool("json", false, "print JSON with ids and token strings")
	f.Bool("jsonl", false, "batch mode: one JSON string per stdin line in, one {\"ids\":[...]} per line out")
	f.String("decode", "", "comma-separated ids to decode to text")
	f.Bool("skip-special", false, "with --decode: leave special tokens (BOS, EOS, ...) out of the text")
	return c
}

func runTokenize(s *streams, o *tokenizeOptions, args []string) error {
	dir, err := resolveModelDir(o.Model)
	if err != nil {
		return err
	}
	modes := 0
	for _, on := range []bool{o.Decode != "", o.JSONL, len(args) == 1} {
		if on {
			modes++
		}
	}
	if modes != 1 {
		return usageError{fmt.Errorf("tokenize: give exactly one of TEXT, --decode IDS or --jsonl")}
	}
	tok, err := tokenizer.Open(dir)
	if err != nil {
		return err
	}
	switch {
	case o.Decode != "":
		ids, err := parseIDs(o.Decode, tok.VocabSize())
		if err != nil {
			return usageError{err}
		}
		text := tok.Decode(ids)
		if sk, ok := tok.(interface{ DecodeSkipSpecial([]int) string }); ok && o.SkipSpec {
			text = sk.DecodeSkipSpecial(ids)
		}
		_, err = fmt.Fprintln(s.Out, text)
		return err
	case o.JSONL:
		return tokenizeJSONL(s, tok, !o.NoSpecial)
	}
	ids := tok.Encode(args[0], !o.NoSpecial)
	if o.JSON {
		toks := make([]string, len(ids))
		for i, id := range ids {
			toks[i] = tokenizer.TokenString(tok, id)
		}
		b, _ := json.Marshal(struct {
			IDs    []int    `json:"ids"`
			Tokens []string `json:"tokens"`
		}{nonNil(ids), toks})
		_, err = fmt.Fprintln(s.Out, string(b))
		return err
	}
	strs := make([]string, len(ids))
	for i, id := range ids {
		strs[i] = strconv.Itoa(id)
	}
	_, err = fmt.Fprintln(s.Out, strings.Join(strs, " "))
	return err
}

// tokenizeJSONL encodes one JSON string per input line.
func tokenizeJSONL(s *streams, tok tokenizer.Encoder, addSpecial bool) error {
	sc := bufio.NewScanner(s.In)
	sc.Buffer(make([]byte, 1<<20), 1<<30)
	w := bufio.NewWriter(s.Out)
	defer w.Flush()
	line := 0
	for sc.Scan() {
		line++
		if strings.TrimSpace(sc.Text()) == "" {
			continue
		}
		var text string
		if err := json.Unmarshal(sc.Bytes(), &text); err != nil {
			return fmt.Errorf("stdin line %d: not a JSON string (%v); each line must be like \"some text\"", line, err)
		}
		b, _ := json.Marshal(struct {
			IDs []int `json:"ids"`
		}{nonNil(tok.Encode(text, addSpecial))})
		w.Write(b)
		w.WriteByte('\n')
	}
	if err := sc.Err(); err != nil {
		return fmt.Errorf("stdin: %w", err)
	}
	return w.Flush()
}

// parseIDs parses "1,2,3" (spaces allowed) and checks each id against the vocabulary size.
func parseIDs(s string, vocab int) ([]int, error) {
	var ids []int
	for _, f := range strings.FieldsFunc(s, func(r rune) bool { return r == ',' || r == ' ' }) {
		id, err := strconv.Atoi(f)
		if err != nil {
			return nil, fmt.Errorf("--decode: %q is not an integer id", f)
		}
		if id < 0 || id >= vocab {
			return nil, fmt.Errorf("--decode: id %d is outside the vocabulary [0, %d)", id, vocab)
		}
		ids = append(ids, id)
	}
	return ids, nil
}
