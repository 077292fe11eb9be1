package dynsec

import (
	"context"
	"crypto/tls"
	"crypto/x509"
	"encoding/json"
	"errors"
	"fmt"
	"log/slog"
	"slices"
	"strings"
	"sync"
	"time"

	"github.com/keyfleet/keyfleet/protocol"
	"github.com/keyfleet/keyfleet/server/link"
	"github.com/keyfleet/keyfleet/server/mosquitto"
	"github.com/keyfleet/keyfleet/server/provisioning"
	"github.com/keyfleet/keyfleet/server/rotation"
	"github.com/keyfleet/keyfleet/server/store"
)

// Control topics of the dynamic-security plugin.
const (
	controlTopic  = "$CONTROL/dynamic-security/v1"
	responseTopic = controlTopic + "/response"
)

// commandTimeout bounds one command message to the broker (its PUBACK).
const commandTimeout = 3 * time.Second

// retryEvery is how often devices whose commands could not be sent are
// tried again.
const retryEvery = time.Second

// Devices is what Sync reads of the store.
type Devices interface {
	GetDevice(ctx context.Context, id string) (*store.Device, error)
	ForEachDevice(ctx context.Context, fn func(d *store.Device) error) error
}

// SessionCloserSetter is the rotation engine's hook for dropping sessions.
type SessionCloserSetter interface {
	SetSessionCloser(c rotation.SessionCloser)
}

// Sync keeps a Mosquitto broker's dynamic-security clients in step with
// fleetd's devices. Built by New for every fleetd; it does nothing unless
// the external broker is given as mosquitto://HOST:PORT.
type Sync struct {
	addr    string
	managed bool
	st      Devices
	topics  protocol.Topics
	log     *slog.Logger

	ctl link.Link // fleetd's admin session at the broker
	// order serializes read-then-send per command message, so that a
	// replay that read a device before its revocation cannot send after
	// the revocation's delete.
	order sync.Mutex
	mu    sync.Mutex
	retr  map[string]bool // devices whose commands failed: retried
	gate  func() bool     // SetReplay: whether this process replays at connect

	caMu sync.Mutex // one write of the broker's files and reload at a time
	ca   caFile
	crl  crlFile
}

// New reads external (--external-broker) and returns the Sync for it.
func New(external string, st Devices, topics protocol.Topics, log *slog.Logger) *Sync {
	if log == nil {
		log = slog.Default()
	}
	addr, managed := strings.CutPrefix(external, mosquitto.Scheme)
	return &Sync{addr: addr, managed: managed, st: st, topics: topics, log: log, retr: map[string]bool{}}
}

// Addr is the broker's host:port, without the scheme.
func (s *Sync) Addr() string { return s.addr }

// Managed reports whether fleetd manages the broker's access control.
func (s *Sync) Managed() bool { return s.managed }

// SetReplay makes the replay at each connect of the admin session depend
// on gate: when several fleetd processes (workers) share the broker, only
// the one holding the leader lease replays the fleet. Two replays, or one
// replay and another process's revocation, race: a replay that read a
// device before its revocation was committed can send createClient after
// the revoking process's deleteClient, and the revoked device has its
// client back. One replaying process, which also re-syncs every device
// another process revoked (Resync), makes the delete land last. nil, the
// default, replays always (one fleetd). Call it before Start.
func (s *Sync) SetReplay(gate func() bool) {
	s.mu.Lock()
	defer s.mu.Unlock()
	s.gate = gate
}

// Replay brings the broker in step with the whole store now, and returns
// when every device was sent (what could not be is retried). The process
// that takes the leader lease calls it: its admin session may have
// connected while another process led.
func (s *Sync) Replay(ctx context.Context) {
	if s.managed {
		s.replay(ctx)
	}
}

// Resync brings one device in step with the store now: the leader calls
// it for every device another process revoked (or changed), so that the
// device's state at the broker is the store's whatever the leader's own
// replay sent before. Its read and send are ordered with the replay's.
func (s *Sync) Resync(ctx context.Context, device string) {
	if s.managed {
		s.sync(ctx, device)
	}
}

