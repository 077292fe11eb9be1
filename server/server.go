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
	"sync/atomic"
	"time"

	"github.com/keyfleet/keyfleet/certs"
	"github.com/keyfleet/keyfleet/certs/identity"
	"github.com/keyfleet/keyfleet/internal/mqttc"
	"github.com/keyfleet/keyfleet/internal/procstat"
	"github.com/keyfleet/keyfleet/protocol"
	"github.com/keyfleet/keyfleet/server/admin"
	"github.com/keyfleet/keyfleet/server/broker"
	"github.com/keyfleet/keyfleet/server/escrow"
	"github.com/keyfleet/keyfleet/server/online"
	"github.com/keyfleet/keyfleet/server/rotation"
	"github.com/keyfleet/keyfleet/server/store"
	"github.com/keyfleet/keyfleet/server/trust"
)

// Server is a running fleetd.
type Server struct {
	cfg    Config
	log    *slog.Logger
	st     *store.Bolt
	keys   custody
	ca     issuer
	birth  *certs.CA
	chain  *trust.Chain
	escrow *escrow.Escrow
	root   *x509.Certificate // the first root: what fleetctl's ca.pem holds
	keeper *online.Keeper
	codec  *protocol.Codec
	engine *rotation.Engine
	broker *broker.Embedded
	admin  *http.Server
	adminL net.Listener
	tlsCrt atomic.Pointer[tls.Certificate]
	tlsKey crypto.Signer
	fw     atomic.Pointer[firmwareRelease]
	update []byte

	rotMu sync.Mutex // one anchor rotation, or certificate renewal, at a time

	mu       sync.Mutex
	conn     *mqttc.Conn
	renewals atomic.Uint64

	cancel context.CancelFunc
	wg     sync.WaitGroup
}

// Start opens the deployment Init made in cfg.DataDir and serves until ctx
// ends or Close is called.
func Start(ctx context.Context, cfg Config) (_ *Server, err error) {
	if err := cfg.setDefaults(); err != nil {
		return nil, err
	}
	p := Paths{cfg.DataDir}
	s := &Server{cfg: cfg, log: cfg.Logger, codec: protocol.NewCodec()}
	ctx, s.cancel = context.WithCancel(ctx)
	defer func() {
		if err != nil {
			s.Close()
		}
	}()
	roots, err := identity.LoadPEM(p.CACert())
	if err != nil {
		return nil, fmt.Errorf("server: not initialised? %w", err)
	}
	s.root = roots[0]
	if s.update, err = os.ReadFile(p.UpdateKey()); err != nil {
		return nil, fmt.Errorf("server: %w", err)
	}
	crt, err := tls.LoadX509KeyPair(p.ServerCert(), p.ServerKey())
	if err != nil {
		return nil, fmt.Errorf("server: TLS credential: %w", err)
	}
	s.tlsCrt.Store(&crt)
	var ok bool
	if s.tlsKey, ok = crt.PrivateKey.(crypto.Signer); !ok {
		return nil, errors.New("server: TLS key is not a signer")
	}
	if s.keys, err = openCustody(&s.cfg); err != nil {
		return nil, err
	}
	if s.chain, err = trust.Open(p.Anchors(), s.keys, cfg.Now); errors.Is(err, trust.ErrNoChain) {
		// A deployment made before anchor chains: its root and update key
		// become version 1.
		s.chain, err = trust.Genesis(p.Anchors(), s.keys, s.root, firstLabels, cfg.Now)
	}
	if err != nil {
		return nil, err
	}
	if s.birth, err = ensureBirthCA(s.keys, p, cfg.Now); err != nil {
		return nil, err
	}
	if err := s.loadCA(); err != nil {
		return nil, err
	}
	if err := s.checkTLS(ctx); err != nil {
		return nil, err
	}
	updKey, err := s.chain.Signer(trust.RoleUpdate)
	if err != nil {
		return nil, err
	}
	if s.keeper, err = online.NewKeeper(s.codec, updKey, cfg.Now(), cfg.OnlineKeyLifetime); err != nil {
		return nil, err
	}
	if s.st, err = store.OpenBolt(p.Store(), store.BoltOptions{Now: cfg.Now}); err != nil {
		return nil, err
	}
	if s.escrow, err = escrow.New(s.keys, s.st, cfg.Policy, cfg.Now); err != nil {
		return nil, err
	}
	if err := s.loadFirmware(); err != nil {
		return nil, err
	}
	s.engine = rotation.New(s.st, &s.ca, s.keeper, s.codec, rotation.Options{
		Policy: cfg.Policy, Grace: cfg.Grace, CommandTTL: cfg.CommandTTL, Workers: cfg.Workers, Topics: cfg.Topics,
		Now: cfg.Now, Logger: cfg.Logger, OnStateChange: cfg.OnStateChange,
		Anchors: s.chain, DataKeys: s.escrow, Firmware: s,
	})
	if err := s.engine.Start(ctx); err != nil {
		return nil, err
	}
	brokerAddr := cfg.ExternalBroker
	if brokerAddr == "" {
		s.broker, err = broker.Start(broker.Options{
			Addr:  cfg.MQTTAddr,
			TLS:   &tls.Config{GetCertificate: s.getCertificate},
			Trust: s, Policy: cfg.Policy, Now: cfg.Now,
			Checker: s.engine, Topics: cfg.Topics, Logger: cfg.Logger,
			OnRestore: func(device string) {
				if err := s.engine.Resend(ctx, device); err != nil {
					s.log.Warn("resend after a restored session failed", "device", device, "err", err)
				}
			},
		})
		if err != nil {
			return nil, err
		}
		brokerAddr = s.broker.Addr()
		s.engine.SetSessionCloser(s.broker)
	}
	s.cfg.MQTTAddr = brokerAddr
	if err := s.connect(ctx); err != nil {
		return nil, err
	}
	s.wg.Add(1)
	go func() { defer s.wg.Done(); s.supervise(ctx) }()
	if err := s.serveAdmin(); err != nil {
		return nil, err
	}
	s.log.Info("fleetd serving", "mqtt", brokerAddr, "admin", s.adminL.Addr().String(),
		"ca_key", s.keys.URI(LabelCA), "embedded_broker", s.broker != nil)
	return s, nil
}

