package main

import (
	"errors"
	"fmt"
	"io"
	"os"
	"path/filepath"
	"text/tabwriter"

	"github.com/spf13/cobra"

	"github.com/keyfleet/keyfleet/adminapi"
	"github.com/keyfleet/keyfleet/adminapi/client"
	"github.com/keyfleet/keyfleet/server/policy"
)

const policyHelp = `The policy is a YAML file kept in the operator's repository: its top-level
fields are the fleet's defaults, and rules override some of them for the
devices a label selector selects (first matching rule wins). validate
checks a file offline and names file:line and field for each error; diff
shows what applying it would change and how many devices each change
affects; apply makes it the running policy at once, as the next version,
audited (an invalid file is refused whole and nothing changes); show
prints the running policy. See docs/operations.md, "Policy file".`

// policyFile reads FILE for a policy command.
func policyFile(path string) (adminapi.PolicyRequest, error) {
	b, err := os.ReadFile(path)
	if err != nil {
		return adminapi.PolicyRequest{}, err
	}
	return adminapi.PolicyRequest{Name: filepath.Base(path), YAML: string(b)}, nil
}

// fileErrors prints every error of a refused file, one a line, and
// returns the one error fleetctl prints last.
func fileErrors(stderr io.Writer, name string, lines []string, what string) error {
	for _, l := range lines {
		fmt.Fprintln(stderr, l)
	}
	return fmt.Errorf("%s: %d error(s), %s", name, len(lines), what)
}

// refused turns an API answer refusing a file into its errors.
func refused(stderr io.Writer, name string, err error, what string) error {
	var ae *client.APIError
	if errors.As(err, &ae) && len(ae.Details) > 0 {
		return fileErrors(stderr, name, ae.Details, what)
	}
	return err
}

func (a *app) policyCommands() *cobra.Command {
	cmd := &cobra.Command{Use: "policy", Short: "policy as code: validate, diff, apply, show", Long: "Policy as code.\n\n" + policyHelp}
	validate := &cobra.Command{Use: "validate FILE", Short: "check a policy file offline (no fleetd contact)", Args: cobra.ExactArgs(1),
		RunE: func(cmd *cobra.Command, args []string) error {
			req, err := policyFile(args[0])
			if err != nil {
				return err
			}
			f, err := policy.ParseFile(req.Name, []byte(req.YAML))
			var es policy.Errors
			if errors.As(err, &es) {
				return fileErrors(cmd.ErrOrStderr(), req.Name, es.Strings(), "not valid")
			} else if err != nil {
				return err
			}
			out := struct {
				File   string `json:"file"`
				Valid  bool   `json:"valid"`
				Rules  int    `json:"rules"`
				SHA256 string `json:"sha256"`
			}{req.Name, true, len(f.Rules), f.SHA256()}
			return a.print(out, func(w *tabwriter.Writer) {
				fmt.Fprintf(w, "%s: valid, %d rule(s), sha256 %s\n", req.Name, len(f.Rules), f.SHA256())
			})
		}}
	diff := &cobra.Command{Use: "diff FILE", Short: "show what applying a policy file would change, and for how many devices", Args: cobra.ExactArgs(1),
		RunE: func(cmd *cobra.Command, args []string) error {
			req, err := policyFile(args[0])
			if err != nil {
				return err
			}
			c, err := a.client()
			if err != nil {
				return err
			}
			d, err := c.PolicyDiff(cmd.Context(), req)
			if err != nil {
				return refused(cmd.ErrOrStderr(), req.Name, err, "not valid")
			}
			return a.print(d, func(w *tabwriter.Writer) {
				fmt.Fprintf(w, "against running version %d: %d change(s), the policy of %d of %d device(s) changes\n",
					d.From, len(d.Changes), d.Devices, d.Total)
				if len(d.Changes) == 0 {
					return
				}
				fmt.Fprintln(w, "FIELD\tOLD\tNEW\tDEVICES")
				for _, ch := range d.Changes {
					fmt.Fprintf(w, "%s\t%s\t%s\t%d\n", ch.Field, orDash(ch.Old), orDash(ch.New), ch.Devices)
				}
			})
		}}
	apply := &cobra.Command{Use: "apply FILE", Short: "make a policy file the running policy, without a restart", Args: cobra.ExactArgs(1),
		RunE: func(cmd *cobra.Command, args []string) error {
			req, err := policyFile(args[0])
			if err != nil {
				return err
			}
			c, err := a.client()
			if err != nil {
				return err
			}
			p, err := c.ApplyPolicy(cmd.Context(), req)
			if err != nil {
				return refused(cmd.ErrOrStderr(), req.Name, err, "nothing applied")
			}
			return a.print(p, func(w *tabwriter.Writer) {
				fmt.Fprintf(w, "applied %s as version %d (sha256 %s, %d rule(s))\n", req.Name, p.Version, p.SHA256, p.Rules)
			})
		}}
	show := &cobra.Command{Use: "show", Short: "show the running policy", Args: cobra.NoArgs,
		RunE: func(cmd *cobra.Command, _ []string) error {
			c, err := a.client()
			if err != nil {
				return err
			}
			p, err := c.Policy(cmd.Context())
			if err != nil {
				return err
			}
			return a.print(p, func(w *tabwriter.Writer) {
				fmt.Fprintf(w, "version\t%d\n", p.Version)
				fmt.Fprintf(w, "applied\t%s by %s\n", stamp(p.AppliedAt), orDash(p.AppliedBy))
				fmt.Fprintf(w, "sha256\t%s\n", orDash(p.SHA256))
				fmt.Fprintf(w, "rules\t%d\n", p.Rules)
				fmt.Fprintf(w, "\n%s", p.YAML)
			})
		}}
	cmd.AddCommand(validate, diff, apply, show)
	return cmd
}
