package e2e

import (
	"context"
	"io"
	"net/http"
	"strings"
	"testing"
	"time"

	dto "github.com/prometheus/client_model/go"
	"github.com/prometheus/common/expfmt"
	"github.com/prometheus/common/model"

	"github.com/keyfleet/keyfleet/adminapi"
	"github.com/keyfleet/keyfleet/device"
	"github.com/keyfleet/keyfleet/internal/fleettest"
	"github.com/keyfleet/keyfleet/server"
)

// httpGet returns the status and body of a plain GET; status 0 if the
// request failed.
func httpGet(url string) (int, string) {
	c := http.Client{Timeout: 5 * time.Second}
	resp, err := c.Get(url)
	if err != nil {
		return 0, err.Error()
	}
	defer resp.Body.Close()
	b, _ := io.ReadAll(resp.Body)
	return resp.StatusCode, string(b)
}

func httpStatus(url string) int { code, _ := httpGet(url); return code }

// families scrapes /metrics and parses the text exposition.
type families map[string]*dto.MetricFamily

func scrape(t *testing.T, base string) families {
	t.Helper()
	code, body := httpGet(base + "/metrics")
	if code != http.StatusOK {
		t.Fatalf("GET /metrics: %d %s", code, body)
	}
	p := expfmt.NewTextParser(model.UTF8Validation)
	mf, err := p.TextToMetricFamilies(strings.NewReader(body))
	if err != nil {
		t.Fatalf("parse /metrics: %v", err)
	}
	return mf
}

// value returns the value of the metric name whose labels include want
// (a counter's or gauge's value, a histogram's sample count), and whether
// it exists.
func (f families) value(name string, want ...string) (float64, bool) {
	mf := f[name]
	if mf == nil {
		return 0, false
	}
next:
	for _, m := range mf.GetMetric() {
		for i := 0; i+1 < len(want); i += 2 {
			found := false
			for _, lp := range m.GetLabel() {
				if lp.GetName() == want[i] && lp.GetValue() == want[i+1] {
					found = true
				}
			}
			if !found {
				continue next
			}
		}
		switch {
		case m.GetCounter() != nil:
			return m.GetCounter().GetValue(), true
		case m.GetGauge() != nil:
			return m.GetGauge().GetValue(), true
		case m.GetHistogram() != nil:
			return float64(m.GetHistogram().GetSampleCount()), true
		}
	}
	return 0, false
}

