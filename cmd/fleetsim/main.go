// Command fleetsim drives simulated devices (real device agents, each with
// its own MQTT/TLS connection) against fleetd and reports what happened.
//
//	fleetsim run --devices 50 --rotations 2 --report json
//
// Without --server it starts its own fleetd in-process (temporary directory,
// SoftHSM2 token, embedded broker). It exits non-zero if any rotation failed.
// With --campaign it drives fleetd's staged campaigns instead:
//
//	fleetsim run --devices 200 --campaign --stages 5%,25%,100% --away 10% --canary-fail 50% --rollback --rerun
//
// and also exits non-zero if a campaign did not do what it must.
package main

import (
	"context"
	"encoding/json"
	"fmt"
	"io"
	"log/slog"
	"os"
	"os/signal"
	"runtime/pprof"
	"syscall"
	"time"

	"github.com/spf13/cobra"

	"github.com/keyfleet/keyfleet/internal/cmdtree"
	"github.com/keyfleet/keyfleet/internal/durationflag"
	"github.com/keyfleet/keyfleet/internal/logx"
	"github.com/keyfleet/keyfleet/server"
	"github.com/keyfleet/keyfleet/simulator"
)

func main() {
	if err := root().Execute(); err != nil {
		fmt.Fprintln(os.Stderr, "fleetsim:", err)
		os.Exit(1)
	}
}