// replays reports whether this process replays at connect (SetReplay).
func (s *Sync) replays() bool {
	s.mu.Lock()
	gate := s.gate
	s.mu.Unlock()
	return gate == nil || gate()
}

// Provisioner is the admin API's registration (provisioning.Station).
type Provisioner interface {
	Provision(ctx context.Context, device string, csr, birthCSR *x509.CertificateRequest, actor string) (provisioning.Credential, error)
	ProvisionBatch(ctx context.Context, items []rotation.ProvisionItem, actor string) []provisioning.Result
	Bundle() (provisioning.Bundle, error)
}

// Provisioner wraps p so that a device registered through it is a dynsec
// client, allowed its topics, before its credential is handed out. (The
// engine reports registrations only to the audit log, not as state
// changes.) With any broker it refuses the device ids an external broker
// would take for fleetd's or its own (ReservedIDs): brokers that know a
// client by its certificate's CN alone cannot tell them apart.
func (s *Sync) Provisioner(p Provisioner) Provisioner {
	return provisioner{p, s}
}

// ReservedIDs are the certificate names of fleetd (mosquitto.ServerUser)
// and of external brokers (fleetctl broker cert): no device may have them.
var ReservedIDs = []string{mosquitto.ServerUser, "broker"}

// reserved refuses a ReservedIDs id as a bad device id (the admin API
// answers 400 invalid).
func reserved(device string) error {
	if slices.Contains(ReservedIDs, device) {
		return fmt.Errorf("%w: %q is reserved for fleetd and external brokers", protocol.ErrBadDeviceID, device)
	}
	return nil
}

type provisioner struct {
	Provisioner
	s *Sync
}

func (p provisioner) Provision(ctx context.Context, device string, csr, birthCSR *x509.CertificateRequest, actor string) (provisioning.Credential, error) {
	if err := reserved(device); err != nil {
		return provisioning.Credential{}, err
	}
	c, err := p.Provisioner.Provision(ctx, device, csr, birthCSR, actor)
	if err == nil && p.s.managed {
		p.s.sync(ctx, device)
	}
	return c, err
}

func (p provisioner) ProvisionBatch(ctx context.Context, items []rotation.ProvisionItem, actor string) []provisioning.Result {
	out := make([]provisioning.Result, len(items))
	var good []rotation.ProvisionItem
	var idx []int
	for i, it := range items {
		if out[i].Err = reserved(it.ID); out[i].Err == nil {
			good, idx = append(good, it), append(idx, i)
		}
	}
	for k, r := range p.Provisioner.ProvisionBatch(ctx, good, actor) {
		out[idx[k]] = r
		if r.Err == nil && p.s.managed {
			p.s.sync(ctx, good[k].ID)
		}
	}
	return out
}

// Start opens fleetd's admin session at the broker, replays the fleet at
// every connect (unless SetReplay's gate says another process does), and
// becomes the engine's session closer, so that a
// revocation deletes the device's dynsec client (and Mosquitto drops its
// sessions) before Revoke returns. It stops when ctx ends.
//
// With WithCRLFile and WithCAFile, it first writes the broker's CRL and CA
// files from chain (and reloads the broker if that changed them), for any
// external broker, and keeps the CRL file current until ctx ends.
func (s *Sync) Start(ctx context.Context, engine SessionCloserSetter, cert func(*tls.CertificateRequestInfo) (*tls.Certificate, error),
	roots func() *x509.CertPool, chain Roots) error {
	s.caMu.Lock()
	if s.ca.path != "" {
		s.ca.roots = chain.RootCertificates
	}
	if s.crl.path != "" {
		s.crl.roots = chain
	}
	s.caMu.Unlock()
	if err := s.writeFiles(ctx); err != nil {
		return err
	}
	if s.crl.path != "" {
		go s.crlLoop(ctx)
	}
	if !s.managed {
		return nil
	}
	engine.SetSessionCloser(s)
	if err := s.ctl.Start(ctx, link.Options{Broker: s.addr, Certificate: cert, Roots: roots, Logger: s.log,
		Subscriptions: []string{responseTopic}, OnMessage: s.response,
		OnConnect: func(ctx context.Context) {
			if s.replays() {
				go s.replay(ctx)
			}
		}}); err != nil {
		return fmt.Errorf("mosquitto: admin session: %w", err)
	}
	context.AfterFunc(ctx, s.ctl.Close)
	go s.retry(ctx)
	return nil
}

