package trust

import (
	"bytes"
	"context"
	"crypto/ecdsa"
	"errors"
	"fmt"
	"slices"
	"time"

	"github.com/keyfleet/keyfleet/anchors"
	"github.com/keyfleet/keyfleet/protocol"
	"github.com/keyfleet/keyfleet/server/lifecycle"
	"github.com/keyfleet/keyfleet/server/store"
)

// Info describes the current anchor set.
type Info struct {
	Version  uint32
	IssuedAt time.Time
	// Root is the current root's subject common name.
	Root string
	// RootKeyID, UpdateKeyID and FirmwareKeyID are protocol.KeyID of the
	// set's three public keys.
	RootKeyID, UpdateKeyID, FirmwareKeyID []byte
	// Prepared is the version of a set prepared for a staged roll-out,
	// or 0.
	Prepared uint32
}

// Info describes the current anchor set.
func (s *Service) Info() (Info, error) {
	cur := s.chain.Current()
	info := Info{Version: cur.Version, IssuedAt: time.Unix(int64(cur.IssuedAt), 0).UTC(), Root: s.chain.Root().Subject.CommonName,
		Prepared: s.Prepared()}
	for _, kv := range []struct {
		dst *[]byte
		pub func() (*ecdsa.PublicKey, error)
	}{{&info.RootKeyID, cur.RootPublicKey}, {&info.UpdateKeyID, cur.UpdatePublicKey}, {&info.FirmwareKeyID, cur.FirmwarePublicKey}} {
		k, err := kv.pub()
		if err != nil {
			return info, err
		}
		if *kv.dst, err = protocol.KeyID(k); err != nil {
			return info, err
		}
	}
	return info, nil
}

// Announce publishes the anchors, retained, for devices that connect
// later; fleetd calls it after each connect of its MQTT session. A failure
// is logged: devices get the anchors at their next hello anyway.
func (s *Service) Announce(ctx context.Context) {
	if err := s.publishAnchors(ctx, false); err != nil {
		s.log.Warn("anchors not published", "err", err)
	}
}

// publishAnchors puts the newest sets, retained, on the anchors topic, and
// with live also on the live anchors topic: devices connected when the
// anchors rotate walk at once.
func (s *Service) publishAnchors(ctx context.Context, live bool) error {
	p := s.opts.Publisher
	m := protocol.Stamp(&protocol.Anchors{Sets: s.chain.Latest(protocol.MaxChainSets)}, s.opts.Now(), 0)
	m.IAT = 0
	b, err := s.opts.Codec.Bare(m)
	if err != nil {
		return err
	}
	if err := p.PublishRetained(ctx, s.opts.Topics.Anchors(), b); err != nil {
		return err
	}
	if live {
		return p.Publish(ctx, s.opts.Topics.AnchorsLive(), b)
	}
	return nil
}

// Rotate makes the next anchor set with new keys for roles, then
// everything that follows from it, in an order that never leaves a device
// stranded: new CA and fleetd certificate first (old devices reach it
// through the cross certificates), then the retained chain, then a new
// online key under a new update key.
func (s *Service) Rotate(ctx context.Context, roles []string, actor string) (Info, error) {
	if err := s.refuseClustered("rotate anchors"); err != nil {
		return Info{}, err
	}
	s.rotMu.Lock()
	defer s.rotMu.Unlock()
	prev := s.chain.Current()
	set, err := s.chain.Rotate(ctx, roles)
	if err != nil {
		return Info{}, err
	}
	if err := s.afterPublish(ctx, prev, set, actor, fmt.Sprintf("roles %v, from v%d", roles, prev.Version)); err != nil {
		return Info{}, err
	}
	s.log.Info("trust anchors rotated", "version", set.Version, "roles", roles, "new_root", !bytes.Equal(prev.Root, set.Root))
	return s.Info()
}

// afterPublish does what follows from set becoming the published one after
// prev: the CA and fleetd's certificate under a new root, the chain on the
// anchors topics, the online key under a new update key, the audit record
// and the lifecycle report.
func (s *Service) afterPublish(ctx context.Context, prev, set *anchors.Signed, actor, detail string) error {
	// The set is on disk and served from now on: every follow-up is tried
	// even if one fails, and a restart finishes what did not (NewService
	// issues from the current root, re-issues fleetd's certificate and
	// certifies the online key with the current update key).
	var errs []error
	newCA := !bytes.Equal(prev.Root, set.Root)
	if newCA {
		if err := s.loadCA(); err != nil {
			errs = append(errs, err)
		} else if err := s.reissueTLS(ctx); err != nil {
			errs = append(errs, err)
		}
	}
	if err := s.publishAnchors(ctx, true); err != nil {
		s.log.Warn("anchors not published; devices get them at their next hello", "err", err)
	}
	if !bytes.Equal(prev.UpdateKey, set.UpdateKey) {
		if upd, err := s.chain.Signer(RoleUpdate); err != nil {
			errs = append(errs, err)
		} else if k, err := s.keeper.SetUpdate(upd, s.opts.Now()); err != nil {
			errs = append(errs, err)
		} else if err := s.opts.Publisher.Publish(ctx, s.opts.Topics.Delegation(), k.Delegation); err != nil {
			s.log.Warn("delegation broadcast failed", "err", err)
		}
	}
	if err := s.opts.Audit.Audit(ctx, store.Event{Action: "anchors-rotated", Version: set.Version, Actor: actor,
		Detail: detail}); err != nil {
		errs = append(errs, err)
	}
	s.report(prev.Version, lifecycle.StateActive, lifecycle.StateSuperseded, actor)
	s.report(set.Version, lifecycle.StateUnknown, lifecycle.StateActive, actor)
	if err := errors.Join(errs...); err != nil {
		s.log.Error("anchor rotation incomplete; restart fleetd to finish it", "version", set.Version, "err", err)
		return fmt.Errorf("trust: anchors v%d made, follow-up incomplete (restart fleetd to finish): %w", set.Version, err)
	}
	return nil
}

func (s *Service) report(version uint32, from, to lifecycle.State, actor string) {
	if s.opts.OnChange != nil {
		s.opts.OnChange(lifecycle.Change{Slot: lifecycle.SlotAnchors, Version: version, From: from, To: to, Actor: actor})
	}
}

// UseIssuers makes the anchor sets carry ders, the CA certificates of the
// external issuer fleetd runs with (nil for the embedded CA). fleetd calls
// it at start: when the current set does not carry exactly these, it
// publishes the next set with the same keys and these issuers, since a
// device checks a new certificate only against its current set. During a
// staged roll-out it only records them: the set after the prepared one
// carries them, and certificates from the issuer are refused by devices
// until then.
func (s *Service) UseIssuers(ctx context.Context, ders [][]byte) error {
	s.rotMu.Lock()
	s.chain.SetIssuers(ders)
	cur, prepared := s.chain.Current(), s.chain.Prepared()
	s.rotMu.Unlock()
	if slices.EqualFunc(cur.Issuers, ders, bytes.Equal) {
		return nil
	}
	if err := s.refuseClustered("anchor set with the issuer's CA certificates"); err != nil {
		return err
	}
	if prepared != nil {
		s.log.Warn("issuers changed during an anchor roll-out; the next set carries them", "prepared", prepared.Version)
		return nil
	}
	info, err := s.Rotate(ctx, nil, "fleetd")
	if err != nil {
		return fmt.Errorf("trust: anchors with the issuer's CA certificates: %w", err)
	}
	s.log.Info("anchor set carries the issuer's CA certificates", "version", info.Version, "issuers", len(ders))
	return nil
}
