package store

import (
	"context"
	"errors"
	"fmt"
	"strconv"
	"time"

	bolt "go.etcd.io/bbolt"
)

// CampaignState is where a campaign stands. The strings are stored.
type CampaignState string

// Campaign states. Running, paused and completed campaigns are watched by
// fleetd (a completed one while devices are still away, so that they
// converge); aborted and rolled-back ones start nothing more.
const (
	CampaignRunning    CampaignState = "running"
	CampaignPaused     CampaignState = "paused"
	CampaignCompleted  CampaignState = "completed"
	CampaignAborted    CampaignState = "aborted"
	CampaignRolledBack CampaignState = "rolled-back"
)

// CampaignDeviceStatus is one device's standing in a campaign. The strings
// are stored.
type CampaignDeviceStatus string

// Per-device statuses. Away devices neither pass nor fail a stage; they
// move on to succeeded or failed when they come back.
const (
	DevicePending    CampaignDeviceStatus = ""            // not started yet
	DeviceInProgress CampaignDeviceStatus = "in-progress" // change requested, device reached
	DeviceSucceeded  CampaignDeviceStatus = "succeeded"
	DeviceFailed     CampaignDeviceStatus = "failed"    // refused, errored, or timed out while connected
	DeviceAway       CampaignDeviceStatus = "away"      // not connected since its stage began
	DeviceCancelled  CampaignDeviceStatus = "cancelled" // its change was cancelled or undone by a rollback
)

// Campaign is a staged change over the devices a selector chose, durable so
// that fleetd resumes it after a restart at the stage it was in.
type Campaign struct {
	// ID is given by CreateCampaign when empty: "c1", "c2", ...
	ID       string
	Kind     string // what the campaign changes: "identity", ...
	Selector string // the label selector, as the operator wrote it
	// Stages are cumulative fractions of Devices, ascending, the last 1.
	Stages []float64
	// MaxFailure is the highest failure ratio over reached devices that
	// does not pause the campaign.
	MaxFailure float64
	// MinReached devices must have been reached (succeeded or failed)
	// before a stage completes or the failure ratio counts.
	MinReached int
	// Rate bounds the devices started per minute; 0 means no bound.
	Rate int
	// DeviceTimeout is how long a reached device may take.
	DeviceTimeout time.Duration
	State         CampaignState
	// Stage is the index in Stages of the current stage; StageStarted when
	// it began.
	Stage        int
	StageStarted time.Time
	CreatedAt    time.Time
	UpdatedAt    time.Time
	Actor        string
	// Reason says why the campaign last changed state (a pause by itself
	// names the ratio).
	Reason string `cbor:",omitempty"`
	// Release is the firmware release a firmware campaign rolls out;
	// Previous the fleet's release when it was created, the one its
	// rollback goes back to.
	Release  uint32 `cbor:",omitempty"`
	Previous uint32 `cbor:",omitempty"`
	// RolledBackAt is when the operator asked for the rollback;
	// RecoveredAt when every device it reached was back on a state the
	// broker and engine accept (M10), zero until then.
	RolledBackAt time.Time `cbor:",omitempty"`
	RecoveredAt  time.Time `cbor:",omitempty"`
	// Devices are the selected devices, in the order the stages take them.
	Devices []CampaignDevice
}

// CampaignDevice is one device of a campaign.
type CampaignDevice struct {
	ID       string
	Status   CampaignDeviceStatus `cbor:",omitempty"`
	Version  uint32               `cbor:",omitempty"` // the version requested for it
	Started  time.Time            `cbor:",omitempty"`
	Finished time.Time            `cbor:",omitempty"`
	Detail   string               `cbor:",omitempty"`
}

// CampaignStore is the optional capability of keeping campaigns. Callers
// type-assert it; a store without it runs no campaigns.
type CampaignStore interface {
	// CreateCampaign stores c with its audit events, giving it an ID if it
	// has none (events without a Detail get "campaign ID": the ID is known
	// only here); ErrExists if the ID is taken.
	CreateCampaign(ctx context.Context, c *Campaign, events ...Event) error
	// UpdateCampaign is UpdateDevice's contract for a campaign: fn may run
	// more than once, ErrNoChange writes nothing and returns the record.
	UpdateCampaign(ctx context.Context, id string, fn func(c *Campaign) ([]Event, error)) (*Campaign, error)
	// GetCampaign returns a copy, or ErrNotExist.
	GetCampaign(ctx context.Context, id string) (*Campaign, error)
	// ForEachCampaign calls fn for every campaign, oldest first, with copies.
	ForEachCampaign(ctx context.Context, fn func(c *Campaign) error) error
}

var bucketCampaigns = []byte("campaigns")

var _ CampaignStore = (*Bolt)(nil)

