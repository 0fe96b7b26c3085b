// Command loractl is a toolkit for LoRA fine-tuning of foundation models.
package main

import (
	"os"

	"github.com/loractl/loractl/internal/cli"
)

func main() { os.Exit(cli.Main(os.Args[1:], os.Stdin, os.Stdout, os.Stderr)) }
