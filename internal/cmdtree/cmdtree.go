// Package cmdtree gives keyfleet's cobra command trees the behaviour a new
// user expects from every binary: --version from the build information, a
// mistyped subcommand ("fleetctl device shw") refused with an error naming
// it instead of a help page and exit status 0, and errors printed once by
// main rather than with a usage dump.
package cmdtree

import (
	"fmt"
	"strings"

	"github.com/spf13/cobra"

	"github.com/keyfleet/keyfleet/internal/buildinfo"
)

// Setup prepares root and every command below it; call it once the tree
// is complete.
func Setup(root *cobra.Command) {
	// cobra prints "NAME version VERSION". A version template would do
	// without the word, but a template links text/template's method
	// lookup, which keeps every exported method in the binary: about
	// 1.2 MB more in the device agent.
	root.Version = strings.TrimPrefix(buildinfo.String(root.Name()), root.Name()+" ")
	root.SilenceUsage, root.SilenceErrors = true, true
	// cobra adds these at Execute; added now, "completion bsh" is refused
	// like any other mistyped word.
	root.InitDefaultHelpCmd()
	root.InitDefaultCompletionCmd()
	walk(root)
}

func walk(c *cobra.Command) {
	for _, sub := range c.Commands() {
		walk(sub)
	}
	if c.HasSubCommands() && !c.Runnable() {
		c.Args = cobra.ArbitraryArgs
		c.RunE = group
	}
}

// group runs for a command that only holds subcommands: without
// arguments it shows the help, with any it refuses the first as unknown.
// (cobra refuses an unknown word only at the root.)
func group(cmd *cobra.Command, args []string) error {
	if len(args) == 0 {
		return cmd.Help()
	}
	msg := fmt.Sprintf("unknown command %q for %q", args[0], cmd.CommandPath())
	if cmd.SuggestionsMinimumDistance <= 0 {
		cmd.SuggestionsMinimumDistance = 2 // cobra's default at the root
	}
	if s := cmd.SuggestionsFor(args[0]); len(s) > 0 {
		msg += "; did you mean " + strings.Join(s, " or ") + "?"
	}
	return fmt.Errorf("%s (see %s --help)", msg, cmd.CommandPath())
}