// connect opens the engine's MQTT session.
func (s *Server) connect(ctx context.Context) error {
	host, _, _ := net.SplitHostPort(s.cfg.MQTTAddr)
	lost := make(chan struct{})
	conn, err := mqttc.Dial(ctx, mqttc.Options{
		Broker:   s.cfg.MQTTAddr,
		ClientID: "fleetd-" + fmt.Sprintf("%x", protocol.NewID()[:4]),
		TLS: &tls.Config{GetClientCertificate: s.getClientCertificate, RootCAs: s.chain.Roots(), ServerName: serverName(host),
			MinVersion: tls.VersionTLS12, Time: s.cfg.Now},
		Subscriptions: []string{s.cfg.Topics.SharedUp(broker.ServerShareGroup), s.cfg.Topics.SharedReenroll(broker.ServerShareGroup)},
		OnMessage:     func(topic string, payload []byte) { s.engine.Submit(ctx, topic, payload) },
		OnLost: func(err error) {
			s.log.Warn("fleetd lost its broker connection; reconnecting", "err", err)
			close(lost)
		},
	})
	if err != nil {
		return fmt.Errorf("server: connect to broker: %w", err)
	}
	s.mu.Lock()
	if ctx.Err() != nil { // Close ran meanwhile: do not leave this one open
		s.mu.Unlock()
		conn.Close()
		return ctx.Err()
	}
	s.conn = conn
	s.mu.Unlock()
	s.engine.SetPublisher(conn)
	if err := s.publishAnchors(ctx, conn, false); err != nil {
		s.log.Warn("anchors not published", "err", err)
	}
	go func() {
		select {
		case <-lost:
			s.mu.Lock()
			if s.conn == conn {
				s.conn = nil
			}
			s.mu.Unlock()
		case <-ctx.Done():
		}
	}()
	return nil
}

func serverName(host string) string {
	if host == "" || host == "0.0.0.0" || host == "::" {
		return "localhost"
	}
	return host
}

