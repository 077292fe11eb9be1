package main

import (
	"encoding/json"
	"fmt"
	"os"
	"os/signal"
	"syscall"

	"github.com/spf13/cobra"

	"github.com/keyfleet/keyfleet/internal/durationflag"
	"github.com/keyfleet/keyfleet/simulator"
)

// yearCmd is the long-absence scenario: fleetsim year --devices 1000
// --offline 300 --offline-days 400. It exits non-zero if any device is
// bricked.
func yearCmd() *cobra.Command {
	var cfg simulator.YearConfig
	var report, jsonOut, logFile, logLevel string
	cmd := &cobra.Command{Use: "year", Short: "a fleet lives through a year of rotations while part of it is switched off; the absent devices must come back",
		Args: cobra.NoArgs,
		RunE: func(cmd *cobra.Command, _ []string) error {
			if err := checkReport(report); err != nil {
				return err
			}
			log, closeLog, err := openLog(logFile, logLevel)
			if err != nil {
				return err
			}
			defer closeLog()
			cfg.Logger = log
			cfg.Progress = cmd.ErrOrStderr()
			ctx, stop := signal.NotifyContext(cmd.Context(), os.Interrupt, syscall.SIGTERM)
			defer stop()
			rep, err := simulator.RunYear(ctx, cfg)
			if err != nil {
				return err
			}
			b, err := json.MarshalIndent(rep, "", "  ")
			if err != nil {
				return err
			}
			if jsonOut != "" {
				if err := os.WriteFile(jsonOut, append(b, '\n'), 0o644); err != nil {
					return err
				}
			}
			switch report {
			case "json":
				fmt.Println(string(b))
			case "table":
				if err := rep.WriteTable(os.Stdout); err != nil {
					return err
				}
			}
			if rep.Bricked > 0 {
				return fmt.Errorf("%d of %d devices bricked", rep.Bricked, rep.Devices)
			}
			return nil
		}}
	f := cmd.Flags()
	f.IntVar(&cfg.Devices, "devices", 1000, "devices in the fleet")
	f.IntVar(&cfg.Offline, "offline", 0, "devices switched off (default 30%)")
	f.IntVar(&cfg.OfflineDays, "offline-days", 400, "simulated days they stay away")
	f.IntVar(&cfg.IdentityRotations, "identity-rotations", 4, "identity rotations of the whole fleet meanwhile")
	f.IntVar(&cfg.AnchorRotations, "anchor-rotations", 2, "trust-anchor rotations (CA root and update key)")
	f.IntVar(&cfg.DataKeyVersions, "data-key-versions", 3, "new data-key versions")
	f.IntVar(&cfg.FirmwareKeyRotations, "firmware-key-rotations", 1, "firmware-key rotations, each followed by a release")
	durationflag.Var(f, &cfg.DayDelay, "day-delay", 0, "real time per quiet simulated day (default 10ms)")
	durationflag.Var(f, &cfg.Timeout, "timeout", 0, "bound on each wait for convergence (default 2m)")
	f.StringVar(&cfg.Dir, "dir", "", "work directory (default: a temporary one)")
	f.StringVar(&report, "report", "table", "json or table")
	f.StringVar(&jsonOut, "json-out", "", "also write the JSON report to this file")
	f.StringVar(&logFile, "log-file", "", "write fleetd's and the agents' logs here")
	f.StringVar(&logLevel, "log-level", "info", "log level for --log-file")
	return cmd
}
