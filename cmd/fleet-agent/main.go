// Command fleet-agent is the keyfleet device agent for a Linux device. It
// keeps the device's keys in --dir (made by `fleetctl device add --out`),
// connects to the fleet's broker with its identity and carries out key
// rotations, trust-anchor walks, data keys and, with --firmware-dir,
// firmware updates.
package main

import (
	"context"
	"fmt"
	"os"
	"os/signal"
	"syscall"

	"github.com/spf13/cobra"

	"github.com/keyfleet/keyfleet/device"
	"github.com/keyfleet/keyfleet/internal/cmdtree"
	"github.com/keyfleet/keyfleet/internal/logx"
)

func main() {
	var dir, broker, level, format, crashAt string
	var fwDir, fwVendor, fwClass, bootCheck string
	var fwFactory uint32
	cmd := &cobra.Command{
		Use:           "fleet-agent",
		Short:         "keyfleet device agent",
		Args:          cobra.NoArgs,
		SilenceUsage:  true,
		SilenceErrors: true,
		RunE: func(cmd *cobra.Command, _ []string) error {
			log, err := logx.New(os.Stderr, level, format)
			if err != nil {
				return err
			}
			opts := device.Options{Dir: dir, Brokers: device.SplitBrokers(broker), Logger: log,
				OnEvent: func(e device.Event) {
					log.Info("agent", "event", string(e.Kind), "device", e.Device, "slot", "identity", "version", e.Version, "detail", e.Detail)
				}}
			if fwDir != "" {
				if opts.Firmware, err = firmwareOptions(fwDir, fwVendor, fwClass, fwFactory, bootCheck); err != nil {
					return err
				}
			}
			if crashAt != "" {
				// Fault injection for crash tests: die as a kill -9 would,
				// with no chance to clean up.
				opts.Failpoint = func(step string) {
					if step == crashAt {
						_ = syscall.Kill(os.Getpid(), syscall.SIGKILL)
						select {}
					}
				}
			}
			a, err := device.New(opts)
			if err != nil {
				return err
			}
			ctx, stop := signal.NotifyContext(context.Background(), os.Interrupt, syscall.SIGTERM)
			defer stop()
			if err := a.Run(ctx); err != nil && ctx.Err() == nil {
				return err
			}
			return nil
		},
	}
	f := cmd.Flags()
	f.StringVar(&dir, "dir", "", "keystore directory (required)")
	f.StringVar(&broker, "broker", "", "broker address host:port, or several separated by commas, tried from a random one on and in turn when one fails (default: the ones recorded at provisioning)")
	f.StringVar(&level, "log-level", "info", "debug, info, warn or error")
	f.StringVar(&format, "log-format", "text", "text or json")
	f.StringVar(&crashAt, "crash-at", "", "testing: SIGKILL the agent at this step (after-pending-key, after-enroll, after-cert-stored, after-promote)")
	_ = f.MarkHidden("crash-at")
	f.StringVar(&fwDir, "firmware-dir", "", "directory of the two firmware slots; enables firmware updates")
	f.StringVar(&fwVendor, "firmware-vendor", "", "vendor UUID manifests must name")
	f.StringVar(&fwClass, "firmware-class", "", "device class UUID manifests must name")
	f.Uint32Var(&fwFactory, "firmware-factory-version", 1, "firmware version the device shipped with")
	f.StringVar(&bootCheck, "boot-check", "", "command run with a new image's path and version after install; exit status 0 confirms, else roll back")
	_ = cmd.MarkFlagRequired("dir")
	cmdtree.Setup(cmd)
	if err := cmd.Execute(); err != nil {
		fmt.Fprintln(os.Stderr, "fleet-agent:", err)
		os.Exit(1)
	}
}