// Disconnect deletes the device's dynsec client: Mosquitto drops every
// session with its user name at once and allows it nothing from then on.
// Mosquitto does not say how many sessions it dropped: 0 is returned.
func (s *Sync) Disconnect(device string) int {
	s.sync(context.Background(), device) // the store says revoked already
	return 0
}

// DisconnectCredential is called when a superseded version retires. The
// plugin knows user names, not certificates: every version of a device has
// the same one, so it cannot drop the retired version's sessions alone.
// New sessions of that version are refused in the TLS handshake once the
// CRL file (WithCRLFile) lists it and the broker has re-read it; a session
// already open stays until it ends.
func (s *Sync) DisconnectCredential(device, serial string) int { return 0 }

// replay brings the broker in step with the whole store; it runs, in the
// background, at every connect of the admin session (fleetd's start, the
// broker's restart). The ids are read first, so that no store transaction
// stays open across the network.
func (s *Sync) replay(ctx context.Context) {
	start := time.Now()
	var ids []string
	if err := s.st.ForEachDevice(ctx, func(d *store.Device) error {
		ids = append(ids, d.ID)
		return nil
	}); err != nil {
		s.log.Error("mosquitto: replaying the fleet to the broker failed", "err", err)
		return
	}
	for _, id := range ids {
		if ctx.Err() != nil {
			return
		}
		s.sync(ctx, id)
	}
	s.log.Info("mosquitto: fleet replayed to the broker", "devices", len(ids), "took", time.Since(start))
}

// sync brings one device in step with the store: revoked, its client and
// role go; otherwise they are made (an existing one is reported and
// left). What cannot be sent is retried.
func (s *Sync) sync(ctx context.Context, device string) {
	ctx, cancel := context.WithTimeout(ctx, commandTimeout)
	defer cancel()
	s.order.Lock()
	d, err := s.st.GetDevice(ctx, device)
	if errors.Is(err, store.ErrNotExist) {
		s.order.Unlock()
		s.done(device)
		return
	}
	revoked := err == nil && d.Revoked
	if err == nil {
		var b []byte
		if b, err = json.Marshal(map[string]any{"commands": mosquitto.Commands(s.topics, device, revoked, d.Birth != nil)}); err == nil {
			err = s.ctl.Publish(ctx, controlTopic, b)
		}
	}
	s.order.Unlock()
	if err != nil {
		s.mu.Lock()
		s.retr[device] = true
		s.mu.Unlock()
		s.log.Warn("mosquitto: broker not updated; retrying", "device", device, "revoked", revoked, "err", err)
		return
	}
	s.done(device)
}

func (s *Sync) done(device string) {
	s.mu.Lock()
	delete(s.retr, device)
	s.mu.Unlock()
}

// retry sends again, from the store's current state, what could not be
// sent.
func (s *Sync) retry(ctx context.Context) {
	t := time.NewTicker(retryEvery)
	defer t.Stop()
	for {
		select {
		case <-ctx.Done():
			return
		case <-t.C:
		}
		s.mu.Lock()
		var todo []string
		for d := range s.retr {
			todo = append(todo, d)
		}
		s.mu.Unlock()
		for _, id := range todo {
			s.sync(ctx, id)
		}
	}
}

// response logs what the plugin refused. "already exists" and "not found"
// are what replaying an up-to-date broker answers; they are expected.
func (s *Sync) response(_ string, payload []byte) {
	var r struct {
		Responses []struct {
			Command string `json:"command"`
			Error   string `json:"error"`
		} `json:"responses"`
	}
	if err := json.Unmarshal(payload, &r); err != nil {
		s.log.Warn("mosquitto: unreadable dynamic-security response", "err", err)
		return
	}
	for _, x := range r.Responses {
		if x.Error == "" || strings.Contains(x.Error, "already exists") || strings.Contains(x.Error, "not found") {
			continue
		}
		s.log.Warn("mosquitto: dynamic-security command refused", "command", x.Command, "err", x.Error)
	}
}
