package campaign_test

import (
	"context"
	"errors"
	"fmt"
	"path/filepath"
	"sync"
	"testing"
	"time"

	"github.com/keyfleet/keyfleet/protocol"
	"github.com/keyfleet/keyfleet/server/campaign"
	"github.com/keyfleet/keyfleet/server/hsm"
	"github.com/keyfleet/keyfleet/server/store"
	"github.com/keyfleet/keyfleet/server/trust"
)

// downlinks counts what fleetd's MQTT session would send, by topic.
type downlinks struct {
	mu sync.Mutex
	n  map[string]int
}

func (d *downlinks) Publish(_ context.Context, topic string, _ []byte) error {
	d.mu.Lock()
	defer d.mu.Unlock()
	d.n[topic]++
	return nil
}

func (d *downlinks) PublishRetained(ctx context.Context, topic string, b []byte) error {
	return d.Publish(ctx, topic, b)
}

func (d *downlinks) count(topic string) int {
	d.mu.Lock()
	defer d.mu.Unlock()
	return d.n[topic]
}

// TestAnchorsCampaign runs an anchors campaign over four devices in two
// stages on a real store and trust (soft keys): the set is prepared at
// creation and sent only to the stage's devices, a device succeeds when
// it reports the set, the set is published when the campaign completes,
// and rollback is refused before and after.
func TestAnchorsCampaign(t *testing.T) {
	dir := t.TempDir()
	ctx := context.Background()
	keys, err := hsm.OpenSoftKeys(filepath.Join(dir, "keys"))
	if err != nil {
		t.Fatal(err)
	}
	st, err := store.OpenBolt(filepath.Join(dir, "fleet.db"), store.BoltOptions{})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { st.Close() })
	pki := filepath.Join(dir, "pki")
	files := trust.Files{Anchors: filepath.Join(pki, "anchors"), CACert: filepath.Join(pki, "ca.pem"),
		UpdateKey: filepath.Join(pki, "update.pub.pem"), ServerCert: filepath.Join(pki, "fleetd.pem"),
		ServerKey: filepath.Join(pki, "fleetd.key"), AdminDir: filepath.Join(dir, "admin"), BirthCA: filepath.Join(pki, "idevid-ca.pem")}
	if err := trust.Bootstrap(ctx, trust.Options{Files: files, Keys: keys}, []string{"fleet.example"}); err != nil {
		t.Fatal(err)
	}
	pub := &downlinks{n: map[string]int{}}
	tr, err := trust.NewService(ctx, trust.Options{Files: files, Keys: keys, CertValidity: time.Hour, OnlineKeyLifetime: time.Hour,
		Codec: protocol.NewCodec(), Audit: st, Publisher: pub})
	if err != nil {
		t.Fatal(err)
	}
	now := time.Now()
	var ids []string
	for i := range 4 {
		id := fmt.Sprintf("dev-%d", i)
		ids = append(ids, id)
		if err := st.CreateDevice(ctx, &store.Device{ID: id, Anchors: 1, LastSeen: now}); err != nil {
			t.Fatal(err)
		}
	}
	kinds := map[string]campaign.Kind{campaign.KindAnchors: campaign.Anchors{Trust: tr, Devices: st}}
	svc := campaign.New(campaign.Options{Store: st, Kinds: kinds})
	spec := campaign.Spec{Kind: campaign.KindAnchors, Stages: []float64{0.5, 1}, MaxFailure: 0.5, MinReached: 1,
		DeviceTimeout: time.Minute, Roles: []string{trust.RoleUpdate}}
	c, err := svc.Create(ctx, spec, "admin:test")
	if err != nil {
		t.Fatal(err)
	}
	if tr.Prepared() != 2 || tr.Chain().AnchorVersion() != 1 {
		t.Fatalf("after create: v%d prepared, v%d published; want v2 prepared over v1", tr.Prepared(), tr.Chain().AnchorVersion())
	}
	report := func(id string) {
		t.Helper()
		if _, err := st.UpdateDevice(ctx, id, func(d *store.Device) ([]store.Event, error) {
			d.Anchors, d.LastSeen = 2, time.Now()
			return nil, nil
		}); err != nil {
			t.Fatal(err)
		}
	}
	get := func() *store.Campaign {
		t.Helper()
		c, err := svc.Get(ctx, c.ID)
		if err != nil {
			t.Fatal(err)
		}
		return c
	}
	down := func(id string) int { return pub.count(protocol.Topics{}.Down(id)) }

	// Stage 1: the first two devices are sent the set, the others nothing.
	svc.Step(ctx)
	for i, id := range ids {
		if got, want := down(id) > 0, i < 2; got != want {
			t.Errorf("%s sent %d downlinks in stage 1", id, down(id))
		}
	}
	if _, err := svc.Rollback(ctx, c.ID, "admin:test"); !errors.Is(err, campaign.ErrNoRollback) || !errors.Is(err, campaign.ErrInvalid) {
		t.Errorf("rollback of a running anchors campaign: %v, want refused with ErrNoRollback", err)
	}
	report(ids[0])
	report(ids[1])
	svc.Step(ctx)
	if cur := get(); cur.Stage != 1 || cur.Devices[0].Status != store.DeviceSucceeded || cur.Devices[0].Version != 2 {
		t.Fatalf("after the stage-1 devices reported v2: stage %d, %+v", cur.Stage+1, cur.Devices[0])
	}
	if tr.Chain().AnchorVersion() != 1 {
		t.Error("the set was published before the campaign completed")
	}

	// Stage 2: the rest; once they report it, the campaign completes and
	// the set is published.
	svc.Step(ctx)
	if down(ids[2]) == 0 || down(ids[3]) == 0 {
		t.Errorf("stage 2 devices not sent the set: %d, %d", down(ids[2]), down(ids[3]))
	}
	report(ids[2])
	report(ids[3])
	svc.Step(ctx)
	if cur := get(); cur.State != store.CampaignCompleted {
		t.Fatalf("campaign %s (%s), want completed", cur.State, cur.Reason)
	}
	if tr.Chain().AnchorVersion() != 2 || tr.Prepared() != 0 {
		t.Errorf("after completion: v%d published, v%d prepared; want v2 published", tr.Chain().AnchorVersion(), tr.Prepared())
	}
	if _, err := svc.Rollback(ctx, c.ID, "admin:test"); !errors.Is(err, campaign.ErrNoRollback) {
		t.Errorf("rollback of a completed anchors campaign: %v, want refused", err)
	}
	if cur := get(); cur.State != store.CampaignCompleted {
		t.Errorf("after a refused rollback: %s", cur.State)
	}
}

// Roles are for anchors campaigns only.
func TestRolesOnlyForAnchors(t *testing.T) {
	dir := t.TempDir()
	st, err := store.OpenBolt(filepath.Join(dir, "fleet.db"), store.BoltOptions{})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { st.Close() })
	ctx := context.Background()
	if err := st.CreateDevice(ctx, &store.Device{ID: "dev-0"}); err != nil {
		t.Fatal(err)
	}
	svc := campaign.New(campaign.Options{Store: st, Kinds: map[string]campaign.Kind{campaign.KindIdentity: campaign.Identity{}}})
	_, err = svc.Create(ctx, campaign.Spec{Kind: campaign.KindIdentity, Stages: []float64{1}, DeviceTimeout: time.Minute,
		Roles: []string{trust.RoleCA}}, "admin:test")
	if !errors.Is(err, campaign.ErrInvalid) {
		t.Errorf("identity campaign with roles: %v, want refused", err)
	}
}
