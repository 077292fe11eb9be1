package server

import (
	"cmp"
	"context"
	"crypto/tls"
	"errors"
	"sync"
	"time"

	"github.com/keyfleet/keyfleet/protocol"
	"github.com/keyfleet/keyfleet/server/admin"
	"github.com/keyfleet/keyfleet/server/broker"
	"github.com/keyfleet/keyfleet/server/brokerhook"
	"github.com/keyfleet/keyfleet/server/campaign"
	"github.com/keyfleet/keyfleet/server/cluster"
	"github.com/keyfleet/keyfleet/server/custody"
	"github.com/keyfleet/keyfleet/server/datadir"
	"github.com/keyfleet/keyfleet/server/escrow"
	"github.com/keyfleet/keyfleet/server/inventory"
	"github.com/keyfleet/keyfleet/server/issuing"
	"github.com/keyfleet/keyfleet/server/link"
	"github.com/keyfleet/keyfleet/server/metrics"
	"github.com/keyfleet/keyfleet/server/mosquitto/dynsec"
	"github.com/keyfleet/keyfleet/server/ops"
	"github.com/keyfleet/keyfleet/server/policy"
	"github.com/keyfleet/keyfleet/server/policyrun"
	"github.com/keyfleet/keyfleet/server/provisioning"
	"github.com/keyfleet/keyfleet/server/release"
	"github.com/keyfleet/keyfleet/server/rotation"
	"github.com/keyfleet/keyfleet/server/status"
	"github.com/keyfleet/keyfleet/server/statuspage"
	"github.com/keyfleet/keyfleet/server/store"
	"github.com/keyfleet/keyfleet/server/trust"
)

// Server is a running fleetd: its parts, built from a Config.
type Server struct {
	cfg      Config
	st       store.Store
	keys     custody.Keys
	trust    *trust.Service
	releases *release.Releases
	engine   *rotation.Engine
	broker   *broker.Embedded
	link     link.Link // usable before it connects
	node     *cluster.Node
	admin    *admin.Server
	cancel   context.CancelFunc
	wg       sync.WaitGroup
	closers  []func() error // in start order; Close runs them backwards
}