// campaignKey orders campaigns by their number ("c12" after "c9").
func campaignKey(id string) []byte {
	if n, err := strconv.ParseUint(id[min(1, len(id)):], 10, 64); err == nil && len(id) > 1 && id[0] == 'c' {
		return append(seqKey(n), id...)
	}
	return append(seqKey(1<<63), id...)
}

func (s *Bolt) campaigns(tx *bolt.Tx) (*bolt.Bucket, error) {
	if tx.Writable() {
		return tx.CreateBucketIfNotExists(bucketCampaigns)
	}
	return tx.Bucket(bucketCampaigns), nil
}

func (s *Bolt) getCampaign(tx *bolt.Tx, id string) (*Campaign, error) {
	b, err := s.campaigns(tx)
	if err != nil {
		return nil, err
	}
	var v []byte
	if b != nil {
		v = b.Get(campaignKey(id))
	}
	if v == nil {
		return nil, fmt.Errorf("campaign %q: %w", id, ErrNotExist)
	}
	var c Campaign
	if err := s.dec.Unmarshal(v, &c); err != nil {
		return nil, fmt.Errorf("store: decode campaign %q: %w", id, err)
	}
	return &c, nil
}

func (s *Bolt) putCampaign(tx *bolt.Tx, c *Campaign) error {
	b, err := s.campaigns(tx)
	if err != nil {
		return err
	}
	v, err := s.enc.Marshal(c)
	if err != nil {
		return fmt.Errorf("store: encode campaign %q: %w", c.ID, err)
	}
	return b.Put(campaignKey(c.ID), v)
}

// CreateCampaign implements CampaignStore.
func (s *Bolt) CreateCampaign(ctx context.Context, c *Campaign, events ...Event) error {
	if err := ctx.Err(); err != nil {
		return err
	}
	err := s.db.Update(func(tx *bolt.Tx) error {
		b, err := s.campaigns(tx)
		if err != nil {
			return err
		}
		if c.ID == "" {
			n, err := b.NextSequence()
			if err != nil {
				return err
			}
			c.ID = "c" + strconv.FormatUint(n, 10)
			for b.Get(campaignKey(c.ID)) != nil { // an ID the caller chose earlier
				if n, err = b.NextSequence(); err != nil {
					return err
				}
				c.ID = "c" + strconv.FormatUint(n, 10)
			}
		} else if b.Get(campaignKey(c.ID)) != nil {
			return fmt.Errorf("campaign %q: %w", c.ID, ErrExists)
		}
		if err := s.putCampaign(tx, c); err != nil {
			return err
		}
		for i := range events {
			if events[i].Detail == "" {
				events[i].Detail = "campaign " + c.ID
			}
		}
		return s.appendAudit(tx, events)
	})
	if err != nil {
		return fmt.Errorf("store: create campaign: %w", err)
	}
	return nil
}

// UpdateCampaign implements CampaignStore.
func (s *Bolt) UpdateCampaign(ctx context.Context, id string, fn func(c *Campaign) ([]Event, error)) (*Campaign, error) {
	if err := ctx.Err(); err != nil {
		return nil, err
	}
	var out *Campaign
	var fnErr error
	err := s.db.Update(func(tx *bolt.Tx) error {
		c, err := s.getCampaign(tx, id)
		if err != nil {
			fnErr = err
			return nil
		}
		events, err := fn(c)
		if err != nil {
			fnErr = err
			return nil
		}
		if err := s.putCampaign(tx, c); err != nil {
			return err
		}
		out = c
		return s.appendAudit(tx, events)
	})
	if err != nil {
		return nil, fmt.Errorf("store: update campaign %q: %w", id, err)
	}
	if errors.Is(fnErr, ErrNoChange) {
		return s.GetCampaign(ctx, id)
	}
	if fnErr != nil {
		return nil, fnErr
	}
	return out, nil
}

// GetCampaign implements CampaignStore.
func (s *Bolt) GetCampaign(ctx context.Context, id string) (*Campaign, error) {
	if err := ctx.Err(); err != nil {
		return nil, err
	}
	var c *Campaign
	err := s.db.View(func(tx *bolt.Tx) error {
		var err error
		c, err = s.getCampaign(tx, id)
		return err
	})
	return c, err
}

// ForEachCampaign implements CampaignStore.
func (s *Bolt) ForEachCampaign(ctx context.Context, fn func(c *Campaign) error) error {
	return s.db.View(func(tx *bolt.Tx) error {
		b := tx.Bucket(bucketCampaigns)
		if b == nil {
			return nil
		}
		return b.ForEach(func(k, v []byte) error {
			if err := ctx.Err(); err != nil {
				return err
			}
			var c Campaign
			if err := s.dec.Unmarshal(v, &c); err != nil {
				return fmt.Errorf("store: decode campaign %q: %w", k[8:], err)
			}
			return fn(&c)
		})
	})
}
