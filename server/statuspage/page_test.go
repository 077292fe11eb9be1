package statuspage

import (
	"context"
	"fmt"
	"io"
	"net/http"
	"net/http/httptest"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/keyfleet/keyfleet/protocol"
	"github.com/keyfleet/keyfleet/server/hsm"
	"github.com/keyfleet/keyfleet/server/lifecycle"
	"github.com/keyfleet/keyfleet/server/metrics"
	"github.com/keyfleet/keyfleet/server/store"
)

// versions is a fixed anchors and firmware version.
type versions struct{ anchors, firmware uint32 }

func (v versions) AnchorVersion() uint32             { return v.anchors }
func (v versions) CurrentFirmware() (uint32, []byte) { return v.firmware, []byte("digest") }

// present is a fixed set of connected devices.
type present map[string]bool

func (p present) Present(id string) bool { return p[id] }

// campaigns is a fixed list; campaigns do not exist yet, so nothing real
// can feed the section.
type campaigns []Campaign

func (c campaigns) Campaigns(context.Context) ([]Campaign, error) { return c, nil }

// device is a stored device: its identity slot at desired and reported,
// the latest version in state.
func device(id string, desired, reported uint32, state lifecycle.State, seen time.Time) *store.Device {
	d := &store.Device{ID: id, LastSeen: seen, Anchors: 1, Firmware: 0}
	s := d.Slot(protocol.SlotIdentity)
	s.Desired, s.Reported = desired, reported
	for v := uint32(1); v <= desired; v++ {
		st := lifecycle.StateSuperseded
		if v == desired {
			st = state
		}
		s.Versions = append(s.Versions, &store.KeyVersion{Version: v, State: st, Serial: fmt.Sprintf("serial-%s-%d", id, v),
			Cert: []byte("CERTIFICATE-BYTES")})
	}
	return d
}