// Start opens the deployment Init made in cfg.DataDir and serves until ctx
// ends or Close is called.
func Start(ctx context.Context, cfg Config) (_ *Server, err error) {
	if err := cfg.setDefaults(); err != nil {
		return nil, err
	}
	p := datadir.Paths{Dir: cfg.DataDir}
	if err := p.Initialised(); err != nil {
		return nil, err
	}
	s := &Server{cfg: cfg, st: cfg.Store}
	ctx, s.cancel = context.WithCancel(ctx)
	defer func() {
		if err != nil {
			s.Close()
		}
	}()
	if s.keys, err = custody.OpenIn(cfg.HSM, cfg.InsecureSoftKeys, cfg.DataDir, cfg.Logger); err != nil {
		return nil, err
	}
	s.closers = append(s.closers, s.keys.Close)
	if s.st == nil {
		if s.st, err = store.OpenBolt(p.Store(), store.BoltOptions{Now: cfg.Now}); err != nil {
			return nil, err
		}
	}
	s.closers = append(s.closers, s.st.Close)
	pols, err := policyrun.Open(ctx, policyrun.Options{Store: s.st, Seed: cfg.PolicyFile, Base: cfg.Policy, Now: cfg.Now, Logger: cfg.Logger,
		Overrides: policy.Overrides{Grace: cfg.Grace, CertValidity: cfg.CertValidity}})
	if err != nil {
		return nil, err
	}
	m := metrics.New(s.st, s.keys, metrics.Options{Now: cfg.Now, Logger: cfg.Logger})
	dyn := dynsec.New(cfg.ExternalBroker, s.st, cfg.Topics, cfg.Logger).WithCAFile(cfg.BrokerCAFile, cfg.BrokerReload).WithCRLFile(cfg.BrokerCRLFile, cfg.BrokerCRLReload, pols.Holder()) // an external Mosquitto kept in step
	s.keys, cfg.OnStateChange = m.Keys(), dyn.Observe(m.Observe(cfg.OnStateChange))                                                                                                       // every signature timed, every change counted
	codec := protocol.NewCodec()
	s.node = cluster.Join(ctx, &s.wg, s.st, cluster.Options{NodeID: cfg.NodeID, Codec: codec, Topics: cfg.Topics, Now: cfg.Now, Logger: cfg.Logger, PolicyReload: pols.Reload, Resync: dyn.Resync,
		Delegations: func() [][]byte { return cluster.Delegations(s.trust.Keeper().Current()) }}) // leaves when ctx ends, before the store closes
	dyn.SetReplay(s.node.ReplayGate()) // workers sharing a Mosquitto: the leader alone replays the fleet to it
	if s.trust, err = trust.NewService(ctx, trust.Options{Files: p.Trust(), Keys: s.keys, CertValidity: pols.Holder().Current().CertValidity.D(),
		OnlineKeyLifetime: cfg.OnlineKeyLifetime, Codec: codec, Topics: cfg.Topics, Audit: s.st, Publisher: s.node.Publisher(&s.link),
		OnChange: cfg.OnStateChange, Now: cfg.Now, Logger: cfg.Logger}); err != nil {
		return nil, err
	}
	chain := s.trust.Chain()
	escrowed, err := escrow.New(s.keys, s.st, pols.Holder(), cfg.Now)
	if err != nil {
		return nil, err
	}
	if s.releases, err = release.Open(release.Options{File: p.Firmware(), Key: s.trust.FirmwareKey, Audit: s.st,
		Publisher: s.node.Publisher(&s.link), Codec: codec, Topics: cfg.Topics, OnChange: cfg.OnStateChange, Now: cfg.Now,
		Logger: cfg.Logger}); err != nil {
		return nil, err
	}
	iss, err := issuing.Open(ctx, cfg.Issuer, s.trust, s.keys, cfg.Logger)
	if err != nil {
		return nil, err
	}
	s.node.Freeze(s.trust, s.releases) // after the issuers are in the anchor set: node-local files stay as they are in a cluster
	s.engine = rotation.New(s.st, iss, s.trust.Keeper(), codec, rotation.Options{
		Policy: pols.Holder(), CommandTTL: cfg.CommandTTL, Workers: cfg.Workers, Topics: cfg.Topics,
		Now: cfg.Now, Logger: cfg.Logger, OnStateChange: cfg.OnStateChange,
		Anchors: chain, DataKeys: escrowed, Firmware: s.releases,
	})
	s.engine.SetPublisher(s.node.Publisher(&s.link))
	escrowed.SetHooks(escrow.Hooks{Push: s.engine, OnChange: cfg.OnStateChange, Logger: cfg.Logger})
	if err := s.engine.Start(ctx); err != nil {
		return nil, err
	}
	if err := s.startBroker(ctx, pols.Holder(), iss.Trust(s.trust), dyn); err != nil {
		return nil, err
	}
	s.closers = append(s.closers, func() error { s.link.Close(); return nil })
	if err := s.link.Start(ctx, link.Options{Broker: s.cfg.MQTTAddr, Logger: cfg.Logger, Now: cfg.Now, NoRetain: dyn.Managed(),
		Certificate: s.trust.GetClientCertificate, Roots: s.trust.Roots, OnConnect: s.trust.Announce,
		Subscriptions: []string{cfg.Topics.SharedUp(broker.ServerShareGroup), cfg.Topics.SharedReenroll(broker.ServerShareGroup)},
		OnMessage:     func(topic string, payload []byte) { s.engine.Submit(ctx, topic, payload) },
	}); err != nil {
		return nil, err
	}
	s.wg.Add(1)
	go func() { defer s.wg.Done(); s.trust.Run(ctx) }()
	s.closers = append(s.closers, m.Start(ctx, s.engine, s.broker)) // the closer waits for its periodic work
	station := provisioning.New(s.engine, s.trust.BirthCA(), chain, cmp.Or(cfg.AdvertiseMQTT, s.cfg.MQTTAddr))
	counters := status.Sources{Engine: s.engine, Devices: s.st, HSM: s.keys, Anchors: chain, Firmware: s.releases,
		Broker: s.broker, BrokerAddr: s.cfg.MQTTAddr, Process: m}
	parts := admin.Parts{Devices: s.st, Provision: dyn.Provisioner(station), Rotations: s.engine, Revoker: iss.Revoker(m.Revoker(s.engine), s.st),
		Anchors: s.trust, DataKeys: escrowed, Escrow: escrowed, Firmware: s.releases, Status: counters, Audit: s.st,
		Inventory: inventory.NewLabeler(s.st), Policies: pols, Broker: s.trust, BrokerHooks: brokerhook.New(s.st, cfg.Topics, cfg.Logger)}
	if s.broker != nil { // an external broker's sessions are unknown
		parts.Sessions = s.node.Sessions(s.broker) // the whole cluster's
	}
	if c := campaign.NewFor(s.st, campaign.Parts{Engine: s.engine, Escrow: escrowed, Releases: s.releases, Trust: s.trust, Devices: s.st},
		campaign.Options{Sessions: parts.Sessions, Observer: m.Campaigns(), Clustered: s.node.Clustered(), Now: cfg.Now, Logger: cfg.Logger}); c != nil { // a store without campaigns runs none
		parts.Campaigns = c
		s.node.RunLeader(ctx, &s.wg, c.Run, pols.Scheduler(c.Store(), c).Run, s.node.AtTakeover(dyn.Replay), // on one node of a cluster: the lease holder
			s.node.Every("grace sweep", 2*time.Second, func(ctx context.Context) error { _, err := s.engine.SweepGrace(ctx, 2*time.Second); return err }))
	}
	if s.admin, err = admin.Listen(cfg.AdminAddr, parts, s.trust, cfg.Now, cfg.Logger); err != nil {
		return nil, err
	}
	s.closers = append(s.closers, s.admin.Close)
	page := statuspage.New(statuspage.Sources{Devices: s.st, Audit: s.st, Anchors: chain, Firmware: s.releases, SLIs: m,
		Sessions: parts.Sessions, Campaigns: statuspage.FromCampaigns(parts.Campaigns)}, statuspage.Options{Now: cfg.Now, Logger: cfg.Logger})
	if s.cfg.OpsAddr, err = ops.Listen(ctx, cfg.OpsAddr, m.Handler(), page, ops.Ready{Store: s.st, Keys: s.keys, Broker: s.broker,
		Link: &s.link}, cfg.Logger); err != nil { // closed when ctx ends
		return nil, err
	}
	cfg.Logger.Info("fleetd serving", "mqtt", s.cfg.MQTTAddr, "admin", s.admin.Addr(),
		"ca_key", s.keys.URI(trust.LabelCA), "embedded_broker", s.broker != nil)
	return s, nil
}

