// Command fleet-agent is the keyfleet device agent for a Linux device. It
// keeps the device's keys in --dir (made by `fleetctl device add --out`),
// or with --key-store its private keys in a TPM or secure element through
// PKCS#11, connects to the fleet's broker with its identity and carries out key
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
	"github.com/keyfleet/keyfleet/device/hwkeys"
	"github.com/keyfleet/keyfleet/internal/cmdtree"
	"github.com/keyfleet/keyfleet/internal/logx"
)

func main() {
	var dir, broker, reenrollBroker, level, format, crashAt, keyStore string
	var fwDir, fwVendor, fwClass, bootCheck string
	var fwFactory uint32
	cmd := &cobra.Command{
		Use:   "fleet-agent",
		Short: "keyfleet device agent",
		Long: "keyfleet device agent: keeps the device's identity current over MQTT.\n\n" +
			"Keys are PEM files in --dir unless --key-store names a PKCS#11 token (TPM 2.0 through\n" +
			"tpm2-pkcs11, or a secure element's module). A board vendor gives: the module's path\n" +
			"(module-path=, e.g. /usr/lib/aarch64-linux-gnu/libtpm2_pkcs11.so.1), an initialised token's\n" +
			"label (token=), a label prefix for the agent's keys (object=) and a file with the user PIN\n" +
			"(pin-source=file:PATH). Keys are ECDSA P-256, generated in the token, sensitive and not\n" +
			"extractable. PKCS#11 needs a build with cgo: CGO_ENABLED=1 CC=<the SDK's gcc> go build\n" +
			"./cmd/fleet-agent; a CGO_ENABLED=0 build refuses --key-store. See docs/operations.md,\n" +
			"\"Device keys in a TPM or secure element\".",
		Args:          cobra.NoArgs,
		SilenceUsage:  true,
		SilenceErrors: true,
		RunE: func(cmd *cobra.Command, _ []string) error {
			log, err := logx.New(os.Stderr, level, format)
			if err != nil {
				return err
			}
			opts := device.Options{Dir: dir, Brokers: device.SplitBrokers(broker), ReenrollBroker: reenrollBroker, Logger: log,
				OnEvent: func(e device.Event) {
					log.Info("agent", "event", string(e.Kind), "device", e.Device, "slot", "identity", "version", e.Version, "detail", e.Detail)
				}}
			if keyStore != "" {
				// Opened before anything else, so a bad URI or a build
				// without PKCS#11 is refused before the agent connects.
				keys, err := hwkeys.Open(keyStore)
				if err != nil {
					return err
				}
				defer keys.Close()
				opts.Keys = keys
			}
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
	f.StringVar(&reenrollBroker, "reenroll-broker", "", "broker address host:port the birth credential re-enrols through (default: --broker); an external Mosquitto's birth listener")
	f.StringVar(&keyStore, "key-store", "", "keep the device's private keys in a PKCS#11 token (TPM 2.0, secure element) instead of PEM files in --dir:\n"+
		"pkcs11:token=LABEL;object=PREFIX?module-path=/usr/lib/<arch>/libtpm2_pkcs11.so.1&pin-source=file:PATH\n"+
		"(RFC 7512; keys are P-256, generated in the token, labelled PREFIX/identity/vN; needs a build with CGO_ENABLED=1)")
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
