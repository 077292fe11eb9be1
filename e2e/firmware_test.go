package e2e

import (
	"bytes"
	"context"
	"crypto/sha256"
	"os"
	"path/filepath"
	"sync"
	"testing"
	"time"

	"github.com/keyfleet/keyfleet/adminapi"
	"github.com/keyfleet/keyfleet/device"
	"github.com/keyfleet/keyfleet/firmware"
	"github.com/keyfleet/keyfleet/internal/fleettest"
)

// TestFirmwareRollbackReported: a release whose boot check fails on the
// device rolls back and fleetd keeps seeing the old version; the next good
// release is installed and reported.
func TestFirmwareRollbackReported(t *testing.T) {
	f := fleettest.StartFleet(t, nil)
	ctx := context.Background()
	dir := f.AddDevice(t, "cam-1")
	vendor, class := firmware.UUID{0xa}, firmware.UUID{0xb}
	images := sync.Map{}
	var rolledBack sync.WaitGroup
	rolledBack.Add(1)
	var once sync.Once
	runAgents(t, []string{dir}, func(o *device.Options) {
		o.Firmware = &device.FirmwareOptions{Dir: filepath.Join(t.TempDir(), "fw"),
			Identity: firmware.Identity{VendorID: vendor, ClassID: class, FactoryVersion: 1},
			Fetch: func(_ context.Context, uri string) ([]byte, error) {
				v, _ := images.Load(uri)
				b, _ := v.([]byte)
				return b, nil
			},
			BootCheck: func(m *firmware.Manifest, img []byte) error {
				if bytes.Contains(img, []byte("broken")) {
					return os.ErrInvalid
				}
				return nil
			}}
		o.OnEvent = func(e device.Event) {
			if e.Kind == device.EventRollback {
				once.Do(rolledBack.Done)
			}
		}
	})
	reported := func(v uint32) func() bool {
		return func() bool {
			d, err := f.Server.Store().GetDevice(ctx, "cam-1")
			return err == nil && d.Firmware == v
		}
	}
	eventually(t, 10*time.Second, "factory firmware reported", reported(1))
	publish := func(v uint32, content string) {
		img := []byte(content)
		uri := "test://cam/" + content
		images.Store(uri, img)
		d := sha256.Sum256(img)
		if _, err := f.Admin.PublishFirmware(ctx, adminapi.FirmwareRequest{Vendor: vendor.String(), Class: class.String(),
			Version: v, Digest: d[:], Size: uint64(len(img)), URI: uri}); err != nil {
			t.Fatalf("publish v%d: %v", v, err)
		}
	}
	publish(2, "broken build 2") // retained on the firmware topic: connected devices get it at once
	done := make(chan struct{})
	go func() { rolledBack.Wait(); close(done) }()
	select {
	case <-done:
	case <-time.After(15 * time.Second):
		t.Fatal("no rollback")
	}
	time.Sleep(200 * time.Millisecond)
	if !reported(1)() {
		t.Error("fleetd does not see the old version after the rollback")
	}
	publish(3, "good build 3")
	eventually(t, 15*time.Second, "version 3 reported", reported(3))
}