// startBroker starts the upkeep of an external broker (of its files with
// any broker), or else the embedded broker on cfg.MQTTAddr.
func (s *Server) startBroker(ctx context.Context, pol policy.Source, trust broker.Trust, dyn *dynsec.Sync) (err error) {
	if err = dyn.Start(ctx, s.node.WrapCloserSetter(s.engine), s.trust.GetClientCertificate, s.trust.Roots, s.trust.Chain()); err != nil || s.cfg.ExternalBroker != "" {
		s.cfg.MQTTAddr = dyn.Addr() // the broker's files are kept with the embedded broker too: they exist before Mosquitto first starts
		return err
	}
	s.broker, err = broker.Start(broker.Options{
		Addr: s.cfg.MQTTAddr, TLS: &tls.Config{GetCertificate: s.trust.GetCertificate},
		Trust: trust, Policy: pol, Now: s.cfg.Now,
		Checker: s.engine, Topics: s.cfg.Topics, Logger: s.cfg.Logger, OnSession: s.node.SessionObserver(), AwaitServer: true,
		OnRestore: s.engine.ResendOnRestore(ctx),
	})
	if err != nil {
		return err
	}
	s.closers = append(s.closers, s.broker.Close)
	s.engine.SetSessionCloser(s.node.Closer(s.broker))
	s.cfg.MQTTAddr = s.broker.Addr()
	return nil
}

// MQTTAddr is where devices connect.
func (s *Server) MQTTAddr() string { return s.cfg.MQTTAddr }

// AdminAddr is the admin API's address.
func (s *Server) AdminAddr() string { return s.admin.Addr() }

// OpsAddr is the ops listener's address (metrics, health); "" when off.
func (s *Server) OpsAddr() string { return s.cfg.OpsAddr }

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
func (s *Server) HSMOps() uint64 { return s.keys.Ops() }

// Close stops serving and releases everything, the store included: the
// parts in the reverse of the order Start made them.
func (s *Server) Close() error {
	s.cancel()
	s.wg.Wait()
	if s.engine != nil { // its workers stop with ctx; wait for them before the broker and the store close
		s.engine.Wait()
	}
	var errs []error
	for i := len(s.closers) - 1; i >= 0; i-- {
		errs = append(errs, s.closers[i]())
	}
	s.closers = nil
	return errors.Join(errs...)
}
