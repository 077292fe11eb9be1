// Command fleetd is the keyfleet fleet server: it holds the fleet's signing
// keys in a PKCS#11 token and rotates device keys and certificates over MQTT.
//
//	fleetd init --data DIR [--create-token]   create keys, CA and operator credential
//	fleetd run  --data DIR                     serve devices and operators
//	fleetd config check FILE                   check a configuration file
//	fleetd config defaults                     print a complete configuration file
//
// Every flag is also a key of the --config file (config.go) and an
// environment variable KEYFLEET_NAME; the command line wins over the
// environment, which wins over the file.
//
// The token PIN is read from --pin-file or KEYFLEET_HSM_PIN, never a flag;
// each key may live elsewhere, named by --key-uri ROLE=URI (RFC 7512,
// with its own pin-source). Durations take days as well as Go durations
// (--grace 7d).
//
// fleetd run writes the admin API's address to the file "address" in the
// operator credential directory (DATA/admin), where fleetctl looks for it.
package main

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"os"
	"os/signal"
	"path/filepath"
	"strings"
	"syscall"
	"time"

	"github.com/spf13/cobra"

	"github.com/keyfleet/keyfleet/internal/cmdtree"
	"github.com/keyfleet/keyfleet/internal/durationflag"
	"github.com/keyfleet/keyfleet/internal/flagfile"
	"github.com/keyfleet/keyfleet/internal/logx"
	"github.com/keyfleet/keyfleet/internal/procstat"
	"github.com/keyfleet/keyfleet/internal/softhsm"
	"github.com/keyfleet/keyfleet/server"
	"github.com/keyfleet/keyfleet/server/custody"
	"github.com/keyfleet/keyfleet/server/datadir"
	"github.com/keyfleet/keyfleet/server/hsm"
	"github.com/keyfleet/keyfleet/server/issuing"
	"github.com/keyfleet/keyfleet/server/policy"
	"github.com/keyfleet/keyfleet/server/store/pgstore"
)

type flags struct {
	data, module, token, pinFile, logLevel, logFormat string
	insecureSoft, createToken                         bool
	mqtt, admin, ops, external, advertise, policy     string
	brokerCA, brokerReload, brokerCRL, brokerCRLRel   string
	nodeID                                            string
	names                                             []string
	grace, validity, ttl                              time.Duration
	printChanges                                      bool
	issuer                                            issuing.Config
	keyURIs                                           []string
	configFile                                        string
	store                                             string           // --store: bolt or a PostgreSQL DSN
	origins                                           flagfile.Origins // where each flag's value came from
	getenv                                            func(string) string
}

func main() {
	if err := root().Execute(); err != nil {
		fmt.Fprintln(os.Stderr, "fleetd:", err)
		os.Exit(1)
	}
}

// addressFile, in the operator credential directory, holds the admin
// API's address for fleetctl.
const addressFile = "address"

func root() *cobra.Command {
	cmd, _ := build()
	return cmd
}

