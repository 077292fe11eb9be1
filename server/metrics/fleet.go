package metrics

import (
	"context"
	"sync"
	"time"

	"github.com/prometheus/client_golang/prometheus"

	"github.com/keyfleet/keyfleet/protocol"
	"github.com/keyfleet/keyfleet/server/store"
)

// expiryWindows bucket the certificates nearing expiry on devices not
// seen: cumulative, each counts the certificates that expire within it
// ("expired" those past their end already).
var expiryWindows = []struct {
	name   string
	within time.Duration
}{
	{"expired", 0},
	{"1d", 24 * time.Hour},
	{"7d", 7 * 24 * time.Hour},
	{"30d", 30 * 24 * time.Hour},
}

var (
	devicesDesc  = desc("devices", "Devices by the state of their latest identity version, and revoked devices, at the last fleet scan.", "state")
	expiringDesc = desc("unseen_certificates_expiring",
		"Active identity certificates of devices not seen for the unseen period (24 h by default) that expire within the window, at the last fleet scan.", "window")
	scanAtDesc = desc("fleet_scan_timestamp_seconds", "When the devices were last counted (Unix time).")
)

// fleetCollector reports the last fleet scan: it reads every device, so
// it runs periodically, never at scrape time.
type fleetCollector struct {
	mu       sync.Mutex
	at       time.Time
	byState  map[string]int
	expiring []int // per expiryWindows
}

func (c *fleetCollector) Describe(ch chan<- *prometheus.Desc) {
	ch <- devicesDesc
	ch <- expiringDesc
	ch <- scanAtDesc
}

func (c *fleetCollector) Collect(ch chan<- prometheus.Metric) {
	c.mu.Lock()
	defer c.mu.Unlock()
	if c.at.IsZero() {
		return
	}
	for s, n := range c.byState {
		ch <- prometheus.MustNewConstMetric(devicesDesc, prometheus.GaugeValue, float64(n), s)
	}
	for i, w := range expiryWindows {
		ch <- prometheus.MustNewConstMetric(expiringDesc, prometheus.GaugeValue, float64(c.expiring[i]), w.name)
	}
	ch <- prometheus.MustNewConstMetric(scanAtDesc, prometheus.GaugeValue, float64(c.at.UnixNano())/1e9)
}

// scanFleet counts the devices by state and the certificates nearing
// expiry on devices that have not been seen for UnseenAfter.
func (m *Metrics) scanFleet(ctx context.Context) {
	now := m.opts.Now()
	byState := map[string]int{}
	expiring := make([]int, len(expiryWindows))
	err := m.st.ForEachDevice(ctx, func(d *store.Device) error {
		l := d.Slot(protocol.SlotIdentity).Latest()
		switch {
		case d.Revoked:
			byState["revoked"]++
		case l != nil:
			byState[l.State.String()]++
		}
		if d.Revoked || now.Sub(d.LastSeen) < m.opts.UnseenAfter {
			return nil
		}
		a := d.Slot(protocol.SlotIdentity).Active()
		if a == nil {
			return nil
		}
		left := a.NotAfter.Sub(now)
		for i, w := range expiryWindows {
			if left <= w.within {
				expiring[i]++
			}
		}
		return nil
	})
	if err != nil {
		if ctx.Err() == nil {
			m.opts.Logger.Warn("fleet scan for metrics failed", "err", err)
		}
		return
	}
	c := m.fleet
	c.mu.Lock()
	c.at, c.byState, c.expiring = now, byState, expiring
	c.mu.Unlock()
}
