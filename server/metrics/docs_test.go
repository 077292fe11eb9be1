package metrics

import (
	"context"
	"os"
	"regexp"
	"strings"
	"testing"
	"time"

	"github.com/prometheus/client_golang/prometheus"

	"github.com/keyfleet/keyfleet/server/rotation"
)

// snapshot is a fixed engine snapshot: what Stats is read for.
type snapshot rotation.StatsSnapshot

func (s snapshot) Stats() rotation.StatsSnapshot { return rotation.StatsSnapshot(s) }

var fqName = regexp.MustCompile(`fqName: "([^"]+)"`)

// TestEveryMetricDocumented: docs/observability.md has a table row for
// every keyfleet metric fleetd registers, and no row for one it does not.
func TestEveryMetricDocumented(t *testing.T) {
	clk := &testClock{now: time.Now()}
	m, _ := newMetrics(t, clk)
	ctx, cancel := context.WithCancel(context.Background())
	wait := m.Start(ctx, snapshot{Rejected: map[string]uint64{}}, nil)
	defer func() { cancel(); _ = wait() }()

	names := map[string]bool{}
	mfs, err := m.reg.Gather()
	if err != nil {
		t.Fatal(err)
	}
	for _, mf := range mfs {
		names[mf.GetName()] = true
	}
	// The series that appear only with data (broker refusals, campaigns)
	// or with the embedded broker: their descriptions.
	ch := make(chan *prometheus.Desc, 64)
	for _, c := range []prometheus.Collector{engineCollector{}, &auditCollector{}, &fleetCollector{}, hsmOps{}, storeStatements{}} {
		c.Describe(ch)
	}
	// The campaign vectors, registered through the prefixing registerer,
	// describe themselves without the prefix.
	m.campaigns.devices.Describe(ch)
	m.campaigns.paused.Describe(ch)
	close(ch)
	for d := range ch {
		if sm := fqName.FindStringSubmatch(d.String()); sm != nil {
			if strings.HasPrefix(sm[1], "campaign_") {
				sm[1] = Namespace + "_" + sm[1]
			}
			names[sm[1]] = true
		}
	}
	b, err := os.ReadFile("../../docs/observability.md")
	if err != nil {
		t.Fatal(err)
	}
	doc := string(b)
	for n := range names {
		if strings.HasPrefix(n, Namespace+"_") && !strings.Contains(doc, "| `"+n+"` |") {
			t.Errorf("%s has no row in docs/observability.md", n)
		}
	}
	for _, sm := range regexp.MustCompile("(?m)^\\| `(keyfleet_[a-z_]+)` \\|").FindAllStringSubmatch(doc, -1) {
		if !names[sm[1]] {
			t.Errorf("docs/observability.md documents %s, which fleetd does not register", sm[1])
		}
	}
	for _, e := range exposureSignals {
		if !strings.Contains(doc, "| `"+e.signal+"` |") {
			t.Errorf("exposure signal %s has no row in docs/observability.md", e.signal)
		}
	}
}