// TestPage renders the page over a real store and real metrics and checks
// what it says, and what it must never say.
func TestPage(t *testing.T) {
	now := time.Date(2026, 3, 1, 12, 0, 0, 0, time.UTC)
	recent, old := now.Add(-time.Minute), now.Add(-3*time.Hour)
	for _, tc := range []struct {
		name      string
		devices   []*store.Device
		audit     []store.Event
		connected present
		campaigns Campaigns
		max       int
		want      []string
		notWant   []string
	}{
		{
			name: "empty fleet",
			want: []string{`id="devices">0<`, "no device registered", "every device is up to date", "no device is away",
				"no audit record", `id="slis"`, "M1", "rotation success rate", "no rotation ended yet", "M10",
				`id="anchors">v1<`, `id="firmware">none<`, `content="15"`},
			notWant: []string{`id="campaigns"`, `id="errors"`, "<script"},
		},
		{
			name: "devices behind and away",
			devices: []*store.Device{
				device("up-to-date", 1, 1, lifecycle.StateActive, recent),
				device("rotating", 2, 1, lifecycle.StateIssued, recent),
				device("asleep", 2, 1, lifecycle.StatePending, old),
				func() *store.Device {
					d := device("old-anchors", 1, 1, lifecycle.StateActive, recent)
					d.Anchors = 0
					return d
				}(),
			},
			connected: present{"up-to-date": true, "rotating": true, "old-anchors": true},
			audit: []store.Event{{Action: "requested", Device: "rotating", Slot: 1, Version: 2, Actor: "operator"},
				{Action: "issued", Device: "rotating", Slot: 1, Version: 2, Actor: "fleetd"}},
			want: []string{`id="devices">4<`, `id="connected">3<`, `id="behind-count">3<`, `id="away-count">1<`,
				"identity v1 → v2", "anchors v0 → v1", "asleep", "3h ago", ">issued<", ">pending<", ">active<",
				"operator", ">requested<", "v2"},
			notWant: []string{"every device is up to date", "no device is away", "serial-", "CERTIFICATE-BYTES"},
		},
		{
			name: "operator text escaped",
			devices: []*store.Device{func() *store.Device {
				d := device("d1", 2, 1, lifecycle.StatePending, old)
				d.Model, d.Labels = "<script>alert('model')</script>", map[string]string{"site": "<script>x</script>"}
				return d
			}()},
			audit:   []store.Event{{Action: "requested", Device: "d1", Slot: 1, Version: 2, Actor: "<script>alert('actor')</script>"}},
			want:    []string{"&lt;script&gt;alert(&#39;model&#39;)&lt;/script&gt;", "&lt;script&gt;alert(&#39;actor&#39;)&lt;/script&gt;", "site=&lt;script&gt;x&lt;/script&gt;"},
			notWant: []string{"<script"},
		},
		{
			name: "lists bounded, most behind first",
			devices: func() []*store.Device {
				var ds []*store.Device
				for i := 0; i < 10; i++ {
					ds = append(ds, device(fmt.Sprintf("dev-%02d", i), 2, 1, lifecycle.StatePending, recent))
				}
				ds = append(ds, device("far-behind", 4, 1, lifecycle.StatePending, recent))
				return ds
			}(),
			max:     3,
			want:    []string{`id="behind-count">11<`, "the 3 most behind shown", "far-behind", "identity v1 → v4", "dev-00", "dev-01"},
			notWant: []string{"dev-02", "dev-09"},
		},
		{
			name: "campaigns section",
			campaigns: campaigns{{ID: "c-7", Kind: "identity", State: "running", Selector: "model=m1",
				Stages: []Stage{{Name: "1 (5%)", Total: 10, Succeeded: 8, Failed: 1, Away: 1}}}},
			want: []string{`id="campaigns"`, "c-7", "running", "1 (5%)", "model=m1"},
		},
	} {
		t.Run(tc.name, func(t *testing.T) {
			ctx := context.Background()
			st, err := store.OpenBolt(filepath.Join(t.TempDir(), "fleet.db"), store.BoltOptions{Now: func() time.Time { return now }})
			if err != nil {
				t.Fatal(err)
			}
			defer st.Close()
			for _, d := range tc.devices {
				if err := st.CreateDevice(ctx, d); err != nil {
					t.Fatal(err)
				}
			}
			if len(tc.audit) > 0 {
				if err := st.Audit(ctx, tc.audit...); err != nil {
					t.Fatal(err)
				}
			}
			keys, err := hsm.OpenSoftKeys(t.TempDir())
			if err != nil {
				t.Fatal(err)
			}
			m := metrics.New(st, keys, metrics.Options{Now: func() time.Time { return now }})
			src := Sources{Devices: st, Audit: st, Anchors: versions{anchors: 1}, Firmware: versions{}, SLIs: m,
				Campaigns: tc.campaigns}
			if tc.connected != nil {
				src.Sessions = tc.connected
			}
			srv := httptest.NewServer(New(src, Options{Now: func() time.Time { return now }, MaxDevices: tc.max}))
			defer srv.Close()
			resp, err := http.Get(srv.URL)
			if err != nil {
				t.Fatal(err)
			}
			b, _ := io.ReadAll(resp.Body)
			resp.Body.Close()
			body := string(b)
			if resp.StatusCode != http.StatusOK || !strings.HasPrefix(resp.Header.Get("Content-Type"), "text/html") {
				t.Fatalf("GET: %d %s", resp.StatusCode, resp.Header.Get("Content-Type"))
			}
			if csp := resp.Header.Get("Content-Security-Policy"); !strings.Contains(csp, "default-src 'none'") {
				t.Errorf("Content-Security-Policy %q lets scripts run", csp)
			}
			for _, w := range tc.want {
				if !strings.Contains(body, w) {
					t.Errorf("page lacks %q", w)
				}
			}
			for _, w := range tc.notWant {
				if strings.Contains(body, w) {
					t.Errorf("page has %q", w)
				}
			}
			if t.Failed() {
				t.Logf("page:\n%s", body)
			}
		})
	}
}
