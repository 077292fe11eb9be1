package release

import (
	"context"
	"crypto"
	"encoding/json"
	"errors"
	"fmt"
	"io/fs"
	"log/slog"
	"os"
	"slices"
	"sync"
	"sync/atomic"
	"time"

	"github.com/keyfleet/keyfleet/firmware"
	"github.com/keyfleet/keyfleet/internal/fsutil"
	"github.com/keyfleet/keyfleet/protocol"
	"github.com/keyfleet/keyfleet/server/lifecycle"
	"github.com/keyfleet/keyfleet/server/store"
)

// ErrInvalid: the release is refused as it stands (not newer than the
// current one, or a manifest that does not validate).
var ErrInvalid = errors.New("release: invalid release")

// Publisher broadcasts on fleetd's MQTT session; *link.Link satisfies it.
type Publisher interface {
	Publish(ctx context.Context, topic string, payload []byte) error
}

// Auditor appends audit records that belong to no device.
type Auditor interface {
	Audit(ctx context.Context, events ...store.Event) error
}

// Options configures Releases. Fields marked required have no default.
type Options struct {
	// File holds the current release. Required.
	File string
	// Key returns the current anchor set's firmware-signing key. Required.
	Key func() (crypto.Signer, error)
	// Audit records publications. Required.
	Audit Auditor
	// Publisher is fleetd's MQTT session releases are broadcast on.
	// Required.
	Publisher Publisher
	// Codec encodes the broadcast. Required.
	Codec  *protocol.Codec
	Topics protocol.Topics
	// OnChange, if set, is told of every release made current.
	OnChange func(lifecycle.Change)
	// Now is the clock; nil means time.Now.
	Now func() time.Time
	// Logger; nil means slog.Default().
	Logger *slog.Logger
}

// Release is the firmware devices should run, as stored.
type Release struct {
	Version  uint32 `json:"version"`
	Manifest []byte `json:"manifest"` // signed (COSE_Sign1)
}

// Staged is a release published without becoming the fleet's: devices a
// firmware campaign pins to it get it (store.Device.FirmwarePin), the
// others stay on the current release until it is promoted.
type Staged struct {
	Release
	// Reverts is the version this release takes devices back from: a
	// rollback release, carrying an older image under a new sequence
	// number (the devices' anti-rollback rule refuses lower ones). A
	// device found running Reverts is offered it. 0: a plain staged
	// release.
	Reverts uint32 `json:"reverts,omitempty"`
}

// state is what the release file holds: the current release (its fields
// at the top, as the file had before staged releases existed) and the
// staged ones newer than it. Values are never changed once stored in
// Releases.snap.
type state struct {
	Release
	// Reverts is Staged.Reverts of the current release, once a rollback
	// release became the fleet's.
	Reverts uint32   `json:"reverts,omitempty"`
	Staged  []Staged `json:"staged,omitempty"`
	// Earlier are the releases current before this one, newest first, at
	// most keepEarlier: the images a rollback release can go back to
	// after a campaign's release became the fleet's.
	Earlier []Release `json:"earlier,omitempty"`
}

// keepEarlier bounds state.Earlier.
const keepEarlier = 4

// find returns the signed manifest of release v, current, staged or
// earlier, or nil.
func (st *state) find(v uint32) []byte {
	if v == 0 {
		return nil
	}
	if st.Version == v {
		return st.Manifest
	}
	if s := st.staged(v); s != nil {
		return s.Manifest
	}
	for _, e := range st.Earlier {
		if e.Version == v {
			return e.Manifest
		}
	}
	return nil
}

// reverts returns the release, current or staged, that takes devices back
// from bad, or 0.
func (st *state) reverts(bad uint32) uint32 {
	if bad == 0 {
		return 0
	}
	if st.Reverts == bad {
		return st.Version
	}
	for _, s := range st.Staged {
		if s.Reverts == bad {
			return s.Version
		}
	}
	return 0
}

func (st *state) current() *Release {
	if st.Version == 0 {
		return nil
	}
	return &st.Release
}