// TestMetricsAndProbes drives fleetd through a rotation, a revocation and
// a refused uplink and checks, over HTTP, that the SLI metrics moved, that
// no label carries a device id, and that the probes answer as they should,
// down to 503 once the broker is gone.
func TestMetricsAndProbes(t *testing.T) {
	f := fleettest.StartFleet(t, func(c *server.Config) { c.OpsAddr = "127.0.0.1:0"; c.Grace = time.Hour })
	ctx := context.Background()
	base := "http://" + f.Server.OpsAddr()
	if code, body := httpGet(base + "/healthz"); code != http.StatusOK {
		t.Fatalf("/healthz: %d %s", code, body)
	}
	eventually(t, 10*time.Second, "/readyz 200", func() bool { return httpStatus(base+"/readyz") == http.StatusOK })

	ids := []string{"alpha", "beta", "gamma"}
	alpha, beta := f.AddDevice(t, "alpha"), f.AddDevice(t, "beta")
	runAgents(t, []string{alpha, beta}, func(o *device.Options) { o.ReenrollAfter = 100 * time.Millisecond })
	eventually(t, 10*time.Second, "both devices connected", func() bool { return f.Broker().Connected() >= 3 })

	// A rotation, to activation.
	if _, err := f.Admin.Rotate(ctx, adminapi.RotateRequest{Devices: []string{"alpha"}}); err != nil {
		t.Fatal(err)
	}
	eventually(t, 20*time.Second, "alpha on v2", func() bool { return activeVersions(t, f.Admin)["alpha"] == 2 })
	// A revocation: the agent comes back with its identity and its birth
	// credential, both refused.
	if _, err := f.Admin.Revoke(ctx, "beta", "lost"); err != nil {
		t.Fatal(err)
	}
	// A refused uplink: garbage from a device's own session.
	rogue := newRogue(t, f, f.AddDevice(t, "gamma"), 1)
	rogue.publish([]byte{0xa1, 0x01, 0xff, 0x00, 0x13})

	var mf families
	eventually(t, 20*time.Second, "the metrics to move", func() bool {
		mf = scrape(t, base)
		rejected, _ := mf.value("keyfleet_uplink_rejections_total", "reason", "malformed")
		revokedUse, _ := mf.value("keyfleet_exposure_signals_total", "signal", "revoked-credential")
		birthUse, _ := mf.value("keyfleet_exposure_signals_total", "signal", "birth-credential")
		expected, _ := mf.value("keyfleet_audit_records_expected_total", "slot", "identity")
		written, _ := mf.value("keyfleet_audit_records_written_total", "slot", "identity")
		return rejected >= 1 && revokedUse >= 1 && birthUse >= 1 && expected > 0 && expected == written
	})
	expected, _ := mf.value("keyfleet_audit_records_expected_total", "slot", "identity")
	signs, _ := mf.value("keyfleet_hsm_sign_duration_seconds")
	t.Logf("audit records of identity changes: %v expected and written; %v signatures timed", expected, signs)
	for _, c := range []struct {
		name   string
		labels []string
		min    float64
	}{
		{"keyfleet_rotations_requested_total", []string{"slot", "identity"}, 1},
		{"keyfleet_rotations_total", []string{"slot", "identity", "result", "activated"}, 1},
		{"keyfleet_rotation_duration_seconds", []string{"slot", "identity"}, 1}, // M2: sample count
		{"keyfleet_revocations_total", []string{"result", "revoked"}, 1},
		{"keyfleet_revocation_duration_seconds", nil, 1}, // M5
		{"keyfleet_uplinks_total", nil, 1},
		{"keyfleet_connects_total", nil, 2},
		{"keyfleet_uplink_rejections_total", []string{"reason", "malformed"}, 1},
		{"keyfleet_broker_denials_total", []string{"reason", "auth:credential-refused"}, 1}, // M4
		{"keyfleet_exposure_signals_total", []string{"signal", "revoked-credential"}, 1},    // M9
		{"keyfleet_exposure_signals_total", []string{"signal", "birth-credential"}, 1},
		{"keyfleet_certificates_issued_total", nil, 1},
		{"keyfleet_hsm_operations_total", nil, 1},
		{"keyfleet_hsm_sign_duration_seconds", nil, 1},
		{"keyfleet_audit_chain_verified", nil, 1},
		{"keyfleet_audit_chain_verified_timestamp_seconds", nil, 1},
		{"keyfleet_fleet_scan_timestamp_seconds", nil, 1},
		{"keyfleet_broker_connected_clients", nil, 1},
		{"process_resident_memory_bytes", nil, 1},
		{"go_goroutines", nil, 1},
	} {
		if v, ok := mf.value(c.name, c.labels...); !ok || v < c.min {
			t.Errorf("%s%v = %v (present %v), want at least %v", c.name, c.labels, v, ok, c.min)
		}
	}
	// Registered before anything happened, at zero: M6, M10 and the other
	// results have series from the start.
	for _, c := range []struct {
		name   string
		labels []string
	}{
		{"keyfleet_orchestration_errors_total", []string{"kind", "uplink"}},
		{"keyfleet_rotations_total", []string{"slot", "identity", "result", "failed"}},
		{"keyfleet_exposure_signals_total", []string{"signal", "key-reuse"}},
		{"keyfleet_uplink_rejections_total", []string{"reason", "csr-identity"}},
		{"keyfleet_recovery_duration_seconds", []string{"slot", "identity"}},
	} {
		if _, ok := mf.value(c.name, c.labels...); !ok {
			t.Errorf("%s%v missing", c.name, c.labels)
		}
	}
	// No label value is a device id, anywhere.
	for name, fam := range mf {
		for _, m := range fam.GetMetric() {
			for _, lp := range m.GetLabel() {
				for _, id := range ids {
					if strings.Contains(lp.GetValue(), id) {
						t.Errorf("%s has label %s=%q: a device id", name, lp.GetName(), lp.GetValue())
					}
				}
			}
		}
	}
	// fleetctl status reads memory and goroutines from the same collectors.
	st, err := f.Admin.Status(ctx)
	if err != nil {
		t.Fatal(err)
	}
	if st.RSSBytes == 0 || st.Goroutines == 0 {
		t.Errorf("status: rss %d goroutines %d, want both above 0", st.RSSBytes, st.Goroutines)
	}

	// The broker gone: not ready, and says why; still alive.
	if err := f.Broker().Close(); err != nil {
		t.Fatal(err)
	}
	code, body := httpGet(base + "/readyz")
	if code != http.StatusServiceUnavailable || !strings.Contains(body, "broker") {
		t.Errorf("/readyz with the broker closed: %d %q, want 503 naming the broker", code, body)
	}
	if code := httpStatus(base + "/healthz"); code != http.StatusOK {
		t.Errorf("/healthz with the broker closed: %d, want 200", code)
	}
}

// TestReadyzStoreClosed: with the store closed under it, fleetd is alive
// but not ready, and /readyz names the store.
func TestReadyzStoreClosed(t *testing.T) {
	f := fleettest.StartFleet(t, func(c *server.Config) { c.OpsAddr = "127.0.0.1:0" })
	base := "http://" + f.Server.OpsAddr()
	eventually(t, 10*time.Second, "/readyz 200", func() bool { return httpStatus(base+"/readyz") == http.StatusOK })
	if err := f.Store().Close(); err != nil {
		t.Fatal(err)
	}
	code, body := httpGet(base + "/readyz")
	if code != http.StatusServiceUnavailable || !strings.HasPrefix(body, "not ready: store:") {
		t.Errorf("/readyz with the store closed: %d %q, want 503 naming the store", code, body)
	}
	if code := httpStatus(base + "/healthz"); code != http.StatusOK {
		t.Errorf("/healthz with the store closed: %d, want 200", code)
	}
}

// TestOpsListenerOff: no OpsAddr, no listener.
func TestOpsListenerOff(t *testing.T) {
	f := fleettest.StartFleet(t, nil)
	if a := f.Server.OpsAddr(); a != "" {
		t.Errorf("OpsAddr with the listener off: %q, want empty", a)
	}
}
