package main

import (
	"crypto/ecdsa"
	"crypto/elliptic"
	"crypto/rand"
	"crypto/x509"
	"encoding/pem"
	"errors"
	"fmt"
	"os"
	"path/filepath"
	"text/tabwriter"

	"github.com/spf13/cobra"

	"github.com/keyfleet/keyfleet/adminapi"
	"github.com/keyfleet/keyfleet/protocol"
	"github.com/keyfleet/keyfleet/server/mosquitto"
)

// brokerCommands are `fleetctl broker cert` and `fleetctl broker config
// mosquitto`: what an external broker needs from keyfleet.
func (a *app) brokerCommands() *cobra.Command {
	broker := &cobra.Command{Use: "broker", Short: "an external broker: its TLS certificate and its configuration"}

	var names []string
	var out string
	cert := &cobra.Command{Use: "cert", Short: "issue the broker's TLS certificate (key made here, CSR signed by the fleet CA in the HSM)", Args: cobra.NoArgs,
		RunE: func(cmd *cobra.Command, _ []string) error {
			if len(names) == 0 || out == "" {
				return errors.New("broker cert: --san (at least one) and --out are required")
			}
			c, err := a.client()
			if err != nil {
				return err
			}
			key, err := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
			if err != nil {
				return err
			}
			csr, err := x509.CreateCertificateRequest(rand.Reader, &x509.CertificateRequest{}, key)
			if err != nil {
				return fmt.Errorf("broker cert: %w", err)
			}
			res, err := c.BrokerCert(cmd.Context(), adminapi.BrokerCertRequest{CSR: csr, Names: names})
			if err != nil {
				return err
			}
			der, err := x509.MarshalPKCS8PrivateKey(key)
			if err != nil {
				return err
			}
			if err := os.MkdirAll(out, 0o755); err != nil {
				return fmt.Errorf("broker cert: %w", err)
			}
			for _, f := range []struct {
				name string
				b    []byte
				mode os.FileMode
			}{
				{"broker.key", pem.EncodeToMemory(&pem.Block{Type: "PRIVATE KEY", Bytes: der}), 0o600},
				{"broker.pem", res.Certificate, 0o644},
				{"ca.pem", res.CA, 0o644},
			} {
				if err := os.WriteFile(filepath.Join(out, f.name), f.b, f.mode); err != nil {
					return fmt.Errorf("broker cert: %w", err)
				}
			}
			return a.print(struct {
				Dir      string `json:"dir"`
				NotAfter string `json:"not_after"`
			}{out, res.NotAfter.UTC().Format("2006-01-02T15:04:05Z")}, func(w *tabwriter.Writer) {
				fmt.Fprintf(w, "wrote\t%s (broker.key, broker.pem, ca.pem)\nvalid until\t%s\n", out, res.NotAfter.UTC().Format("2006-01-02 15:04 MST"))
			})
		}}
	cert.Flags().StringArrayVar(&names, "san", nil, "a DNS name or IP address devices reach the broker by (repeat)")
	cert.Flags().StringVar(&out, "out", "", "directory for broker.key (0600), broker.pem and ca.pem")

	var o mosquitto.ConfigOptions
	var seed, prefix string
	config := &cobra.Command{Use: "config", Short: "print a broker's configuration for keyfleet"}
	mq := &cobra.Command{Use: "mosquitto", Short: "print mosquitto.conf for Mosquitto 2.0 with the dynamic-security plugin fleetd manages", Args: cobra.NoArgs,
		RunE: func(cmd *cobra.Command, _ []string) error {
			conf, err := mosquitto.Config(o)
			if err != nil {
				return err
			}
			if seed != "" {
				b, err := mosquitto.SeedFile(protocol.Topics{Prefix: prefix})
				if err != nil {
					return err
				}
				f, err := os.OpenFile(seed, os.O_WRONLY|os.O_CREATE|os.O_EXCL, 0o600)
				if err != nil {
					return fmt.Errorf("broker config: the plugin's state: %w (it is written once, before Mosquitto first starts)", err)
				}
				if _, err := f.Write(b); err != nil {
					f.Close()
					return fmt.Errorf("broker config: %w", err)
				}
				if err := f.Close(); err != nil {
					return fmt.Errorf("broker config: %w", err)
				}
			}
			_, err = fmt.Fprint(cmd.OutOrStdout(), conf)
			return err
		}}
	f := mq.Flags()
	f.StringVar(&o.Listen, "listen", "0.0.0.0:8883", "the broker's TLS listener, host:port")
	f.StringVar(&o.CAFile, "cafile", "/etc/mosquitto/keyfleet/ca.pem", "the fleet's roots (ca.pem of fleetctl broker cert)")
	f.StringVar(&o.CertFile, "certfile", "/etc/mosquitto/keyfleet/broker.pem", "the broker's certificate (fleetctl broker cert)")
	f.StringVar(&o.KeyFile, "keyfile", "/etc/mosquitto/keyfleet/broker.key", "the broker's key (fleetctl broker cert)")
	f.StringVar(&o.CRLFile, "crlfile", "/etc/mosquitto/keyfleet/crl.pem", `the CRLs fleetd keeps (fleetd's --broker-crl-file; "" omits the line); re-read on SIGHUP`)
	f.StringVar(&o.BirthListen, "birth-listen", "", "a second listener, host:port, for birth credentials to re-enrol through (the agent's re-enrolment broker); none if empty")
	f.StringVar(&o.BirthCAFile, "birth-cafile", "/etc/mosquitto/keyfleet/birth-ca.pem", "the birth CA (fleetd's pki/idevid-ca.pem), trusted on the birth listener only")
	f.StringVar(&o.Plugin, "plugin", mosquitto.DefaultPlugin, "the dynamic-security plugin")
	f.StringVar(&o.DynsecFile, "dynsec-file", "/var/lib/mosquitto/keyfleet-dynsec.json", "the plugin's state, writable by Mosquitto")
	f.StringVar(&o.User, "user", "", "the system user Mosquitto runs as (omitted: Mosquitto's default)")
	f.StringVar(&seed, "write-dynsec", "", "also write the plugin's first state to this file (fleetd as its admin); refuses to overwrite")
	f.StringVar(&prefix, "topic-prefix", protocol.DefaultTopicPrefix, "the fleet's topic prefix")
	config.AddCommand(mq)
	broker.AddCommand(cert, config)
	return broker
}
