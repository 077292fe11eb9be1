// Command fleetctl is the keyfleet operator CLI. It talks to fleetd's admin
// API over mutual TLS with an operator credential (the directory fleetd init
// writes: admin.pem, admin.key, ca.pem).
//
//	fleetctl devices [--selector|-l SELECTOR]
//	fleetctl device show ID
//	fleetctl device add ID --out DIR [--label KEY=VALUE]... [--model M] [--key-store pkcs11:URI]
//	fleetctl device label ID KEY=VALUE... KEY-...
//	fleetctl rotate ID... | --all [--wait [--timeout 10m]]
//	fleetctl device revoke ID --reason TEXT
//	fleetctl campaign create --kind identity|data-key|firmware|anchors [--release N] [--roles ca,update,firmware] --select S --stages 1%,10%,100% --max-failure 2% --min-reached N --rate 1000/min --device-timeout D [--watch]
//	fleetctl campaign list | show ID | watch ID | pause ID | resume ID | abort ID | rollback ID
//	fleetctl policy validate FILE | diff FILE | apply FILE | show
//	fleetctl status
//	fleetctl audit list [--since T] [--until T] [--device ID] [--kind K] [--limit N]
//	fleetctl audit export [--out FILE]
//	fleetctl audit verify
//	fleetctl anchors show | rotate [--keys ca,update,firmware]
//	fleetctl datakeys rotate
//	fleetctl escrow recover DEVICE VERSION --out FILE
//	fleetctl firmware publish --image FILE --version N --uri URI --vendor UUID --class UUID [--staged]
//	fleetctl broker cert --san HOST... --out DIR
//	fleetctl broker config mosquitto [--listen ADDR] [--cafile F] [--certfile F] [--keyfile F] [--write-dynsec F]
//
// Output is a table for people, or JSON with -o json for scripts.
//
// Where fleetd is, and with which credential, comes from (first found):
// the --admin and --credential flags; KEYFLEET_ADMIN and
// KEYFLEET_CREDENTIAL; ./var/fleetd/admin, the credential make run's fleet
// writes, and the admin address fleetd run records in the credential
// directory (file "address"); else 127.0.0.1:8443.
package main

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"io/fs"
	"os"
	"path/filepath"
	"sort"
	"strings"
	"text/tabwriter"
	"time"

	"github.com/spf13/cobra"

	"github.com/keyfleet/keyfleet/adminapi"
	"github.com/keyfleet/keyfleet/adminapi/client"
	"github.com/keyfleet/keyfleet/device/hwkeys"
	"github.com/keyfleet/keyfleet/internal/cmdtree"
	"github.com/keyfleet/keyfleet/internal/durationflag"
	"github.com/keyfleet/keyfleet/internal/provision"
)

func main() { os.Exit(run(os.Args[1:], os.Stdout, os.Stderr)) }

// run executes fleetctl with args and returns its exit status (exitHelp):
// 0, or after printing the error once 1, or rotate --wait's outcome.
func run(args []string, stdout, stderr io.Writer) int {
	root := newRoot(stdout)
	root.SetArgs(args)
	root.SetOut(stdout)
	root.SetErr(stderr)
	err := root.Execute()
	if err != nil {
		fmt.Fprintln(stderr, "fleetctl:", err)
	}
	return exitStatus(err)
}

// Defaults of the connection, in the order fleetctl looks for them.
const (
	// localCredential is where make run's fleetd keeps its operator
	// credential, relative to the repository root.
	localCredential = "var/fleetd/admin"
	// addressFile, in a credential directory, holds the admin address
	// fleetd run listens on (fleetd writes it at start).
	addressFile  = "address"
	defaultAdmin = "127.0.0.1:8443"
)

