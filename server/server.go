package server

import (
	"context"
	"crypto"
	"crypto/tls"
	"crypto/x509"
	"errors"
	"fmt"
	"log/slog"
	"net"
	"net/http"
	"os"
	"sync"
	"time"

	"github.com/keyfleet/keyfleet/adminapi"
	"github.com/keyfleet/keyfleet/internal/procstat"
	"github.com/keyfleet/keyfleet/protocol"
	"github.com/keyfleet/keyfleet/server/admin"
	"github.com/keyfleet/keyfleet/server/broker"
	"github.com/keyfleet/keyfleet/server/escrow"
	"github.com/keyfleet/keyfleet/server/lifecycle"
	"github.com/keyfleet/keyfleet/server/link"
	"github.com/keyfleet/keyfleet/server/provisioning"
	"github.com/keyfleet/keyfleet/server/release"
	"github.com/keyfleet/keyfleet/server/rotation"
	"github.com/keyfleet/keyfleet/server/store"
	"github.com/keyfleet/keyfleet/server/trust"
)

// Server is a running fleetd: its parts, built from a Config.
type Server struct {
	cfg      Config
	log      *slog.Logger
	st       store.Store
	keys     custody
	trust    *trust.Service
	escrow   *escrow.Escrow
	releases *release.Releases
	engine   *rotation.Engine
	broker   *broker.Embedded
	link     *link.Link
	admin    *http.Server
	adminL   net.Listener
	cancel   context.CancelFunc
	wg       sync.WaitGroup
}

// Start opens the deployment Init made in cfg.DataDir and serves until ctx
// ends or Close is called.
func Start(ctx context.Context, cfg Config) (_ *Server, err error) {
	if err := cfg.setDefaults(); err != nil {
		return nil, err
	}
	p := Paths{cfg.DataDir}
	if _, err := os.Stat(p.CACert()); err != nil {
		return nil, fmt.Errorf("server: not initialised? %w", err)
	}
	s := &Server{cfg: cfg, log: cfg.Logger, st: cfg.Store}
	ctx, s.cancel = context.WithCancel(ctx)
	defer func() {
		if err != nil {
			s.Close()
		}
	}()
	if s.keys, err = openCustody(&s.cfg); err != nil {
		return nil, err
	}
	if s.st == nil {
		if s.st, err = store.OpenBolt(p.Store(), store.BoltOptions{Now: cfg.Now}); err != nil {
			return nil, err
		}
	}
	codec := protocol.NewCodec()
	if s.trust, err = trust.NewService(ctx, trust.Options{Files: p.trust(), Keys: s.keys, FirstLabels: firstLabels,
		CertValidity: cfg.CertValidity, OnlineKeyLifetime: cfg.OnlineKeyLifetime, Codec: codec, Topics: cfg.Topics,
		Audit: s.st, OnChange: cfg.OnStateChange, Now: cfg.Now, Logger: cfg.Logger}); err != nil {
		return nil, err
	}
	chain := s.trust.Chain()
	birth, err := provisioning.OpenBirthCA(s.keys, LabelBirthCA, p.BirthCA(), cfg.Now)
	if err != nil {
		return nil, err
	}
	if s.escrow, err = escrow.New(s.keys, s.st, cfg.Policy, cfg.Now); err != nil {
		return nil, err
	}
	if s.releases, err = release.Open(release.Options{File: p.Firmware(), Audit: s.st, Codec: codec, Topics: cfg.Topics,
		Key:      func() (crypto.Signer, error) { return chain.Signer(trust.RoleFirmware) },
		OnChange: cfg.OnStateChange, Now: cfg.Now, Logger: cfg.Logger}); err != nil {
		return nil, err
	}
	s.engine = rotation.New(s.st, s.trust, s.trust.Keeper(), codec, rotation.Options{
		Policy: cfg.Policy, Grace: cfg.Grace, CommandTTL: cfg.CommandTTL, Workers: cfg.Workers, Topics: cfg.Topics,
		Now: cfg.Now, Logger: cfg.Logger, OnStateChange: identityChanges(cfg.OnStateChange),
		Anchors: chain, DataKeys: s.escrow, Firmware: s.releases,
	})
	s.escrow.SetHooks(escrow.Hooks{Push: s.engine, OnChange: cfg.OnStateChange, Logger: cfg.Logger})
	if err := s.engine.Start(ctx); err != nil {
		return nil, err
	}
	if s.cfg.MQTTAddr, err = s.startBroker(ctx, birth.Certificate()); err != nil {
		return nil, err
	}
	if s.link, err = link.Dial(ctx, link.Options{Broker: s.cfg.MQTTAddr, TLS: s.clientTLS, Logger: cfg.Logger,
		Subscriptions: []string{cfg.Topics.SharedUp(broker.ServerShareGroup), cfg.Topics.SharedReenroll(broker.ServerShareGroup)},
		OnMessage:     func(topic string, payload []byte) { s.engine.Submit(ctx, topic, payload) },
		OnConnect:     s.connected,
	}); err != nil {
		return nil, err
	}
	s.wg.Add(1)
	go func() { defer s.wg.Done(); s.trust.Run(ctx) }()
	station := provisioning.New(s.engine, birth, chain, s.advertised())
	if err := s.serveAdmin(admin.Parts{Devices: s.st, Provision: station, Rotations: s.engine, Revoker: s.engine,
		Anchors: s.trust, DataKeys: s.escrow, Escrow: s.escrow, Firmware: s.releases, Status: s, Audit: s.st}); err != nil {
		return nil, err
	}
	s.log.Info("fleetd serving", "mqtt", s.cfg.MQTTAddr, "admin", s.adminL.Addr().String(),
		"ca_key", s.keys.URI(LabelCA), "embedded_broker", s.broker != nil)
	return s, nil
}

