package cmdtree

import (
	"bytes"
	"strings"
	"testing"

	"github.com/spf13/cobra"
)

func tree(ran *string) *cobra.Command {
	root := &cobra.Command{Use: "fleetctl"}
	device := &cobra.Command{Use: "device", Short: "one device"}
	show := &cobra.Command{Use: "show ID", Args: cobra.ExactArgs(1), RunE: func(_ *cobra.Command, args []string) error {
		*ran = "show " + args[0]
		return nil
	}}
	anchors := &cobra.Command{Use: "anchors"}
	rotate := &cobra.Command{Use: "rotate", RunE: func(*cobra.Command, []string) error { *ran = "rotate"; return nil }}
	device.AddCommand(show)
	anchors.AddCommand(rotate)
	root.AddCommand(device, anchors)
	Setup(root)
	return root
}

func TestSetup(t *testing.T) {
	for _, tc := range []struct {
		args    []string
		wantErr string // "" for success
		wantRan string
		wantOut string
	}{
		{[]string{"device", "shw"}, `unknown command "shw" for "fleetctl device"; did you mean show?`, "", ""},
		{[]string{"device", "frobnicate", "x"}, `unknown command "frobnicate" for "fleetctl device" (see fleetctl device --help)`, "", ""},
		{[]string{"anchors", "rotat"}, `unknown command "rotat" for "fleetctl anchors"`, "", ""},
		{[]string{"devcie"}, `unknown command "devcie" for "fleetctl"`, "", ""},
		{[]string{"completion", "bsh"}, `unknown command "bsh" for "fleetctl completion"; did you mean bash`, "", ""},
		{[]string{"device", "show", "dev-1"}, "", "show dev-1", ""},
		{[]string{"anchors", "rotate"}, "", "rotate", ""},
		{[]string{"device"}, "", "", "Usage:"},
		{[]string{"--version"}, "", "", "fleetctl "},
	} {
		t.Run(strings.Join(tc.args, " "), func(t *testing.T) {
			var ran string
			var out bytes.Buffer
			root := tree(&ran)
			root.SetOut(&out)
			root.SetErr(&out)
			root.SetArgs(tc.args)
			err := root.Execute()
			if tc.wantErr != "" {
				if err == nil || !strings.Contains(err.Error(), tc.wantErr) {
					t.Fatalf("got error %v, want one containing %q", err, tc.wantErr)
				}
				if out.Len() > 0 {
					t.Errorf("printed %q besides the error; main prints the error once", out.String())
				}
				return
			}
			if err != nil {
				t.Fatalf("got error %v", err)
			}
			if ran != tc.wantRan || !strings.Contains(out.String(), tc.wantOut) {
				t.Errorf("ran %q, printed %q; want %q and output containing %q", ran, out.String(), tc.wantRan, tc.wantOut)
			}
		})
	}
}