const lookupHelp = `Where fleetd is, and with which operator credential, comes from the
first of:
  1. --admin ADDR and --credential DIR;
  2. the environment: KEYFLEET_ADMIN and KEYFLEET_CREDENTIAL;
  3. the credential directory ./var/fleetd/admin, as make run leaves it
     (run fleetctl from the repository root in a second shell);
  4. for the address: the file "address" in the credential directory,
     which fleetd run writes; else 127.0.0.1:8443.`

type app struct {
	out        io.Writer
	addr, cred string
	output     string
}

func (a *app) client() (*client.Client, error) {
	tc, err := client.LoadCredential(a.credential())
	if errors.Is(err, fs.ErrNotExist) && a.cred == "" && os.Getenv("KEYFLEET_CREDENTIAL") == "" {
		return nil, fmt.Errorf("%w (run fleetctl where make run runs, or give --credential or KEYFLEET_CREDENTIAL; see fleetctl --help)", err)
	}
	if err != nil {
		return nil, err
	}
	return client.New(a.address(), tc), nil
}

// credential is the operator credential directory, looked up as
// lookupHelp says.
func (a *app) credential() string {
	if a.cred != "" {
		return a.cred
	}
	if v := os.Getenv("KEYFLEET_CREDENTIAL"); v != "" {
		return v
	}
	return localCredential
}

// address is fleetd's admin API address, looked up as lookupHelp says.
func (a *app) address() string {
	if a.addr != "" {
		return a.addr
	}
	if v := os.Getenv("KEYFLEET_ADMIN"); v != "" {
		return v
	}
	if b, err := os.ReadFile(filepath.Join(a.credential(), addressFile)); err == nil {
		if v := strings.TrimSpace(string(b)); v != "" {
			return v
		}
	}
	return defaultAdmin
}

func (a *app) print(v any, table func(w *tabwriter.Writer)) error {
	switch a.output {
	case "json":
		enc := json.NewEncoder(a.out)
		enc.SetIndent("", "  ")
		return enc.Encode(v)
	case "table", "":
		w := tabwriter.NewWriter(a.out, 0, 4, 2, ' ', 0)
		table(w)
		return w.Flush()
	}
	return fmt.Errorf("output format %q: want table or json", a.output)
}