func root() *cobra.Command {
	var cfg simulator.Config
	var report, logLevel, logFile, cpuProfile string
	var workers int
	var scenario, jsonOut string
	var progress bool
	var campaignOn bool
	var killAt simulator.Percent
	mode := simulator.CampaignMode{Stages: simulator.Stages{0.01, 0.1, 1}, MaxFailure: 0.02, MinReached: 1}
	cmd := &cobra.Command{Use: "fleetsim", Short: "keyfleet fleet simulator"}
	run := &cobra.Command{Use: "run", Short: "simulate devices and rotate their identities", Args: cobra.NoArgs,
		RunE: func(cmd *cobra.Command, _ []string) error {
			// Everything the end needs is checked before the run, which
			// may take an hour.
			if err := checkReport(report); err != nil {
				return err
			}
			log, closeLog, err := openLog(logFile, logLevel)
			if err != nil {
				return err
			}
			defer closeLog()
			cfg.Logger = log
			cfg.KillAt = float64(killAt)
			if campaignOn {
				mode.Rate = simulator.RatePerMinute(cfg.Rate)
				cfg.Campaign = &mode
			}
			if scenario != "" {
				sc, err := simulator.LoadScenario(scenario)
				if err != nil {
					return err
				}
				sc.Apply(&cfg)
			}
			if workers > 0 {
				cfg.ServerMod = func(c *server.Config) { c.Workers = workers }
			}
			if progress {
				cfg.Progress = cmd.ErrOrStderr()
			}
			if cpuProfile != "" {
				f, err := os.Create(cpuProfile)
				if err != nil {
					return err
				}
				defer f.Close()
				if err := pprof.StartCPUProfile(f); err != nil {
					return err
				}
				defer pprof.StopCPUProfile()
			}
			ctx, stop := signal.NotifyContext(context.Background(), os.Interrupt, syscall.SIGTERM)
			defer stop()
			rep, err := simulator.Run(ctx, cfg)
			if err != nil {
				return err
			}
			if jsonOut != "" {
				b, err := json.MarshalIndent(rep, "", "  ")
				if err != nil {
					return err
				}
				if err := os.WriteFile(jsonOut, append(b, '\n'), 0o644); err != nil {
					return err
				}
			}
			switch report {
			case "json":
				enc := json.NewEncoder(os.Stdout)
				enc.SetIndent("", "  ")
				if err := enc.Encode(rep); err != nil {
					return err
				}
			case "table":
				if err := rep.WriteTable(os.Stdout); err != nil {
					return err
				}
			}
			if rep.RotationsFailed > 0 {
				return fmt.Errorf("%d rotations failed", rep.RotationsFailed)
			}
			if rep.Campaign != nil && len(rep.Campaign.Problems) > 0 {
				return fmt.Errorf("campaign: %d expectations not met, first: %s", len(rep.Campaign.Problems), rep.Campaign.Problems[0])
			}
			return nil
		}}
	f := run.Flags()
	f.IntVar(&cfg.Devices, "devices", 10, "number of devices")
	f.IntVar(&cfg.Rotations, "rotations", 1, "identity rotations per device")
	f.StringVar(&cfg.Server, "server", "", "admin API address of a running fleetd, or of every node of a cluster, comma-separated: requests go to the first that answers (default: start one in-process)")
	f.StringVar(&cfg.Credential, "credential", "var/fleetd/admin", "operator credential directory for --server")
	f.StringVar(&cfg.Dir, "dir", "", "work directory for the in-process fleetd (default: a temporary one, removed at the end)")
	f.StringVar(&cfg.DeviceDir, "device-dir", "", "directory for the simulated devices' keystores (default: a temporary one in /dev/shm, else under --dir)")
	durationflag.Var(f, &cfg.RoundTimeout, "round-timeout", 0, "time allowed per rotation round (default: 2m + 20ms per device)")
	f.StringVar(&report, "report", "table", "json or table")
	f.StringVar(&jsonOut, "json-out", "", "also write the JSON report to this file")
	f.BoolVar(&progress, "progress", true, "show a progress bar on stderr")
	f.StringVar(&logFile, "log-file", "", "write fleetd and agent logs here")
	f.StringVar(&logLevel, "log-level", "info", "log level for --log-file")
	durationflag.Var(f, &cfg.Baseline, "baseline", 2*time.Second, "measure the raw HSM sign and certificate rates this long first, for ratios (0: skip)")
	durationflag.Var(f, &cfg.Soak, "soak", 0, "keep every device connected this long first, some reconnecting, and sample fleetd's memory and goroutines")
	f.Float64Var(&cfg.SoakChurn, "soak-churn", 0.05, "fraction of devices reconnecting per minute during --soak")
	f.IntVar(&cfg.Fleet, "fleet", 0, "fleet model: this many devices that wake, converge and sleep, at most --max-connected at once")
	f.IntVar(&cfg.MaxConnected, "max-connected", 1000, "fleet model: devices awake (connected) at once")
	f.Float64Var(&cfg.Rate, "rate", 0, "offer rotations at this many per second (default: every device at once)")
	f.Float64Var(&cfg.Faults.CrashFraction, "crash", 0, "fraction of devices whose agent crashes once mid-rotation and restarts from its keystore")
	f.Float64Var(&cfg.Faults.OfflineFraction, "offline", 0, "fraction of devices offline when rotations are requested")
	durationflag.Var(f, &cfg.Faults.OfflineFor, "offline-for", 5*time.Second, "how long offline devices stay away")
	f.Float64Var(&cfg.Faults.FlapFraction, "flap", 0, "fraction of devices whose connection drops every --flap-every")
	durationflag.Var(f, &cfg.Faults.FlapEvery, "flap-every", time.Second, "interval between connection drops of flapping devices")
	f.Float64Var(&cfg.Faults.DropRate, "drop", 0, "probability of losing each message, both directions")
	f.Float64Var(&cfg.Faults.DupRate, "dup", 0, "probability of delivering each message twice")
	f.Float64Var(&cfg.Faults.DelayRate, "delay", 0, "probability of holding each message for --delay-for")
	durationflag.Var(f, &cfg.Faults.Delay, "delay-for", 2*time.Second, "how long a delayed message is held")
	f.Float64Var(&cfg.Faults.SkewFraction, "skew", 0, "fraction of devices with a skewed clock")
	durationflag.Var(f, &cfg.Faults.Skew, "skew-max", 2*time.Minute, "largest clock skew, either way")
	f.StringVar(&cfg.FleetdBin, "fleetd-bin", "", "run fleetd from this binary as a child process (needed to kill or restart it)")
	f.StringArrayVar(&cfg.FleetdArgs, "fleetd-arg", nil, "extra argument for the spawned fleetd run, e.g. --fleetd-arg=--grace=10s (repeatable)")
	f.IntVar(&cfg.Nodes, "nodes", 0, "spawn this many fleetd nodes on the PostgreSQL store --store (needs --fleetd-bin)")
	f.StringVar(&cfg.Store, "store", "", "PostgreSQL URL the spawned --nodes share, postgres://USER:PASSWORD@HOST:PORT/DB")
	f.IntVar(&cfg.StorePID, "store-pid", 0, "process id of the PostgreSQL postmaster of --store, on this machine: the report adds its CPU (make bench)")
	f.IntVar(&cfg.KillNode, "kill-node", 0, "SIGKILL this node (1-based) for good during the first round, at --kill-at (needs --nodes)")
	f.Var(&killAt, "kill-at", "part of the first round's rotations completed when --kill-node is killed, e.g. 40%")
	f.IntVar(&cfg.Faults.FleetdKills, "kill-fleetd", 0, "SIGKILL fleetd this many times during the first round (needs --fleetd-bin)")
	f.IntVar(&cfg.Faults.BrokerRestarts, "restart-broker", 0, "restart fleetd and its embedded broker this many times during the first round (needs --fleetd-bin)")
	f.Uint64Var(&cfg.Faults.Seed, "seed", 0, "seed for choosing faulty devices (0: random)")
	f.StringVar(&scenario, "scenario", "", "YAML scenario file with devices, rotations and faults (see simulator.Scenario)")
	f.BoolVar(&campaignOn, "campaign", false, "campaign mode: drive fleetd's staged identity campaigns instead of rotation rounds (--rate: devices a second)")
	f.Var(&mode.Stages, "stages", "campaign mode: cumulative stages, e.g. 5%,25%,100%")
	f.Var(&mode.MaxFailure, "max-failure", "campaign mode: failure ratio above which a campaign pauses itself")
	f.IntVar(&mode.MinReached, "min-reached", 1, "campaign mode: devices reached before a stage completes or its failure ratio counts")
	durationflag.Var(f, &mode.DeviceTimeout, "device-timeout", 30*time.Second, "campaign mode: time a connected device may take before it counts as failed")
	durationflag.Var(f, &mode.KillDeviceTimeout, "kill-device-timeout", 30*time.Second, "campaign mode: device timeout of the campaign fleetd is killed in (--kill-fleetd)")
	f.StringVar(&mode.Select, "select", "", "campaign mode: label selector of the campaign (default: every device)")
	f.Var(&mode.Away, "away", "campaign mode: fraction of devices away during their stage, back when the campaign completes")
	durationflag.Var(f, &mode.AwayFor, "away-for", 0, "campaign mode: bring away devices back after this long instead")
	f.Var(&mode.CanaryFail, "canary-fail", "campaign mode: fraction of the first stage's devices made to fail, in a campaign of its own")
	f.BoolVar(&mode.Rollback, "rollback", false, "campaign mode: roll back the campaign that paused itself and check every device reconnects")
	f.BoolVar(&mode.Rerun, "rerun", false, "campaign mode: after the rollback, run the campaign again without the failure")
	f.IntVar(&mode.Revoke, "revoke", 0, "campaign mode: revoke this many devices at the end, for the revocation latency (M5)")
	f.StringVar(&cfg.ServerOps, "server-ops", "", "ops listener (/metrics) of the fleetd at --server, for campaign mode's M5 and M10; with several --server addresses, one per node in the same order (statements per rotation)")
	f.IntVar(&workers, "workers", 0, "uplink workers of the in-process fleetd (default: fleetd's)")
	f.StringVar(&cpuProfile, "cpuprofile", "", "write a CPU profile of the whole run (simulator and in-process fleetd)")
	cmd.AddCommand(run, yearCmd())
	cmdtree.Setup(cmd)
	return cmd
}

// checkReport refuses a --report format before a run rather than after it.
func checkReport(report string) error {
	switch report {
	case "json", "table":
		return nil
	}
	return fmt.Errorf("--report %q: want json or table", report)
}

// openLog returns the logger for fleetd and the agents: the file at path
// at level, or a discarding one when path is empty.
func openLog(path, level string) (*slog.Logger, func(), error) {
	if path == "" {
		return slog.New(slog.NewTextHandler(io.Discard, nil)), func() {}, nil
	}
	f, err := os.Create(path)
	if err != nil {
		return nil, nil, err
	}
	log, err := logx.New(f, level, "text")
	if err != nil {
		f.Close()
		return nil, nil, err
	}
	return log, func() { f.Close() }, nil
}
