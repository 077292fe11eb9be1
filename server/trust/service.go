package trust

import (
	"context"
	"crypto"
	"crypto/tls"
	"crypto/x509"
	"errors"
	"fmt"
	"log/slog"
	"sync"
	"sync/atomic"
	"time"

	"github.com/keyfleet/keyfleet/certs/identity"

	"github.com/keyfleet/keyfleet/certs"
	"github.com/keyfleet/keyfleet/protocol"
	"github.com/keyfleet/keyfleet/server/lifecycle"
	"github.com/keyfleet/keyfleet/server/online"
	"github.com/keyfleet/keyfleet/server/store"
)

// Files are where a deployment keeps its trust material, all under
// fleetd's data directory.
type Files struct {
	// Anchors is the directory of the anchor chain, one file per version.
	Anchors string
	// CACert is the first root (what operators' ca.pem holds); its
	// presence marks a finished init.
	CACert string
	// UpdateKey is the first update key's public key, PEM.
	UpdateKey string
	// ServerCert and ServerKey are fleetd's TLS credential (PEM): broker
	// endpoint, MQTT client, admin API.
	ServerCert, ServerKey string
	// AdminDir receives the first operator credential at init.
	AdminDir string
	// BirthCA is the birth CA's root certificate.
	BirthCA string
}

// Publisher sends on fleetd's MQTT session; *link.Link satisfies it.
type Publisher interface {
	Publish(ctx context.Context, topic string, payload []byte) error
	PublishRetained(ctx context.Context, topic string, payload []byte) error
}

// Auditor appends audit records that belong to no device.
type Auditor interface {
	Audit(ctx context.Context, events ...store.Event) error
}

// Options configures a Service. Fields marked required have no default.
type Options struct {
	Files Files
	// Keys is the key custody (token or soft keys). Required.
	Keys Keys
	// FirstLabels name the keys of anchor version 1 (a deployment made
	// before anchor chains gets its chain made from them at start); zero
	// means LabelCA, LabelUpdate, LabelFirmware.
	FirstLabels Labels
	// BirthLabel names the birth CA's key; empty means LabelBirthCA.
	BirthLabel string
	// CertValidity is the lifetime of device certificates. Required.
	CertValidity time.Duration
	// OnlineKeyLifetime is the lifetime of each online signing key.
	// Required.
	OnlineKeyLifetime time.Duration
	// Codec seals anchors and delegations. Required.
	Codec  *protocol.Codec
	Topics protocol.Topics
	// Audit records anchor rotations. Required.
	Audit Auditor
	// Publisher is fleetd's MQTT session: anchors and delegations go out
	// on it. Required.
	Publisher Publisher
	// OnChange, if set, is told of every anchor set made current.
	OnChange func(lifecycle.Change)
	// Now is the clock; nil means time.Now.
	Now func() time.Time
	// Logger; nil means slog.Default().
	Logger *slog.Logger
}

// Service is fleetd's trust: the anchor chain, the CA that issues under
// its current root, fleetd's own TLS credential and the online signing
// key certified by its current update key. It rotates the anchors and
// keeps the TLS credential and the online key fresh. It is safe for
// concurrent use.
type Service struct {
	opts   Options
	log    *slog.Logger
	chain  *Chain
	ca     atomic.Pointer[certs.CA]
	tls    atomic.Pointer[tls.Certificate]
	tlsKey crypto.Signer
	keeper *online.Keeper
	birth  *certs.CA

	rotMu     sync.Mutex // one anchor rotation, or TLS renewal, at a time
	renewals  atomic.Uint64
	clustered atomic.Bool // SetClustered
}

// SetClustered refuses every change of the anchor chain (Rotate, Prepare,
// Publish, and UseIssuers when the issuers differ from the current set's)
// with store.ErrClustered while several fleetd processes share the store:
// the chain lives in each process's data directory, and a rotation through
// one process would leave the others with brokers that refuse the new
// root's certificates and anchor sets that devices have left behind.
func (s *Service) SetClustered(on bool) { s.clustered.Store(on) }

// refuseClustered is the error of a chain change asked for while
// clustered.
func (s *Service) refuseClustered(what string) error {
	if s.clustered.Load() {
		return fmt.Errorf("trust: %s: %w", what, store.ErrClustered)
	}
	return nil
}