// newest is the highest version known, current or staged: a new release
// must be above it.
func (st *state) newest() uint32 {
	v := st.Version
	for _, s := range st.Staged {
		v = max(v, s.Version)
	}
	return v
}

func (st *state) staged(v uint32) *Staged {
	for i := range st.Staged {
		if st.Staged[i].Version == v {
			return &st.Staged[i]
		}
	}
	return nil
}

// Info describes a published release.
type Info struct {
	Version  uint32
	Manifest []byte
	// KeyID is protocol.KeyID of the key that signed it.
	KeyID []byte
}

// Releases holds the current release and the staged ones. It is safe for
// concurrent use.
type Releases struct {
	opts      Options
	snap      atomic.Pointer[state]
	mu        sync.Mutex // one change at a time
	clustered atomic.Bool
}

// SetClustered refuses every change of release (Publish, Stage, Promote,
// Revert) with store.ErrClustered while several fleetd processes share
// the store: the releases live in each process's data directory, and one
// process's change would leave the others offering the old release.
func (r *Releases) SetClustered(on bool) { r.clustered.Store(on) }

// refuseClustered is the error of a change asked for while clustered.
func (r *Releases) refuseClustered(what string) error {
	if r.clustered.Load() {
		return fmt.Errorf("release: %s: %w", what, store.ErrClustered)
	}
	return nil
}

// Open loads the current release and the staged ones, if any were
// published.
func Open(opts Options) (*Releases, error) {
	if opts.Now == nil {
		opts.Now = time.Now
	}
	if opts.Logger == nil {
		opts.Logger = slog.Default()
	}
	r := &Releases{opts: opts}
	r.snap.Store(&state{})
	b, err := os.ReadFile(opts.File)
	if errors.Is(err, fs.ErrNotExist) {
		return r, nil
	} else if err != nil {
		return nil, fmt.Errorf("release: %w", err)
	}
	var st state
	if err := json.Unmarshal(b, &st); err != nil {
		return nil, fmt.Errorf("release: %s: %w", opts.File, err)
	}
	r.snap.Store(&st)
	return r, nil
}

// CurrentFirmware returns the current release's version and signed
// manifest, or 0 and nil.
func (r *Releases) CurrentFirmware() (uint32, []byte) {
	c := r.snap.Load().current()
	if c == nil {
		return 0, nil
	}
	return c.Version, c.Manifest
}

// FirmwareFor implements rotation.FirmwareSource: the release a device
// pinned to pin and running running should run. That is the current
// release, or the staged one it is pinned to while that is newer; and a
// device that runs a release a rollback release reverts gets the
// rollback release, even if the campaign that pinned it no longer does
// (it installed the release just before the rollback).
func (r *Releases) FirmwareFor(pin, running uint32) (uint32, []byte) {
	st := r.snap.Load()
	v, manifest := st.Version, st.Manifest
	if s := st.staged(pin); s != nil && s.Version > v {
		v, manifest = s.Version, s.Manifest
	}
	if back := st.staged(st.reverts(running)); back != nil && back.Version > v {
		v, manifest = back.Version, back.Manifest
	}
	return v, manifest
}

// Known reports whether version v is the current release or a staged one.
func (r *Releases) Known(v uint32) bool {
	st := r.snap.Load()
	return v != 0 && (st.Version == v || st.staged(v) != nil)
}

// Reverted reports whether running is a release a rollback release
// reverts: a device running it is not where the fleet wants it.
func (r *Releases) Reverted(running uint32) bool {
	return r.snap.Load().reverts(running) != 0
}

// save writes next and makes it the state.
func (r *Releases) save(next *state) error {
	b, err := json.Marshal(next)
	if err != nil {
		return fmt.Errorf("release: %w", err)
	}
	if err := fsutil.WriteAtomic(r.opts.File, b, 0o644); err != nil {
		return fmt.Errorf("release: %w", err)
	}
	r.snap.Store(next)
	return nil
}

