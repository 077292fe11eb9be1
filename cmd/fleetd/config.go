package main

import (
	"errors"
	"fmt"
	"slices"
	"sort"
	"strconv"
	"strings"

	"github.com/spf13/cobra"
	"github.com/spf13/pflag"

	"github.com/keyfleet/keyfleet/internal/flagfile"
	"github.com/keyfleet/keyfleet/server"
	"github.com/keyfleet/keyfleet/server/custody"
	"github.com/keyfleet/keyfleet/server/policy"
)

// envPrefix starts the environment variable of every flag:
// KEYFLEET_MQTT_LISTEN for --mqtt-listen. KEYFLEET_HSM_PIN and
// KEYFLEET_HSM_SO_PIN, the PINs themselves, are no flag's.
const envPrefix = "KEYFLEET_"

// notKeys are flags that are no key of the file: the file's own name
// (which KEYFLEET_CONFIG may give) and cobra's.
var notKeys = []string{"config", "help", "version"}

// defaultsHeader opens `fleetd config defaults`.
const defaultsHeader = `fleetd configuration file: fleetd init --config FILE, fleetd run --config FILE.
Every key is the flag of the same name, at its default here; fleetd init and
fleetd run each take the keys they know and pass over the other's.
Precedence, per key: command-line flag > environment (KEYFLEET_ and the key in
capitals, "-" as "_": KEYFLEET_MQTT_LISTEN) > this file > default.
The token PIN is never a key: pin-file names a file holding it, or set
KEYFLEET_HSM_PIN. Check a file with: fleetd config check FILE`

func roleNames() []string {
	var names []string
	for _, r := range custody.Roles() {
		names = append(names, r.Name)
	}
	return names
}

// sections are the flag sets of fleetd's commands, in the order a
// defaults file lists them.
func sections(root *cobra.Command) []flagfile.Section {
	out := []flagfile.Section{{Title: "Both commands: data, token, keys, logs", Flags: root.PersistentFlags()}}
	for _, c := range root.Commands() {
		if c.Name() == "init" || c.Name() == "run" {
			out = append(out, flagfile.Section{Title: "fleetd " + c.Name() + " only", Flags: c.LocalNonPersistentFlags()})
		}
	}
	return out
}

// knownKeys are the names of every flag of every fleetd command: a file
// shared by init and run may hold any of them.
func knownKeys(root *cobra.Command) []string {
	var keys []string
	for _, s := range sections(root) {
		s.Flags.VisitAll(func(fl *pflag.Flag) {
			if !slices.Contains(notKeys, fl.Name) && !slices.Contains(keys, fl.Name) {
				keys = append(keys, fl.Name)
			}
		})
	}
	return keys
}

// load sets the flags the command line left alone from the environment
// and the --config file (or KEYFLEET_CONFIG), then builds the config
// (flags.config). Every key of the file and every KEYFLEET_ variable of a
// flag is checked, those of the other command too, so that fleetd init
// and fleetd run refuse the same files; all problems are reported at once.
// Nothing is opened or started before it returns.
func (f *flags) load(cmd *cobra.Command) (server.Config, error) {
	path := f.configFile
	if path == "" {
		path = f.getenv(envPrefix + "CONFIG")
	}
	var file *flagfile.File
	if path != "" {
		var err error
		if file, err = flagfile.Load(path, knownKeys(cmd.Root())); file == nil {
			return server.Config{}, err
		} else if verr := validate(file, f.getenv); err != nil || verr != nil {
			return server.Config{}, errors.Join(err, verr)
		}
	} else if err := validate(nil, f.getenv); err != nil {
		return server.Config{}, err
	}
	var err error
	if f.origins, err = flagfile.Apply(cmd.Flags(), file, envPrefix, f.getenv, notKeys...); err != nil {
		return server.Config{}, err
	}
	return f.config()
}

// validate applies file and the environment to a fresh set of every
// fleetd flag, init's and run's, and reports what their flags refuse.
func validate(file *flagfile.File, getenv func(string) string) error {
	_, _, err := validated(file, getenv)
	return err
}

// validated is validate, returning the flags it filled (config check).
func validated(file *flagfile.File, getenv func(string) string) (*cobra.Command, *flags, error) {
	tree, f := build()
	fs := pflag.NewFlagSet("fleetd", pflag.ContinueOnError)
	for _, s := range sections(tree) {
		fs.AddFlagSet(s.Flags)
	}
	_, err := flagfile.Apply(fs, file, envPrefix, getenv, notKeys...)
	return tree, f, err
}

// configCmd is `fleetd config check FILE` and `fleetd config defaults`.
func configCmd(root *cobra.Command) *cobra.Command {
	cmd := &cobra.Command{Use: "config", Short: "check or print a configuration file"}
	check := &cobra.Command{Use: "check FILE", Short: "check a configuration file: every error as FILE:LINE: KEY: message", Args: cobra.ExactArgs(1),
		RunE: func(cmd *cobra.Command, args []string) error {
			if err := checkFile(args[0]); err != nil {
				fmt.Fprintln(cmd.ErrOrStderr(), byLine(err))
				return errors.New("config check: " + args[0] + " has errors")
			}
			fmt.Fprintln(cmd.OutOrStdout(), args[0]+": ok")
			return nil
		}}
	defaults := &cobra.Command{Use: "defaults", Short: "print a complete configuration file with every key at its default", Args: cobra.NoArgs,
		RunE: func(cmd *cobra.Command, _ []string) error {
			return flagfile.WriteDefaults(cmd.OutOrStdout(), defaultsHeader, sections(root), notKeys...)
		}}
	cmd.AddCommand(check, defaults)
	return cmd
}

// checkFile reads path as fleetd init and fleetd run would, without the
// command line or the environment: unknown keys, values their flags
// refuse, and what fleetd checks before it starts anything (log settings,
// the PIN file, key URIs, the policy file). Every problem is reported.
// A PIN is never in the file: where the file names no pin-file, the check
// assumes one in KEYFLEET_HSM_PIN.
func checkFile(path string) error {
	file, err := flagfile.Load(path, knownKeys(root()))
	if file == nil {
		return err
	}
	_, f, verr := validated(file, func(string) string { return "" })
	if err := errors.Join(err, verr); err != nil {
		return err
	}
	f.origins = flagfile.Origins{}
	for _, k := range file.Keys() {
		f.origins[k] = file.Where(k)
	}
	f.getenv = func(name string) string {
		if name == "KEYFLEET_HSM_PIN" {
			return "assumed-for-check"
		}
		return ""
	}
	var errs []error
	_, err = f.config()
	errs = append(errs, err)
	if f.policy != "" {
		_, err := policy.LoadFile(f.policy)
		errs = append(errs, f.origins.Wrap("policy", err))
	}
	return errors.Join(errs...)
}

// byLine orders a check's messages, one a line, by their FILE:LINE.
func byLine(err error) string {
	lines := strings.Split(err.Error(), "\n")
	num := func(s string) int {
		parts := strings.SplitN(s, ":", 3)
		if len(parts) < 3 {
			return 0
		}
		n, _ := strconv.Atoi(parts[1])
		return n
	}
	sort.SliceStable(lines, func(i, j int) bool { return num(lines[i]) < num(lines[j]) })
	return strings.Join(lines, "\n")
}