// NewService loads the chain (making version 1 for a deployment that
// predates chains), the issuing CA, the birth CA (made if the deployment
// predates it), fleetd's TLS credential (re-issued if it is not under the
// current root or is old) and makes a first online key, certified also by
// a prepared set's update key if a staged roll-out is under way.
func NewService(ctx context.Context, opts Options) (*Service, error) {
	opts.setDefaults()
	s := &Service{opts: opts, log: opts.Logger}
	var err error
	if s.chain, err = Open(opts.Files.Anchors, opts.Keys, opts.Now); errors.Is(err, ErrNoChain) {
		roots, lerr := identity.LoadPEM(opts.Files.CACert)
		if lerr != nil {
			return nil, fmt.Errorf("trust: not initialised? %w", lerr)
		}
		s.chain, err = Genesis(opts.Files.Anchors, opts.Keys, roots[0], opts.FirstLabels, opts.Now)
	}
	if err != nil {
		return nil, err
	}
	if s.birth, err = OpenBirthCA(opts.Keys, opts.BirthLabel, opts.Files.BirthCA, opts.Now); err != nil {
		return nil, err
	}
	if err := s.loadTLS(); err != nil {
		return nil, err
	}
	if err := s.loadCA(); err != nil {
		return nil, err
	}
	if err := s.checkTLS(ctx); err != nil {
		return nil, err
	}
	upd, err := s.chain.Signer(RoleUpdate)
	if err != nil {
		return nil, err
	}
	if s.keeper, err = online.NewKeeper(opts.Codec, upd, opts.Now(), opts.OnlineKeyLifetime); err != nil {
		return nil, err
	}
	// A staged roll-out under way: its devices verify the online key
	// through the prepared set's update key.
	if err := s.certifyNext(); err != nil {
		return nil, err
	}
	return s, nil
}

func (o *Options) setDefaults() {
	if o.FirstLabels == (Labels{}) {
		o.FirstLabels = Labels{CA: LabelCA, Update: LabelUpdate, Firmware: LabelFirmware}
	}
	if o.BirthLabel == "" {
		o.BirthLabel = LabelBirthCA
	}
	if o.Now == nil {
		o.Now = time.Now
	}
	if o.Logger == nil {
		o.Logger = slog.Default()
	}
}

// Chain is the anchor chain.
func (s *Service) Chain() *Chain { return s.chain }

// Keeper holds the online signing key the engine seals downlinks with.
func (s *Service) Keeper() *online.Keeper { return s.keeper }

// Roots implements broker.Trust's identity half (and is what fleetd's own
// clients trust): every root of the chain.
func (s *Service) Roots() *x509.CertPool { return s.chain.Roots() }

// FirmwareKey is the current anchor set's firmware-signing key.
func (s *Service) FirmwareKey() (crypto.Signer, error) { return s.chain.Signer(RoleFirmware) }

// Issue implements certs.Issuer with the current root's CA: a rotation of
// the root takes effect for the next certificate.
func (s *Service) Issue(ctx context.Context, req certs.Request) (*x509.Certificate, error) {
	return s.ca.Load().Issue(ctx, req)
}

// loadCA makes the current anchor set's root and key the issuing CA.
func (s *Service) loadCA() error {
	key, err := s.chain.Signer(RoleCA)
	if err != nil {
		return err
	}
	ca, err := certs.NewCA(s.chain.Root(), key, certs.CAOptions{Validity: s.opts.CertValidity, Now: s.opts.Now})
	if err != nil {
		return err
	}
	s.ca.Store(ca)
	return nil
}

// OnlineKeyRenewals counts online signing keys made since NewService, after the
// first.
func (s *Service) OnlineKeyRenewals() uint64 { return s.renewals.Load() }

// Run keeps the credentials fresh until ctx ends: it renews the online key
// at half its life (broadcasting the new delegation) and checks fleetd's
// TLS certificate every minute.
func (s *Service) Run(ctx context.Context) {
	lastTLSCheck := time.Now()
	t := time.NewTicker(time.Second)
	defer t.Stop()
	for {
		select {
		case <-ctx.Done():
			return
		case <-t.C:
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
		if s.keeper.Due(s.opts.Now()) {
			s.rotMu.Lock() // not while a rotation or roll-out certifies keys
			s.renewOnlineKey(ctx)
			s.rotMu.Unlock()
		}
	}
}

func (s *Service) renewOnlineKey(ctx context.Context) {
	k, err := s.keeper.Rotate(s.opts.Now())
	if err != nil {
		s.log.Error("online key renewal failed", "err", err)
		return
	}
	// Devices connected now learn it at once; the others get it in answer
	// to their next hello, which names the one they hold.
	if err := s.opts.Publisher.Publish(ctx, s.opts.Topics.Delegation(), k.Delegation); err != nil {
		s.log.Error("delegation broadcast failed", "err", err)
	}
	s.renewals.Add(1)
	s.log.Info("online signing key renewed", "kid", fmt.Sprintf("%x", k.KID()), "not_after", k.NotAfter)
}
