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

// Info describes a published release.
type Info struct {
	Version  uint32
	Manifest []byte
	// KeyID is protocol.KeyID of the key that signed it.
	KeyID []byte
}

// Releases holds the current release. It is safe for concurrent use.
type Releases struct {
	opts Options
	cur  atomic.Pointer[Release]
	mu   sync.Mutex // one Publish at a time
}

// Open loads the current release, if any was published.
func Open(opts Options) (*Releases, error) {
	if opts.Now == nil {
		opts.Now = time.Now
	}
	if opts.Logger == nil {
		opts.Logger = slog.Default()
	}
	r := &Releases{opts: opts}
	b, err := os.ReadFile(opts.File)
	if errors.Is(err, fs.ErrNotExist) {
		return r, nil
	} else if err != nil {
		return nil, fmt.Errorf("release: %w", err)
	}
	var rel Release
	if err := json.Unmarshal(b, &rel); err != nil {
		return nil, fmt.Errorf("release: %s: %w", opts.File, err)
	}
	r.cur.Store(&rel)
	return r, nil
}

// CurrentFirmware implements rotation.FirmwareSource: the current
// release's version and signed manifest, or 0 and nil.
func (r *Releases) CurrentFirmware() (uint32, []byte) {
	c := r.cur.Load()
	if c == nil {
		return 0, nil
	}
	return c.Version, c.Manifest
}

// Publish signs m with the current anchor set's firmware key, stores and
// audits it, makes it current and broadcasts it: connected devices get it
// at once; a device that reports an older version in a hello (it was
// offline, or reads no broadcasts: a renew-only session) gets it in
// answer.
func (r *Releases) Publish(ctx context.Context, m *firmware.Manifest, actor string) (Info, error) {
	r.mu.Lock()
	defer r.mu.Unlock()
	prev := r.cur.Load()
	if prev != nil && m.Version <= prev.Version {
		return Info{}, fmt.Errorf("%w: version %d is not newer than the current %d", ErrInvalid, m.Version, prev.Version)
	}
	key, err := r.opts.Key()
	if err != nil {
		return Info{}, fmt.Errorf("release: firmware key: %w", err)
	}
	signed, err := firmware.Sign(m, key)
	if err != nil {
		return Info{}, fmt.Errorf("%w: %w", ErrInvalid, err)
	}
	rel := &Release{Version: m.Version, Manifest: signed}
	b, err := json.Marshal(rel)
	if err != nil {
		return Info{}, fmt.Errorf("release: %w", err)
	}
	if err := fsutil.WriteAtomic(r.opts.File, b, 0o644); err != nil {
		return Info{}, fmt.Errorf("release: %w", err)
	}
	if err := r.opts.Audit.Audit(ctx, store.Event{Action: "firmware-published", Version: m.Version, Actor: actor, Detail: m.URI}); err != nil {
		return Info{}, fmt.Errorf("release: audit: %w", err)
	}
	r.cur.Store(rel)
	if r.opts.OnChange != nil {
		if prev != nil {
			r.opts.OnChange(lifecycle.Change{Slot: lifecycle.SlotFirmware, Version: prev.Version,
				From: lifecycle.StateActive, To: lifecycle.StateSuperseded, Actor: actor})
		}
		r.opts.OnChange(lifecycle.Change{Slot: lifecycle.SlotFirmware, Version: rel.Version,
			From: lifecycle.StateUnknown, To: lifecycle.StateActive, Actor: actor})
	}
	if err := r.broadcast(ctx, rel); err != nil {
		r.opts.Logger.Warn("firmware not broadcast; devices get it at their next hello", "err", err)
	}
	kid, err := protocol.KeyID(key.Public())
	if err != nil {
		return Info{}, fmt.Errorf("release: %w", err)
	}
	return Info{Version: rel.Version, Manifest: signed, KeyID: kid}, nil
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