// identityChanges reports the engine's identity changes through the
// fleet-wide hook.
func identityChanges(fn func(lifecycle.Change)) func(rotation.StateChange) {
	if fn == nil {
		return nil
	}
	return func(c rotation.StateChange) {
		fn(lifecycle.Change{Device: c.Device, Slot: lifecycle.SlotKind(c.Slot.String()), Version: c.Version,
			To: lifecycle.State(c.State), RID: c.RID, Latency: c.Latency})
	}
}

// fleetCAs is what the broker trusts: every anchor root and the birth CA.
type fleetCAs struct {
	*trust.Service
	birth *x509.CertPool
}

func (f fleetCAs) BirthRoots() *x509.CertPool { return f.birth }

// startBroker starts the embedded broker unless an external one is
// configured, and returns the address fleetd connects to.
func (s *Server) startBroker(ctx context.Context, birth *x509.Certificate) (string, error) {
	if s.cfg.ExternalBroker != "" {
		return s.cfg.ExternalBroker, nil
	}
	birthPool := x509.NewCertPool()
	birthPool.AddCert(birth)
	var err error
	s.broker, err = broker.Start(broker.Options{
		Addr: s.cfg.MQTTAddr, TLS: &tls.Config{GetCertificate: s.trust.GetCertificate},
		Trust: fleetCAs{s.trust, birthPool}, Policy: s.cfg.Policy, Now: s.cfg.Now,
		Checker: s.engine, Topics: s.cfg.Topics, Logger: s.cfg.Logger,
		OnRestore: func(device string) {
			if err := s.engine.Resend(ctx, device); err != nil {
				s.log.Warn("resend after a restored session failed", "device", device, "err", err)
			}
		},
	})
	if err != nil {
		return "", err
	}
	s.engine.SetSessionCloser(s.broker)
	return s.broker.Addr(), nil
}

// clientTLS is fleetd's MQTT client configuration, read at every dial.
func (s *Server) clientTLS() *tls.Config {
	host, _, _ := net.SplitHostPort(s.cfg.MQTTAddr)
	if host == "" || host == "0.0.0.0" || host == "::" {
		host = "localhost"
	}
	return &tls.Config{GetClientCertificate: s.trust.GetClientCertificate, RootCAs: s.trust.Roots(), ServerName: host,
		MinVersion: tls.VersionTLS12, Time: s.cfg.Now}
}

// connected runs after each (re)connect of fleetd's MQTT session.
func (s *Server) connected(ctx context.Context, l *link.Link) {
	s.engine.SetPublisher(l)
	s.trust.SetPublisher(l)
	s.releases.SetPublisher(l)
	if err := s.trust.PublishAnchors(ctx, false); err != nil {
		s.log.Warn("anchors not published", "err", err)
	}
}

func (s *Server) advertised() string {
	if s.cfg.AdvertiseMQTT != "" {
		return s.cfg.AdvertiseMQTT
	}
	return s.cfg.MQTTAddr
}