func newRoot(out io.Writer) *cobra.Command {
	a := &app{out: out}
	root := &cobra.Command{Use: "fleetctl", Short: "keyfleet operator CLI", Long: "keyfleet operator CLI.\n\n" + lookupHelp + "\n\n" + exitHelp}
	pf := root.PersistentFlags()
	pf.StringVar(&a.addr, "admin", "", "fleetd admin API address (default: KEYFLEET_ADMIN, the credential's address file, 127.0.0.1:8443)")
	pf.StringVar(&a.cred, "credential", "", "operator credential directory (default: KEYFLEET_CREDENTIAL, ./var/fleetd/admin)")
	pf.StringVarP(&a.output, "output", "o", "table", "table or json")

	var selector string
	devices := &cobra.Command{Use: "devices", Short: "list devices, or those a label selector selects", Args: cobra.NoArgs,
		RunE: func(cmd *cobra.Command, _ []string) error {
			c, err := a.client()
			if err != nil {
				return err
			}
			ds, err := c.SelectDevices(cmd.Context(), selector)
			if err != nil {
				return err
			}
			return a.print(ds, func(w *tabwriter.Writer) {
				fmt.Fprintln(w, "DEVICE\tACTIVE\tDESIRED\tREPORTED\tLATEST STATE\tREVOKED\tMODEL\tLABELS")
				for _, d := range ds {
					fmt.Fprintf(w, "%s\t%d\t%d\t%d\t%s\t%v\t%s\t%s\n", d.ID, d.Active, d.Desired, d.Reported, d.State, d.Revoked,
						orDash(d.Model), formatLabels(d.Labels))
				}
			})
		}}
	devices.Flags().StringVarP(&selector, "selector", "l", "", "Kubernetes label selector, e.g. 'model=x,site in (a,b),!beta' (the model is the key model)")

	deviceCmd := &cobra.Command{Use: "device", Short: "one device"}
	show := &cobra.Command{Use: "show ID", Short: "show a device: every slot, labels, model, last seen, connection", Args: cobra.ExactArgs(1),
		RunE: func(cmd *cobra.Command, args []string) error {
			c, err := a.client()
			if err != nil {
				return err
			}
			d, err := c.Device(cmd.Context(), args[0])
			if err != nil {
				return err
			}
			return a.print(d, func(w *tabwriter.Writer) { showDevice(w, d) })
		}}
	var outDir, broker, model, keyStore string
	var labelFlags []string
	add := &cobra.Command{Use: "add ID", Short: "register a device and write its first credential to --out", Args: cobra.ExactArgs(1),
		RunE: func(cmd *cobra.Command, args []string) error {
			if outDir == "" {
				return errors.New("--out is required: the device's keystore directory")
			}
			labels, err := parseLabels(labelFlags)
			if err != nil {
				return err
			}
			c, err := a.client()
			if err != nil {
				return err
			}
			// The key is made here, on the provisioning station, and goes
			// only into the device's keystore; fleetd sees the CSR. With
			// --key-store the keys are made inside the device's token and
			// the keystore holds only their references.
			inv := provision.Inventory{Labels: labels, Model: model}
			var resp adminapi.ProvisionResponse
			if keyStore != "" {
				hw, err := hwkeys.Open(keyStore)
				if err != nil {
					return err
				}
				defer hw.Close()
				resp, err = provision.InToken(cmd.Context(), c, args[0], outDir, broker, inv, hw)
				if err != nil {
					return err
				}
			} else if resp, err = provision.Labelled(cmd.Context(), c, args[0], outDir, broker, inv); err != nil {
				return err
			}
			broker = resp.Broker
			return a.print(map[string]string{"device": resp.ID, "keystore": outDir, "broker": broker}, func(w *tabwriter.Writer) {
				fmt.Fprintf(w, "device %s provisioned; keystore %s; broker %s\n", resp.ID, outDir, broker)
			})
		}}
	add.Flags().StringVar(&outDir, "out", "", "keystore directory to create for the device")
	add.Flags().StringVar(&broker, "broker", "", "broker address to record for the device (default: fleetd's)")
	add.Flags().StringArrayVar(&labelFlags, "label", nil, "KEY=VALUE label to record (repeatable; Kubernetes label syntax)")
	add.Flags().StringVar(&model, "model", "", "the device's model or class (selected as the key model)")
	add.Flags().StringVar(&keyStore, "key-store", "", "generate the device's identity and birth keys in its PKCS#11 token (TPM, secure element), as fleet-agent --key-store names it:\n"+
		"pkcs11:token=LABEL;object=PREFIX?module-path=...&pin-source=file:PATH (needs a build with cgo)")
	deviceCmd.AddCommand(show, add, a.labelCommand())

	var all, wait bool
	wo := waitOptions{interval: 500 * time.Millisecond, now: time.Now}
	rotate := &cobra.Command{Use: "rotate ID... | --all", Short: "rotate device identities",
		Long: "Rotate device identities. With --wait, follow the rotations until each has activated,\nfailed, or found its device away, or until --timeout.\n\n" + exitHelp,
		Args: cobra.ArbitraryArgs,
		RunE: func(cmd *cobra.Command, args []string) error {
			if all == (len(args) > 0) {
				return errors.New("name devices or --all, not both or neither")
			}
			c, err := a.client()
			if err != nil {
				return err
			}
			resp, err := c.Rotate(cmd.Context(), adminapi.RotateRequest{Devices: args, All: all})
			if err != nil {
				return err
			}
			if wait {
				return a.waitRotations(cmd.Context(), c, resp, cmd.ErrOrStderr(), wo)
			}
			failed := 0
			err = a.print(resp, func(w *tabwriter.Writer) {
				fmt.Fprintln(w, "DEVICE\tSLOT\tVERSION\tROTATION\tNOTE")
				for _, r := range resp.Rotations {
					note := "requested"
					switch {
					case r.Error != "":
						note, failed = "error: "+r.Error, failed+1
					case r.Existing:
						note = "already in progress"
					}
					fmt.Fprintf(w, "%s\t%s\t%d\t%s\t%s\n", r.Device, r.Slot, r.Version, r.RotationID, note)
				}
			})
			if err == nil && failed > 0 {
				err = fmt.Errorf("%d of %d rotations could not be requested", failed, len(resp.Rotations))
			}
			return err
		}}
	rotate.Flags().BoolVar(&all, "all", false, "rotate every device that is not revoked")
	rotate.Flags().BoolVar(&wait, "wait", false, "wait until every rotation has activated, failed, or found its device away; exit status by outcome")
	durationflag.Var(rotate.Flags(), &wo.timeout, "timeout", 10*time.Minute, "with --wait: give up waiting after this long (90s, 30m, 1d)")
	durationflag.Var(rotate.Flags(), &wo.awayAfter, "away-after", 15*time.Second, "with --wait: a device not connected this long in a row is away")

	status := &cobra.Command{Use: "status", Short: "fleet and server counters", Args: cobra.NoArgs,
		RunE: func(cmd *cobra.Command, _ []string) error {
			c, err := a.client()
			if err != nil {
				return err
			}
			s, err := c.Status(cmd.Context())
			if err != nil {
				return err
			}
			return a.print(s, func(w *tabwriter.Writer) {
				fmt.Fprintf(w, "devices\t%d\nbroker\t%s\nconnected clients\t%d\nrotations requested\t%d\ncertificates issued\t%d\nrotations activated\t%d\nversions retired\t%d\nHSM operations\t%d\nfleetd memory (RSS)\t%.1f MiB\nfleetd goroutines\t%d\n",
					s.Devices, s.Broker, s.ConnectedClient, s.Requested, s.Issued, s.Activated, s.Retired, s.HSMOps,
					float64(s.RSSBytes)/(1<<20), s.Goroutines)
				fmt.Fprintf(w, "anchors version\t%d\nfirmware release\t%d\nreenrolled\t%d\nrenewed after expiry\t%d\nold-key uplinks\t%d (%.2f%% of uplinks)\nold-key connects\t%d\ndata keys sent\t%d\n",
					s.AnchorsVersion, s.FirmwareVersion, s.Reenrolled, s.RenewedAfterExpiry, s.OldKeyUplinks, 100*s.OldKeyRatio,
					s.OldKeyConnects, s.DataKeysSent)
				for _, k := range sortedKeys(s.ByState) {
					fmt.Fprintf(w, "latest version %s\t%d\n", k, s.ByState[k])
				}
				for _, k := range sortedKeys(s.Rejected) {
					fmt.Fprintf(w, "rejected: %s\t%d\n", k, s.Rejected[k])
				}
				for _, k := range sortedKeys(s.BrokerDenials) {
					fmt.Fprintf(w, "broker denied: %s\t%d\n", k, s.BrokerDenials[k])
				}
			})
		}}

	audit := a.auditCommands()

	top, devSub := a.keyCommands()
	deviceCmd.AddCommand(devSub...)
	root.AddCommand(devices, deviceCmd, rotate, status, audit, a.campaignCommands(), a.policyCommands(), a.brokerCommands())
	root.AddCommand(top...)
	root.SetContext(context.Background())
	cmdtree.Setup(root)
	return root
}

func sortedKeys[V any](m map[string]V) []string {
	out := make([]string, 0, len(m))
	for k := range m {
		out = append(out, k)
	}
	sort.Strings(out)
	return out
}

func stamp(t time.Time) string {
	if t.IsZero() {
		return "-"
	}
	return t.UTC().Format(time.RFC3339)
}

func short(s string) string {
	if len(s) > 12 {
		return s[:12] + "…"
	}
	return strings.ToLower(s)
}