// build makes fleetd's command tree and the flags its commands fill.
func build() (*cobra.Command, *flags) {
	f := &flags{getenv: os.Getenv}
	cmd := &cobra.Command{Use: "fleetd", Short: "keyfleet fleet server"}
	pf := cmd.PersistentFlags()
	pf.StringVar(&f.data, "data", "var/fleetd", "data directory")
	pf.StringVar(&f.module, "pkcs11-module", "", "PKCS#11 library (default: SoftHSM2 if installed)")
	pf.StringVar(&f.token, "token", "keyfleet", "PKCS#11 token label")
	pf.StringVar(&f.pinFile, "pin-file", "", "file holding the token user PIN (or set KEYFLEET_HSM_PIN)")
	pf.BoolVar(&f.insecureSoft, "insecure-soft-keys", false, "keep CA and update keys in files instead of a token (INSECURE)")
	pf.StringVar(&f.logLevel, "log-level", "info", "debug, info, warn or error")
	pf.StringVar(&f.logFormat, "log-format", "text", "text or json")
	pf.StringVar(&f.issuer.Kind, "issuer", issuing.KindEmbedded, "who signs device certificates: embedded (fleetd's CA) or stepca")
	pf.StringVar(&f.issuer.StepCAURL, "stepca-url", "", "step-ca's base URL, e.g. https://ca.example:9000 (--issuer stepca)")
	pf.StringVar(&f.issuer.StepCARoot, "stepca-root", "", "step-ca's root certificate, PEM (--issuer stepca)")
	pf.StringVar(&f.issuer.StepCAProvisioner, "stepca-provisioner", "", "name of the JWK provisioner registered at step-ca for fleetd (--issuer stepca)")
	pf.StringVar(&f.issuer.StepCAKey, "stepca-key", issuing.LabelProvisioner, "label of the provisioner key in the token; fleetd init makes it (--issuer stepca)")
	pf.StringArrayVar(&f.keyURIs, "key-uri", nil, "place a key by PKCS#11 URI: `ROLE=URI`, URI as pkcs11:token=T;object=O?module-path=M&pin-source=file:P "+
		"(repeatable; ROLE one of "+strings.Join(roleNames(), ", ")+")")
	pf.StringVar(&f.store, "store", pgstore.Bolt, "where fleetd keeps devices, campaigns and the audit log: bolt (the file in --data) "+
		"or a PostgreSQL URL postgres://USER:PASSWORD@HOST:PORT/DB, which several fleetd processes may share")
	pf.StringVar(&f.configFile, "config", "", "YAML configuration `FILE`: every flag as a key (fleetd config defaults prints one); or set KEYFLEET_CONFIG")

	initCmd := &cobra.Command{Use: "init", Short: "create the fleet's keys, CA and operator credential", Args: cobra.NoArgs,
		RunE: func(cmd *cobra.Command, _ []string) error {
			cfg, err := f.load(cmd)
			if err != nil {
				return err
			}
			if f.createToken && !f.insecureSoft {
				for _, tok := range custody.Tokens(cfg.HSM) {
					so := hsm.PIN(f.getenv("KEYFLEET_HSM_SO_PIN"))
					if so == "" {
						so = tok.PIN
					}
					if err := hsm.InitToken(tok.Module, tok.TokenLabel, so, tok.PIN); err != nil &&
						!strings.Contains(err.Error(), "already exists") {
						return err
					}
				}
			}
			cfg.ServerNames = f.names
			// The database first: one that cannot be reached stops init
			// before it makes a key; one that can gets its schema.
			st, err := pgstore.OpenSelection(cmd.Context(), f.store)
			if err != nil {
				return f.origins.Wrap("store", err)
			}
			if st != nil {
				defer st.Close()
			}
			return server.Init(cmd.Context(), cfg)
		}}
	initCmd.Flags().StringSliceVar(&f.names, "san", nil, "DNS name or IP address to add to fleetd's TLS certificate (repeatable)")
	initCmd.Flags().BoolVar(&f.createToken, "create-token", false, "initialise the token first (SoftHSM2; needs KEYFLEET_HSM_SO_PIN or uses the user PIN)")

	runCmd := &cobra.Command{Use: "run", Short: "serve devices and operators until interrupted", Args: cobra.NoArgs,
		RunE: func(cmd *cobra.Command, _ []string) error {
			cfg, err := f.load(cmd)
			if err != nil {
				return err
			}
			cfg.MQTTAddr, cfg.AdminAddr, cfg.ExternalBroker, cfg.AdvertiseMQTT = f.mqtt, f.admin, f.external, f.advertise
			cfg.OpsAddr, cfg.BrokerCAFile, cfg.BrokerReload, cfg.NodeID = f.ops, f.brokerCA, f.brokerReload, f.nodeID
			if err := checkAdvertise(f.advertise); err != nil {
				return f.origins.Wrap("advertise-mqtt", err)
			}
			cfg.BrokerCRLFile, cfg.BrokerCRLReload = f.brokerCRL, f.brokerCRLRel
			if cfg.BrokerCRLFile != "" && cfg.Issuer.Kind == issuing.KindStepCA {
				// Mosquitto would refuse every device: it needs a list of the issuing CA, step-ca's intermediate.
				return f.origins.Wrap("broker-crl-file", errors.New("needs fleetd's own CA as issuer: with --issuer stepca the device certificates are issued by step-ca's intermediate, whose CRL fleetd cannot sign"))
			}
			cfg.Grace, cfg.CertValidity, cfg.CommandTTL = f.grace, f.validity, f.ttl
			if f.policy != "" {
				if cfg.PolicyFile, err = policy.LoadFile(f.policy); err != nil {
					return f.origins.Wrap("policy", err)
				}
			}
			// Every device connection is a descriptor.
			if limit, err := procstat.RaiseFileLimit(); err != nil {
				cfg.Logger.Warn("cannot raise the open-file limit", "err", err)
			} else {
				cfg.Logger.Info("open-file limit", "max_files", limit)
			}
			if f.printChanges {
				p := &changePrinter{w: cmd.OutOrStdout(), now: time.Now}
				cfg.OnStateChange = p.print
			}
			ctx, stop := signal.NotifyContext(cmd.Context(), os.Interrupt, syscall.SIGTERM)
			defer stop()
			if cfg.Store, err = pgstore.OpenSelection(ctx, f.store); err != nil { // fleetd closes it
				return f.origins.Wrap("store", err)
			}
			if w, ok := cfg.Store.(interface{ Where() string }); ok {
				cfg.Logger.Info("store on PostgreSQL", "database", w.Where())
			}
			srv, err := server.Start(ctx, cfg)
			if err != nil {
				return err
			}
			addrFile := filepath.Join(datadir.Paths{Dir: cfg.DataDir}.AdminDir(), addressFile)
			if err := os.WriteFile(addrFile, []byte(srv.AdminAddr()+"\n"), 0o644); err != nil {
				cfg.Logger.Warn("cannot record the admin address for fleetctl", "err", err)
			}
			if f.printChanges {
				metrics := ""
				if a := srv.OpsAddr(); a != "" {
					metrics = ", status page on http://" + a + "/status, metrics on http://" + a + "/metrics"
				}
				fmt.Fprintf(cmd.OutOrStdout(), "%s fleetd serving: devices on %s, operators on %s%s\n",
					time.Now().Format(time.TimeOnly), srv.MQTTAddr(), srv.AdminAddr(), metrics)
			}
			<-ctx.Done()
			cfg.Logger.Info("fleetd stopping")
			return srv.Close()
		}}
	rf := runCmd.Flags()
	rf.StringVar(&f.mqtt, "mqtt-listen", "127.0.0.1:8883", "embedded broker TLS address")
	rf.StringVar(&f.admin, "admin-listen", "127.0.0.1:8443", "admin API mTLS address")
	rf.StringVar(&f.ops, "ops-listen", "127.0.0.1:9464", `plain-HTTP address of /metrics, /healthz and /readyz ("" or "off": none)`)
	rf.StringVar(&f.advertise, "advertise-mqtt", "", "broker address(es) given to devices at provisioning, comma-separated: every node of a cluster (default: the one fleetd uses)")
	rf.StringVar(&f.nodeID, "node-id", "", "this process's name among the fleetd nodes sharing a PostgreSQL store (default: host-pid-random, new at every start)")
	rf.StringVar(&f.external, "external-broker", "", "use this MQTT broker (host:port, TLS) instead of the embedded one; mosquitto://host:port also keeps its dynamic-security plugin in step (fleetctl broker config mosquitto)")
	rf.StringVar(&f.brokerCA, "broker-ca-file", "", "with --external-broker: keep this file holding every root the broker must accept (its cafile), written at start and after every anchor rotation")
	rf.StringVar(&f.brokerReload, "broker-reload", "", `command (sh -c) run after --broker-ca-file changed, to make the broker re-read it; for Mosquitto 2.0 a restart, e.g. "sudo systemctl restart mosquitto"`)
	rf.StringVar(&f.brokerCRL, "broker-crl-file", "", "with --external-broker: keep this file holding a CRL of every root (its crlfile), listing the retired and revoked device certificates")
	rf.StringVar(&f.brokerCRLRel, "broker-crl-reload", "", `command (sh -c) run after only --broker-crl-file changed (default: --broker-reload); for Mosquitto 2.0 a SIGHUP suffices, e.g. "sudo systemctl reload mosquitto"`)
	rf.StringVar(&f.policy, "policy", "", "policy file (YAML): seeds the running policy when none was applied (fleetctl policy apply); else only compared with it")
	durationflag.Var(rf, &f.grace, "grace", 0, "how long a superseded identity stays accepted, e.g. 7d or 36h (overrides the policy; default 7d)")
	durationflag.Var(rf, &f.validity, "cert-validity", 0, "validity of device certificates, e.g. 90d (overrides the policy; default 90d)")
	durationflag.Var(rf, &f.ttl, "command-ttl", 10*time.Minute, "expiry of commands and freshness window of uplinks")
	rf.BoolVar(&f.printChanges, "print-changes", false, "print one readable line per key state change on stdout (make run's screen)")

	cmd.AddCommand(initCmd, runCmd, configCmd(cmd))
	cmd.SetContext(context.Background())
	cmdtree.Setup(cmd)
	return cmd, f
}