// sign signs m with the current firmware key.
func (r *Releases) sign(m *firmware.Manifest) ([]byte, crypto.Signer, error) {
	key, err := r.opts.Key()
	if err != nil {
		return nil, nil, fmt.Errorf("release: firmware key: %w", err)
	}
	signed, err := firmware.Sign(m, key)
	if err != nil {
		return nil, nil, fmt.Errorf("%w: %w", ErrInvalid, err)
	}
	return signed, key, nil
}

func info(rel Release, key crypto.Signer) (Info, error) {
	kid, err := protocol.KeyID(key.Public())
	if err != nil {
		return Info{}, fmt.Errorf("release: %w", err)
	}
	return Info{Version: rel.Version, Manifest: rel.Manifest, KeyID: kid}, nil
}

// Publish signs m with the current anchor set's firmware key, stores and
// audits it, makes it current and broadcasts it: connected devices get it
// at once; a device that reports an older version in a hello (it was
// offline, or reads no broadcasts: a renew-only session) gets it in
// answer.
func (r *Releases) Publish(ctx context.Context, m *firmware.Manifest, actor string) (Info, error) {
	if err := r.refuseClustered("publish"); err != nil {
		return Info{}, err
	}
	r.mu.Lock()
	defer r.mu.Unlock()
	cur := r.snap.Load()
	if n := cur.newest(); n != 0 && m.Version <= n {
		return Info{}, fmt.Errorf("%w: version %d is not newer than the current %d", ErrInvalid, m.Version, n)
	}
	signed, key, err := r.sign(m)
	if err != nil {
		return Info{}, err
	}
	rel := Release{Version: m.Version, Manifest: signed}
	if err := r.makeCurrent(ctx, cur, Staged{Release: rel}, actor, m.URI); err != nil {
		return Info{}, err
	}
	return info(rel, key)
}

// makeCurrent stores rel as the current release (dropping the staged
// ones it overtakes), audits, reports and broadcasts it.
func (r *Releases) makeCurrent(ctx context.Context, cur *state, s Staged, actor, detail string) error {
	rel := s.Release
	next := &state{Release: rel, Reverts: s.Reverts}
	if cur.Version != 0 {
		next.Earlier = append([]Release{cur.Release}, cur.Earlier[:min(len(cur.Earlier), keepEarlier-1)]...)
	}
	for _, s := range cur.Staged {
		if s.Version > rel.Version {
			next.Staged = append(next.Staged, s)
		}
	}
	if err := r.save(next); err != nil {
		return err
	}
	if err := r.opts.Audit.Audit(ctx, store.Event{Action: "firmware-published", Version: rel.Version, Actor: actor, Detail: detail}); err != nil {
		return fmt.Errorf("release: audit: %w", err)
	}
	if r.opts.OnChange != nil {
		if prev := cur.current(); prev != nil {
			r.opts.OnChange(lifecycle.Change{Slot: lifecycle.SlotFirmware, Version: prev.Version,
				From: lifecycle.StateActive, To: lifecycle.StateSuperseded, Actor: actor})
		}
		r.opts.OnChange(lifecycle.Change{Slot: lifecycle.SlotFirmware, Version: rel.Version,
			From: lifecycle.StateUnknown, To: lifecycle.StateActive, Actor: actor})
	}
	if err := r.broadcast(ctx, &rel); err != nil {
		r.opts.Logger.Warn("firmware not broadcast; devices get it at their next hello", "err", err)
	}
	return nil
}

// Stage signs and stores m as a staged release, audited
// firmware-staged: no device gets it until a firmware campaign pins
// devices to it, and the fleet's current release stays as it is until
// Promote.
func (r *Releases) Stage(ctx context.Context, m *firmware.Manifest, actor string) (Info, error) {
	if err := r.refuseClustered("stage"); err != nil {
		return Info{}, err
	}
	r.mu.Lock()
	defer r.mu.Unlock()
	cur := r.snap.Load()
	if n := cur.newest(); n != 0 && m.Version <= n {
		return Info{}, fmt.Errorf("%w: version %d is not newer than the newest %d", ErrInvalid, m.Version, n)
	}
	signed, key, err := r.sign(m)
	if err != nil {
		return Info{}, err
	}
	rel := Release{Version: m.Version, Manifest: signed}
	if err := r.addStaged(ctx, cur, Staged{Release: rel}, store.Event{Action: "firmware-staged", Version: m.Version,
		Actor: actor, Detail: m.URI}); err != nil {
		return Info{}, err
	}
	return info(rel, key)
}