// supervise reconnects the MQTT session and renews the online key.
func (s *Server) supervise(ctx context.Context) {
	backoff := 100 * time.Millisecond
	lastTLSCheck := time.Now()
	t := time.NewTicker(time.Second)
	defer t.Stop()
	for {
		select {
		case <-ctx.Done():
			return
		case <-t.C:
		}
		s.mu.Lock()
		conn := s.conn
		s.mu.Unlock()
		if conn == nil {
			if err := s.connect(ctx); err != nil {
				s.log.Warn("broker reconnect failed", "err", err, "retry_in", backoff)
				select {
				case <-ctx.Done():
					return
				case <-time.After(backoff):
				}
				backoff = min(backoff*2, 10*time.Second)
				continue
			}
			backoff = 100 * time.Millisecond
			s.mu.Lock()
			conn = s.conn
			s.mu.Unlock()
			if conn == nil {
				continue
			}
		}
		if time.Since(lastTLSCheck) > time.Minute {
			lastTLSCheck = time.Now()
			s.rotMu.Lock() // not while an anchor rotation re-issues it
			err := s.checkTLS(ctx)
			s.rotMu.Unlock()
			if err != nil {
				s.log.Error("TLS certificate renewal failed", "err", err)
			}
		}
		if s.keeper.Due(s.cfg.Now()) {
			k, err := s.keeper.Rotate(s.cfg.Now())
			if err != nil {
				s.log.Error("online key renewal failed", "err", err)
				continue
			}
			// Devices connected now learn it at once; the others get it
			// in answer to their next hello, which names the one they hold.
			if err := conn.Publish(ctx, s.cfg.Topics.Delegation(), k.Delegation); err != nil {
				s.log.Error("delegation broadcast failed", "err", err)
			}
			s.renewals.Add(1)
			s.log.Info("online signing key renewed", "kid", fmt.Sprintf("%x", k.KID()), "not_after", k.NotAfter)
		}
	}
}

