package trust

import (
	"bytes"
	"context"
	"fmt"

	"github.com/keyfleet/keyfleet/protocol"
	"github.com/keyfleet/keyfleet/server/store"
)

// A staged roll-out of the next anchor set: Prepare makes it without
// publishing it, Deliver hands it to one device at a time (an anchors
// campaign's stages), and Publish makes it the whole fleet's once the
// campaign completes. No device is stranded meanwhile:
//
//   - devices not given the set keep the published one, and everything
//     fleetd sends verifies under it as before (hello catch-up, retained
//     chain, delegation, certificates under the published root);
//   - a device that holds the prepared set verifies the online key through
//     a second delegation, by the prepared set's update key (the keeper
//     certifies every online key under both), which fleetd sends it with
//     the set and in answer to any hello that reports the set; fleetd's
//     TLS certificate and new device certificates are still issued under
//     the published root, which the device keeps as its previous root.
//
// Publish then does what a fleet-wide rotation does (new root and TLS
// certificate, the chain on the anchors topics, the online key under the
// new update key); devices that never got the set catch up through the
// hello answer, as after any rotation.

// Prepare makes the next anchor set with new keys for roles (none: the CA
// and update keys) without publishing it, or returns the one prepared
// already if it replaces the same roles (or roles is empty), and
// certifies the online key under its update key too. It returns the
// prepared set's version.
func (s *Service) Prepare(ctx context.Context, roles []string, actor string) (uint32, error) {
	if err := s.refuseClustered("prepare anchors"); err != nil {
		return 0, err
	}
	s.rotMu.Lock()
	defer s.rotMu.Unlock()
	before := s.chain.Prepared()
	if len(roles) == 0 && before == nil {
		roles = []string{RoleCA, RoleUpdate} // as a rotation by default
	}
	set, err := s.chain.Prepare(ctx, roles)
	if err != nil {
		return 0, err
	}
	if err := s.certifyNext(); err != nil {
		return 0, err
	}
	if before != nil {
		return set.Version, nil
	}
	if err := s.opts.Audit.Audit(ctx, store.Event{Action: "anchors-prepared", Version: set.Version, Actor: actor,
		Detail: fmt.Sprintf("roles %v, after v%d; published when its campaign completes", s.chain.PreparedRoles(), set.Version-1)}); err != nil {
		return 0, err
	}
	s.log.Info("trust anchors prepared for a staged roll-out", "version", set.Version, "roles", roles, "actor", actor)
	return set.Version, nil
}

// certifyNext has the online keys certified by the prepared set's update
// key too, if it has a new one.
func (s *Service) certifyNext() error {
	set := s.chain.Prepared()
	if set == nil || bytes.Equal(set.UpdateKey, s.chain.Current().UpdateKey) {
		return nil
	}
	if _, v := s.keeper.Current().NextDelegation(); v == set.Version {
		return nil
	}
	upd, err := s.chain.PreparedSigner(RoleUpdate)
	if err != nil {
		return err
	}
	_, err = s.keeper.SetNext(upd, set.Version, s.opts.Now())
	return err
}

// Prepared returns the version of the prepared set, or 0.
func (s *Service) Prepared() uint32 {
	if set := s.chain.Prepared(); set != nil {
		return set.Version
	}
	return 0
}

// Deliver sends device, on its own down topic, the sets that take it from
// version have towards the newest set: the prepared one, or the published
// one once a roll-out is published (at most protocol.MaxChainSets: a
// device further behind reports the version it reached and is sent the
// rest), then the delegation it will verify the online key with. It
// returns the newest version; a device that holds it already is sent
// nothing.
func (s *Service) Deliver(ctx context.Context, device string, have uint32) (uint32, error) {
	newest := s.chain.AnchorVersion()
	if set := s.chain.Prepared(); set != nil {
		newest = set.Version
	}
	if have >= newest {
		return newest, nil
	}
	sets := s.chain.PreparedSetsAfter(have, protocol.MaxChainSets)
	m := protocol.Stamp(&protocol.Anchors{Sets: sets}, s.opts.Now(), 0)
	m.IAT = 0 // the sets date themselves
	b, err := s.opts.Codec.Bare(m)
	if err != nil {
		return 0, err
	}
	down := s.opts.Topics.Down(device)
	if err := s.opts.Publisher.Publish(ctx, down, b); err != nil {
		return 0, fmt.Errorf("trust: send anchors to %s: %w", device, err)
	}
	if next, v := s.keeper.Current().NextDelegation(); next != nil && have+uint32(len(sets)) >= v {
		if err := s.opts.Publisher.Publish(ctx, down, next); err != nil {
			return 0, fmt.Errorf("trust: send delegation to %s: %w", device, err)
		}
	}
	return newest, nil
}

// Publish makes the sets up to version published fleet-wide, with all
// that follows (as Rotate after making a set): the end of a staged
// roll-out. Publishing a version published already does nothing, so a
// campaign that completes again after a restart publishes once.
func (s *Service) Publish(ctx context.Context, version uint32, actor string) error {
	if err := s.refuseClustered("publish anchors"); err != nil {
		return err
	}
	s.rotMu.Lock()
	defer s.rotMu.Unlock()
	prev := s.chain.Current()
	changed, err := s.chain.Publish(version)
	if err != nil || !changed {
		return err
	}
	set := s.chain.Current()
	if err := s.afterPublish(ctx, prev, set, actor, fmt.Sprintf("staged roll-out published, from v%d", prev.Version)); err != nil {
		return err
	}
	s.log.Info("trust anchors published after a staged roll-out", "version", set.Version, "actor", actor,
		"new_root", !bytes.Equal(prev.Root, set.Root))
	return nil
}
