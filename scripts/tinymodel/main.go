// Command tinymodel makes loractl's own tiny base model and its data sets, so the
// quickstart runs on a fresh clone with no third-party weights or texts:
//
//	go run ./scripts/tinymodel init -out DIR [-dim 64 -layers 2 -heads 4 -kv-heads 2 -hidden 172 -seq 64 -seed 1]
//	go run ./scripts/tinymodel data -out DIR [-n 20000 -ft-n 2000 -eval-n 200 -tasks sub -seed 1]
//
// init writes a randomly initialised Llama (config.json, model.safetensors,
// generation_config.json) with the character tokenizer of internal/synth (tokenizer.json,
// tokenizer_config.json). data writes the synthetic pretraining and fine-tuning JSONL files.
// README.md in this folder gives the full recipe of models/tiny-arith.
package main

import (
	"errors"
	"flag"
	"fmt"
	"io"
	"os"
)

func main() { os.Exit(run(os.Args[1:], os.Stdout, os.Stderr)) }

const usage = `usage:
  tinymodel init -out DIR [flags]   write a random-init tiny Llama with the character tokenizer
  tinymodel data -out DIR [flags]   write the synthetic pretraining and fine-tuning JSONL files
  tinymodel score [-model DIR] [-adapter DIR] [-data FILE]   exact-answer accuracy of greedy answers
Run "tinymodel init -h" or "tinymodel data -h" for the flags.
`

// run executes one subcommand and returns the exit code: 0 done, 1 failed, 2 bad usage.
func run(args []string, stdout, stderr io.Writer) int {
	if len(args) == 0 {
		fmt.Fprint(stderr, usage)
		return 2
	}
	var err error
	switch args[0] {
	case "init":
		err = runInit(args[1:], stdout, stderr)
	case "data":
		err = runData(args[1:], stdout, stderr)
	case "score":
		err = runScore(args[1:], stdout, stderr)
	case "-h", "-help", "--help", "help":
		fmt.Fprint(stdout, usage)
		return 0
	default:
		fmt.Fprintf(stderr, "tinymodel: unknown command %q\n%s", args[0], usage)
		return 2
	}
	var ue usageError
	switch {
	case err == nil:
		return 0
	case errors.Is(err, flag.ErrHelp):
		return 0
	case errors.As(err, &ue):
		fmt.Fprintf(stderr, "tinymodel %s: %v\n", args[0], err)
		return 2
	}
	fmt.Fprintf(stderr, "tinymodel %s: %v\n", args[0], err)
	return 1
}

// usageError is a bad flag value: exit code 2.
type usageError struct{ msg string }

func (e usageError) Error() string { return e.msg }

func usagef(format string, args ...any) error { return usageError{fmt.Sprintf(format, args...)} }

// parseFlags parses args into fs; a parse error (already printed by fs) is a usage error.
func parseFlags(fs *flag.FlagSet, args []string) error {
	if err := fs.Parse(args); err != nil {
		if errors.Is(err, flag.ErrHelp) {
			return err
		}
		return usageError{err.Error()}
	}
	if fs.NArg() > 0 {
		return usagef("unexpected argument %q; all options are flags", fs.Arg(0))
	}
	return nil
}