func (s *Server) serveAdmin() error {
	l, err := net.Listen("tcp", s.cfg.AdminAddr)
	if err != nil {
		return fmt.Errorf("server: admin listen %s: %w", s.cfg.AdminAddr, err)
	}
	s.adminL = l
	s.admin = &http.Server{
		Handler: admin.Handler(s, s.log),
		TLSConfig: &tls.Config{
			// Read per connection: a rotation of the anchors adds a root
			// and replaces fleetd's certificate without a restart.
			GetConfigForClient: func(*tls.ClientHelloInfo) (*tls.Config, error) {
				return &tls.Config{GetCertificate: s.getCertificate, ClientCAs: s.chain.Roots(), Time: s.cfg.Now,
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

// OnlineKeyRenewals counts online signing keys made since start, after the first.
func (s *Server) OnlineKeyRenewals() uint64 { return s.renewals.Load() }

// MQTTAddr is where devices connect.
func (s *Server) MQTTAddr() string { return s.cfg.MQTTAddr }

// AdminAddr is the admin API's address.
func (s *Server) AdminAddr() string { return s.adminL.Addr().String() }

// Engine exposes the rotation engine (tests, the simulator's in-process mode).
func (s *Server) Engine() *rotation.Engine { return s.engine }

// Broker returns the embedded broker, or nil with an external one.
func (s *Server) Broker() *broker.Embedded { return s.broker }

// Store exposes the store for tests.
func (s *Server) Store() store.Store { return s.st }

// HSMOps counts private-key operations in the token so far.
func (s *Server) HSMOps() uint64 {
	if s.keys == nil {
		return 0
	}
	return s.keys.Ops()
}

// Close stops serving and releases everything.
func (s *Server) Close() error {
	if s.cancel != nil {
		s.cancel()
	}
	if s.admin != nil {
		ctx, cancel := context.WithTimeout(context.Background(), 2*time.Second)
		_ = s.admin.Shutdown(ctx)
		cancel()
	}
	s.mu.Lock()
	if s.conn != nil {
		s.conn.Close()
		s.conn = nil
	}
	s.mu.Unlock()
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

// Provision implements admin.Backend.
func (s *Server) Provision(ctx context.Context, device string, csr, birthCSR *x509.CertificateRequest, actor string) (admin.ProvisionResponse, error) {
	var birth *x509.Certificate
	if birthCSR != nil {
		var err error
		if birth, err = s.issueBirth(ctx, device, birthCSR); err != nil {
			return admin.ProvisionResponse{}, err
		}
	}
	cert, err := s.engine.Provision(ctx, device, csr, birth, actor)
	if err != nil {
		return admin.ProvisionResponse{}, err
	}
	resp := s.bundle()
	resp.ID, resp.Cert = device, string(identity.EncodePEM(cert))
	if birth != nil {
		resp.Birth = string(identity.EncodePEM(birth))
	}
	return resp, nil
}

// ProvisionBatch implements admin.Backend.
func (s *Server) ProvisionBatch(ctx context.Context, items []rotation.ProvisionItem, actor string) (admin.BatchProvisionResponse, error) {
	birthErr := make([]error, len(items))
	for i := range items {
		if items[i].BirthCSR != nil {
			items[i].Birth, birthErr[i] = s.issueBirth(ctx, items[i].ID, items[i].BirthCSR)
		}
	}
	var good []rotation.ProvisionItem
	var idx []int
	for i := range items {
		if birthErr[i] == nil {
			good, idx = append(good, items[i]), append(idx, i)
		}
	}
	res := make([]rotation.ProvisionResult, len(items))
	for k, r := range s.engine.ProvisionBatch(ctx, good, actor) {
		res[idx[k]] = r
	}
	b := s.bundle()
	out := admin.BatchProvisionResponse{CA: b.CA, UpdateKey: b.UpdateKey, Broker: b.Broker, Anchors: b.Anchors}
	for i, r := range res {
		br := admin.BatchResult{ID: items[i].ID}
		switch {
		case birthErr[i] != nil:
			br.Error = birthErr[i].Error()
		case r.Err != nil:
			br.Error = r.Err.Error()
		default:
			br.Cert = r.Cert.Raw
			if items[i].Birth != nil {
				br.Birth = items[i].Birth.Raw
			}
		}
		out.Results = append(out.Results, br)
	}
	return out, nil
}

func (s *Server) advertised() string {
	if s.cfg.AdvertiseMQTT != "" {
		return s.cfg.AdvertiseMQTT
	}
	return s.cfg.MQTTAddr
}

// RequestRotation implements admin.Backend.
func (s *Server) RequestRotation(ctx context.Context, device, actor string) (rotation.Rotation, error) {
	return s.engine.RequestRotation(ctx, device, actor)
}

// GetDevice implements admin.Backend.
func (s *Server) GetDevice(ctx context.Context, id string) (*store.Device, error) {
	return s.st.GetDevice(ctx, id)
}

// ForEachDevice implements admin.Backend.
func (s *Server) ForEachDevice(ctx context.Context, fn func(*store.Device) error) error {
	return s.st.ForEachDevice(ctx, fn)
}

// VerifyAudit implements admin.Backend.
func (s *Server) VerifyAudit(ctx context.Context) (uint64, error) { return s.st.VerifyAudit(ctx) }

// Status implements admin.Backend.
func (s *Server) Status(ctx context.Context) (admin.Status, error) {
	st := s.engine.Stats()
	out := admin.Status{ByState: map[string]int{}, Requested: st.Requested, Issued: st.Issued, Activated: st.Activated,
		Retired: st.Retired, Rejected: st.Rejected, HSMOps: s.HSMOps(), Broker: s.cfg.MQTTAddr,
		RSSBytes: procstat.RSS(), Goroutines: procstat.Goroutines(),
		Reenrolled: st.Reenrolled, RenewedAfterExpiry: st.RenewedExpired, OldKeyUplinks: st.OldKeyUplinks,
		OldKeyConnects: st.OldKeyConnects, DataKeysSent: st.DataKeysSent, AnchorsVersion: s.chain.AnchorVersion()}
	out.FirmwareVersion, _ = s.CurrentFirmware()
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
