package server

import (
	"cmp"
	"errors"
	"fmt"
	"log/slog"
	"time"

	"github.com/keyfleet/keyfleet/protocol"
	"github.com/keyfleet/keyfleet/server/hsm"
	"github.com/keyfleet/keyfleet/server/issuing"
	"github.com/keyfleet/keyfleet/server/lifecycle"
	"github.com/keyfleet/keyfleet/server/policy"
	"github.com/keyfleet/keyfleet/server/store"
)

// Config configures fleetd. Zero values take the documented defaults.
type Config struct {
	// DataDir holds the store, certificates and fleetd's TLS key. Required.
	DataDir string
	// HSM selects the PKCS#11 token; required unless InsecureSoftKeys.
	HSM hsm.Config
	// InsecureSoftKeys keeps the CA and update keys in files under
	// DataDir/keys instead of a token. For machines without any PKCS#11
	// module only; fleetd logs a warning.
	InsecureSoftKeys bool
	// MQTTAddr is the embedded broker's TLS listener; default 127.0.0.1:8883.
	// Port 0 picks a free port.
	MQTTAddr string
	// ExternalBroker, if set (host:port), is used instead of the embedded
	// broker; it must authenticate devices by certificate and enforce the
	// ACL itself.
	ExternalBroker                                             string
	BrokerCAFile, BrokerReload, BrokerCRLFile, BrokerCRLReload string // the external broker's CA and CRL files kept current, and their reload commands (dynsec.WithCAFile, WithCRLFile)
	// AdminAddr is the admin API's mTLS listener; default 127.0.0.1:8443.
	AdminAddr string
	// OpsAddr is the plain-HTTP listener of /metrics, /healthz, /readyz; "" or "off": none.
	OpsAddr string
	// AdvertiseMQTT is the broker address devices are given at provisioning
	// (several, comma-separated: a cluster's nodes); empty means the one fleetd
	// uses (MQTTAddr or ExternalBroker), for devices that reach it by another name.
	AdvertiseMQTT string
	NodeID        string // names this process among those sharing Store (--node-id); "" makes a new one per start
	// ServerNames are DNS names and IP addresses put in fleetd's TLS
	// certificate at Init, besides localhost, 127.0.0.1 and ::1: the names
	// devices and operators use to reach it.
	ServerNames []string
	// Policy gives the key lifetimes and the windows for offline devices;
	// zero fields take policy.Default's. Version 0 while none was applied.
	Policy policy.Policy
	// PolicyFile (--policy) replaces Policy; it seeds version 1 (policyrun).
	PolicyFile *policy.File
	// Grace, if set, overrides every policy's grace: how long a superseded
	// identity stays accepted.
	Grace time.Duration
	// CertValidity, if set, overrides the certificate validity of every
	// policy run (the CA reads the running policy's at start).
	CertValidity time.Duration
	// CommandTTL is the expiry of commands; default 10 minutes.
	CommandTTL time.Duration
	// OnlineKeyLifetime of the delegated downlink key; default 24 hours.
	OnlineKeyLifetime time.Duration
	// Workers for uplinks; default 64.
	Workers int
	// Topics layout; zero is the default prefix "kf".
	Topics protocol.Topics
	// Now is the clock; nil means time.Now.
	Now func() time.Time
	// Logger; nil means slog.Default().
	Logger *slog.Logger
	// OnStateChange, if set, is called after every durable state change
	// of every slot: identity and data keys per device, anchors and
	// firmware fleet-wide (Device "").
	OnStateChange func(lifecycle.Change)
	Issuer        issuing.Config // who signs device certificates: the embedded CA or step-ca (--issuer)
	// Store, if set, is used instead of the bbolt store in DataDir;
	// fleetd closes it at Close.
	Store store.Store
}

func (c *Config) setDefaults() error {
	if c.DataDir == "" {
		return errors.New("server: data directory is required")
	}
	if !c.InsecureSoftKeys && (c.HSM.Module == "" || c.HSM.TokenLabel == "" || c.HSM.PIN == "") {
		return errors.New("server: PKCS#11 module, token label and PIN are required (or --insecure-soft-keys)")
	}
	c.Policy = policy.Overrides{Grace: c.Grace, CertValidity: c.CertValidity}.Start(c.PolicyFile, c.Policy)
	if err := c.Policy.Validate(); err != nil {
		return fmt.Errorf("server: %w", err)
	}
	c.CommandTTL = cmp.Or(c.CommandTTL, 10*time.Minute)
	c.OnlineKeyLifetime = cmp.Or(c.OnlineKeyLifetime, 24*time.Hour)
	if c.CommandTTL < time.Second || c.OnlineKeyLifetime < time.Minute { // grace and validity: Policy.Validate
		return fmt.Errorf("server: durations out of range (command ttl %v, online key %v)", c.CommandTTL, c.OnlineKeyLifetime)
	}
	c.MQTTAddr, c.AdminAddr = cmp.Or(c.MQTTAddr, "127.0.0.1:8883"), cmp.Or(c.AdminAddr, "127.0.0.1:8443")
	c.Logger = cmp.Or(c.Logger, slog.Default())
	if c.Now == nil {
		c.Now = time.Now
	}
	return nil
}
