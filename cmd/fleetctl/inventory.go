package main

import (
	"errors"
	"fmt"
	"maps"
	"slices"
	"strings"
	"text/tabwriter"

	"github.com/spf13/cobra"

	"github.com/keyfleet/keyfleet/adminapi"
)

// labelCommand is `fleetctl device label ID KEY=VALUE... KEY-...`: kubectl
// label's syntax for a device's labels; the key "model" is its model.
func (a *app) labelCommand() *cobra.Command {
	return &cobra.Command{Use: "label ID KEY=VALUE... KEY-...", Short: "set (KEY=VALUE) or remove (KEY-) a device's labels; the key model is its model",
		Args: cobra.MinimumNArgs(2),
		RunE: func(cmd *cobra.Command, args []string) error {
			req, err := parseLabelArgs(args[1:])
			if err != nil {
				return err
			}
			c, err := a.client()
			if err != nil {
				return err
			}
			d, err := c.Label(cmd.Context(), args[0], req)
			if err != nil {
				return err
			}
			return a.print(d, func(w *tabwriter.Writer) {
				fmt.Fprintf(w, "device\t%s\nmodel\t%s\nlabels\t%s\n", d.ID, orDash(d.Model), formatLabels(d.Labels))
			})
		}}
}

// parseLabelArgs reads kubectl label's arguments: KEY=VALUE sets (the
// value may be empty), KEY- removes. fleetd checks the keys and values.
func parseLabelArgs(args []string) (adminapi.LabelRequest, error) {
	var req adminapi.LabelRequest
	seen := map[string]bool{}
	for _, arg := range args {
		var key string
		if k, v, ok := strings.Cut(arg, "="); ok {
			key = k
			if req.Set == nil {
				req.Set = map[string]string{}
			}
			req.Set[k] = v
		} else if k, ok := strings.CutSuffix(arg, "-"); ok {
			key = k
			req.Remove = append(req.Remove, k)
		} else {
			return adminapi.LabelRequest{}, fmt.Errorf("label %q: want KEY=VALUE to set or KEY- to remove", arg)
		}
		if key == "" {
			return adminapi.LabelRequest{}, fmt.Errorf("label %q: the key is empty", arg)
		}
		if seen[key] {
			return adminapi.LabelRequest{}, fmt.Errorf("label %s given twice", key)
		}
		seen[key] = true
	}
	return req, nil
}

// parseLabels reads --label KEY=VALUE flags.
func parseLabels(flags []string) (map[string]string, error) {
	if len(flags) == 0 {
		return nil, nil
	}
	req, err := parseLabelArgs(flags)
	if err != nil {
		return nil, err
	}
	if len(req.Remove) > 0 {
		return nil, errors.New("--label takes KEY=VALUE; there is nothing to remove at registration")
	}
	return req.Set, nil
}

// formatLabels is a device's labels as a selector would name them:
// "k=v,k2=v2", sorted; "-" for none.
func formatLabels(m map[string]string) string {
	if len(m) == 0 {
		return "-"
	}
	var b strings.Builder
	for i, k := range slices.Sorted(maps.Keys(m)) {
		if i > 0 {
			b.WriteByte(',')
		}
		b.WriteString(k + "=" + m[k])
	}
	return b.String()
}

func orDash(s string) string {
	if s == "" {
		return "-"
	}
	return s
}

// showDevice prints every slot of a device: identity versions, anchors,
// data keys, firmware, inventory and connection.
func showDevice(w *tabwriter.Writer, d adminapi.Device) {
	fmt.Fprintf(w, "device\t%s\nmodel\t%s\nlabels\t%s\nrevoked\t%v\nconnection\t%s\nlast seen\t%s\n",
		d.ID, orDash(d.Model), formatLabels(d.Labels), d.Revoked, d.Connection, stamp(d.LastSeen))
	fmt.Fprintf(w, "identity\tactive %d, desired %d, reported %d\n", d.Active, d.Desired, d.Reported)
	fmt.Fprintf(w, "anchors version\t%s\nfirmware version\t%s\n", reported(d.Anchors), reported(d.Firmware))
	if d.FirmwarePin != 0 {
		fmt.Fprintf(w, "firmware pinned to\t%d (a firmware campaign)\n", d.FirmwarePin)
	}
	var keys []string
	for _, k := range d.DataKeys {
		keys = append(keys, fmt.Sprintf("v%d %s", k.Version, k.Status))
	}
	if len(keys) == 0 {
		keys = []string{"-"}
	}
	fmt.Fprintf(w, "data keys\t%s\ndata primary reported\t%s\n\n", strings.Join(keys, ", "), reported(d.DataPrimary))
	fmt.Fprintln(w, "SLOT\tVERSION\tSTATE\tROTATION\tSERIAL\tNOT AFTER\tGRACE UNTIL")
	for _, v := range d.Versions {
		fmt.Fprintf(w, "%s\t%d\t%s\t%s\t%s\t%s\t%s\n", v.Slot, v.Version, v.State, v.RotationID, short(v.Serial),
			stamp(v.NotAfter), stamp(v.GraceUntil))
	}
}

// reported is a version the device reported, or "-" if none yet.
func reported(v uint32) string {
	if v == 0 {
		return "-"
	}
	return fmt.Sprint(v)
}