func (s *Server) serveAdmin(parts admin.Parts) error {
	l, err := net.Listen("tcp", s.cfg.AdminAddr)
	if err != nil {
		return fmt.Errorf("server: admin listen %s: %w", s.cfg.AdminAddr, err)
	}
	s.adminL = l
	s.admin = &http.Server{
		Handler: admin.Handler(parts, s.log),
		TLSConfig: &tls.Config{
			// Read per connection: a rotation of the anchors adds a root
			// and replaces fleetd's certificate without a restart.
			GetConfigForClient: func(*tls.ClientHelloInfo) (*tls.Config, error) {
				return &tls.Config{GetCertificate: s.trust.GetCertificate, ClientCAs: s.trust.Roots(), Time: s.cfg.Now,
					ClientAuth: tls.RequireAndVerifyClientCert, MinVersion: tls.VersionTLS12}, nil
			},
			MinVersion: tls.VersionTLS12},
		ReadHeaderTimeout: 10 * time.Second,
		ErrorLog:          slog.NewLogLogger(s.log.Handler(), slog.LevelWarn),
	}
	s.wg.Add(1)
	go func() {
		defer s.wg.Done()
		if err := s.admin.ServeTLS(l, "", ""); err != nil && !errors.Is(err, http.ErrServerClosed) {
			s.log.Error("admin API stopped", "err", err)
		}
	}()
	return nil
}

// Status implements admin.Status: every part's counters in one answer.
func (s *Server) Status(ctx context.Context) (adminapi.Status, error) {
	st := s.engine.Stats()
	out := adminapi.Status{ByState: map[string]int{}, Requested: st.Requested, Issued: st.Issued, Activated: st.Activated,
		Retired: st.Retired, Rejected: st.Rejected, HSMOps: s.HSMOps(), Broker: s.cfg.MQTTAddr,
		RSSBytes: procstat.RSS(), Goroutines: procstat.Goroutines(),
		Reenrolled: st.Reenrolled, RenewedAfterExpiry: st.RenewedExpired, OldKeyUplinks: st.OldKeyUplinks,
		OldKeyConnects: st.OldKeyConnects, DataKeysSent: st.DataKeysSent, AnchorsVersion: s.trust.Chain().AnchorVersion()}
	out.FirmwareVersion, _ = s.releases.CurrentFirmware()
	if st.Uplinks > 0 {
		out.OldKeyRatio = float64(st.OldKeyUplinks) / float64(st.Uplinks)
	}
	if s.broker != nil {
		out.BrokerDenials = s.broker.Denials.Snapshot()
		out.ConnectedClient = s.broker.Connected()
	}
	err := s.st.ForEachDevice(ctx, func(d *store.Device) error {
		out.Devices++
		if l := d.Slot(protocol.SlotIdentity).Latest(); l != nil {
			out.ByState[l.State.String()]++
		}
		return nil
	})
	return out, err
}

// OnlineKeyRenewals counts online signing keys made since start, after the first.
func (s *Server) OnlineKeyRenewals() uint64 { return s.trust.OnlineKeyRenewals() }

// MQTTAddr is where devices connect.
func (s *Server) MQTTAddr() string { return s.cfg.MQTTAddr }

// AdminAddr is the admin API's address.
func (s *Server) AdminAddr() string { return s.adminL.Addr().String() }

// Engine exposes the rotation engine (tests, the simulator's in-process mode).
func (s *Server) Engine() *rotation.Engine { return s.engine }

// Trust exposes the trust anchors and fleetd's credentials (tests, the simulator).
func (s *Server) Trust() *trust.Service { return s.trust }

// Releases exposes the firmware releases (tests, the simulator).
func (s *Server) Releases() *release.Releases { return s.releases }

// Broker returns the embedded broker, or nil with an external one.
func (s *Server) Broker() *broker.Embedded { return s.broker }

// Store exposes the store (tests, the simulator).
func (s *Server) Store() store.Store { return s.st }

// HSMOps counts private-key operations in the token so far.
func (s *Server) HSMOps() uint64 {
	if s.keys == nil {
		return 0
	}
	return s.keys.Ops()
}

// Close stops serving and releases everything, the store included.
func (s *Server) Close() error {
	if s.cancel != nil {
		s.cancel()
	}
	if s.admin != nil {
		ctx, cancel := context.WithTimeout(context.Background(), 2*time.Second)
		_ = s.admin.Shutdown(ctx)
		cancel()
	}
	if s.link != nil {
		s.link.Close()
	}
	s.wg.Wait()
	if s.engine != nil {
		s.engine.Wait()
	}
	if s.broker != nil {
		_ = s.broker.Close()
	}
	var errs []error
	if s.st != nil {
		errs = append(errs, s.st.Close())
	}
	if s.keys != nil {
		errs = append(errs, s.keys.Close())
	}
	return errors.Join(errs...)
}