// config builds fleetd's configuration from the flags, once the
// environment and the file have set theirs (load). It reads the PIN and
// checks every key URI, so that a bad setting stops fleetd before it
// opens a token, writes a file or listens anywhere. Errors say where the
// bad value came from.
func (f *flags) config() (server.Config, error) {
	var errs []error
	log, err := logx.New(os.Stderr, f.logLevel, f.logFormat)
	if err != nil {
		name := "log-level"
		if strings.HasPrefix(err.Error(), "log format") {
			name = "log-format"
		}
		errs, log = append(errs, f.origins.Wrap(name, err)), slog.Default()
	}
	cfg := server.Config{DataDir: f.data, InsecureSoftKeys: f.insecureSoft, Logger: log, Issuer: f.issuer}
	if err := pgstore.CheckSelection(f.store); err != nil {
		errs = append(errs, f.origins.Wrap("store", err))
	}
	if err := f.issuer.Validate(); err != nil {
		return cfg, err
	}
	if f.insecureSoft {
		return cfg, errors.Join(errs...)
	}
	module := f.module
	if module == "" {
		if module, err = softhsm.Module(); err != nil && len(f.keyURIs) == 0 {
			return cfg, errors.Join(append(errs, fmt.Errorf("%w (or pass --pkcs11-module)", err))...)
		}
	}
	pin := f.getenv("KEYFLEET_HSM_PIN")
	if f.pinFile != "" {
		b, err := os.ReadFile(f.pinFile)
		if err != nil {
			return cfg, errors.Join(append(errs, f.origins.Wrap("pin-file", fmt.Errorf("pin file: %w", err)))...)
		}
		pin = strings.TrimSpace(string(b))
	}
	if pin == "" && len(f.keyURIs) == 0 {
		return cfg, errors.Join(append(errs, errors.New("no token PIN: use --pin-file or KEYFLEET_HSM_PIN"))...)
	}
	cfg.HSM, err = custody.ParseKeyURIs(f.keyURIs, hsm.Config{Module: module, TokenLabel: f.token, PIN: hsm.PIN(pin)})
	return cfg, errors.Join(append(errs, f.keyURIError(err))...)
}

// keyURIError says where each refused key URI was written: its own line
// in a key-uri mapping of the file, else where key-uri was set.
func (f *flags) keyURIError(err error) error {
	if err == nil {
		return nil
	}
	j, ok := err.(interface{ Unwrap() []error })
	if !ok {
		j = joined{err}
	}
	var errs []error
	for _, e := range j.Unwrap() {
		var ke *custody.KeyURIError
		if errors.As(e, &ke) {
			errs = append(errs, f.origins.WrapItem("key-uri", ke.Role, e))
		} else {
			errs = append(errs, f.origins.Wrap("key-uri", e))
		}
	}
	return errors.Join(errs...)
}

// joined is one error seen as a list of them.
type joined []error

func (j joined) Error() string   { return errors.Join(j...).Error() }
func (j joined) Unwrap() []error { return j }
