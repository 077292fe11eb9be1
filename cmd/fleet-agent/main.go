// Command fleet-agent is the keyfleet device agent for a Linux device. It
// keeps the device's keys in --dir (made by `fleetctl device add --out`),
// connects to the fleet's broker with its identity and carries out key
// rotations.
package main

import (
	"context"
	"fmt"
	"os"
	"os/signal"
	"syscall"

	"github.com/spf13/cobra"

	"github.com/keyfleet/keyfleet/device"
	"github.com/keyfleet/keyfleet/internal/logx"
)

func main() {
	var dir, broker, level, format, crashAt string
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
			opts := device.Options{Dir: dir, Broker: broker, Logger: log,
				OnEvent: func(e device.Event) {
					log.Info("agent", "event", string(e.Kind), "device", e.Device, "slot", "identity", "version", e.Version, "detail", e.Detail)
				}}
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
	f.StringVar(&broker, "broker", "", "broker address host:port (default: the one recorded at provisioning)")
	f.StringVar(&level, "log-level", "info", "debug, info, warn or error")
	f.StringVar(&format, "log-format", "text", "text or json")
	f.StringVar(&crashAt, "crash-at", "", "testing: SIGKILL the agent at this step (after-pending-key, after-enroll, after-cert-stored, after-promote)")
	_ = f.MarkHidden("crash-at")
	_ = cmd.MarkFlagRequired("dir")
	if err := cmd.Execute(); err != nil {
		fmt.Fprintln(os.Stderr, "fleet-agent:", err)
		os.Exit(1)
	}
}