func (r *Releases) addStaged(ctx context.Context, cur *state, s Staged, ev store.Event) error {
	next := &state{Release: cur.Release, Reverts: cur.Reverts, Staged: append(slices.Clone(cur.Staged), s), Earlier: cur.Earlier}
	if err := r.save(next); err != nil {
		return err
	}
	if err := r.opts.Audit.Audit(ctx, ev); err != nil {
		return fmt.Errorf("release: audit: %w", err)
	}
	return nil
}

// Promote makes staged release v the fleet's current one (a firmware
// campaign that completed): audited firmware-published, reported and
// broadcast. Promoting a release that is current already, or older than
// it, does nothing.
func (r *Releases) Promote(ctx context.Context, v uint32, actor string) error {
	if err := r.refuseClustered("promote"); err != nil {
		return err
	}
	r.mu.Lock()
	defer r.mu.Unlock()
	cur := r.snap.Load()
	if v <= cur.Version {
		return nil
	}
	s := cur.staged(v)
	if s == nil {
		return fmt.Errorf("%w: version %d is not staged", ErrInvalid, v)
	}
	return r.makeCurrent(ctx, cur, *s, actor, fmt.Sprintf("staged release %d promoted", v))
}

// Revert returns the rollback release that takes devices from release bad
// back to release good's image, making it if there is none: good's
// manifest under a new sequence number (above every version known), so
// that devices which installed bad accept it (they refuse any version not
// above the one they run, as SUIT's sequence number requires). It is
// staged, audited firmware-reverted; FirmwareFor offers it to every
// device that runs bad.
func (r *Releases) Revert(ctx context.Context, bad, good uint32, actor string) (uint32, error) {
	if err := r.refuseClustered("revert"); err != nil {
		return 0, err
	}
	r.mu.Lock()
	defer r.mu.Unlock()
	cur := r.snap.Load()
	if v := cur.reverts(bad); v != 0 {
		return v, nil
	}
	signedGood := cur.find(good)
	if signedGood == nil {
		return 0, fmt.Errorf("%w: no release %d to revert to", ErrInvalid, good)
	}
	key, err := r.opts.Key()
	if err != nil {
		return 0, fmt.Errorf("release: firmware key: %w", err)
	}
	m, err := firmware.Verify(signedGood, key.Public())
	if err != nil {
		return 0, fmt.Errorf("release: release %d: %w", good, err)
	}
	m.Version = cur.newest() + 1
	signed, err := firmware.Sign(m, key)
	if err != nil {
		return 0, fmt.Errorf("%w: %w", ErrInvalid, err)
	}
	s := Staged{Release: Release{Version: m.Version, Manifest: signed}, Reverts: bad}
	if err := r.addStaged(ctx, cur, s, store.Event{Action: "firmware-reverted", Version: m.Version, Actor: actor,
		Detail: fmt.Sprintf("release %d carries the image of %d for the devices that run %d", m.Version, good, bad)}); err != nil {
		return 0, err
	}
	r.opts.Logger.Info("firmware rollback release staged", "version", m.Version, "image_of", good, "reverts", bad, "actor", actor)
	return m.Version, nil
}

// broadcast sends rel on the firmware topic. It is not retained: every
// device reports its version in each hello and is offered the release
// then, so a retained copy would only add its bytes to every reconnect.
func (r *Releases) broadcast(ctx context.Context, rel *Release) error {
	m := protocol.Stamp(&protocol.Firmware{Manifest: rel.Manifest}, r.opts.Now(), 0)
	m.IAT = 0
	b, err := r.opts.Codec.Bare(m)
	if err != nil {
		return err
	}
	return r.opts.Publisher.Publish(ctx, r.opts.Topics.FirmwareTopic(), b)
}
