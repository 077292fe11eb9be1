package grafana

import (
	"bytes"
	"context"
	"encoding/json"
	"fmt"
	"io"
	"net/http"
	"net/url"
	"os"
	"os/exec"
	"path/filepath"
	"regexp"
	"sort"
	"strings"
	"sync"
	"syscall"
	"testing"
	"time"

	"gopkg.in/yaml.v3"

	"github.com/keyfleet/keyfleet/device"
	"github.com/keyfleet/keyfleet/internal/fleettest"
	"github.com/keyfleet/keyfleet/server"
)

// ruleFiles are keyfleet's rules, as an operator's Prometheus loads them.
var ruleFiles = filepath.Join("..", "prometheus", "keyfleet-*.yml")

// rule is one recording or alerting rule of a rules file.
type rule struct {
	Record string `yaml:"record"`
	Alert  string `yaml:"alert"`
	Expr   string `yaml:"expr"`
}

// readRules returns the rules of every file of ruleFiles, and the files.
func readRules(t *testing.T) ([]rule, []string) {
	t.Helper()
	files, err := filepath.Glob(ruleFiles)
	if err != nil || len(files) == 0 {
		t.Fatalf("no rules %s: %v", ruleFiles, err)
	}
	var out []rule
	for _, f := range files {
		b, err := os.ReadFile(f)
		if err != nil {
			t.Fatal(err)
		}
		var rf struct {
			Groups []struct {
				Rules []rule `yaml:"rules"`
			} `yaml:"groups"`
		}
		if err := yaml.Unmarshal(b, &rf); err != nil {
			t.Fatalf("%s: %v", f, err)
		}
		for _, g := range rf.Groups {
			out = append(out, g.Rules...)
		}
	}
	return out, files
}

// groupInterval matches a rule group's evaluation interval: the copies
// Prometheus loads here are evaluated every second, so that the recorded
// series exist within the test, not after a minute.
var groupInterval = regexp.MustCompile(`(?m)^(\s*interval:\s*)\S+\s*$`)

// probeRules is a rule file of this test alone: an alert named like
// keyfleet's that fires at once. None of keyfleet's alerts fires in a
// healthy fleet within seconds (they need failures, or 30 minutes of
// `for`), and the on-call dashboard's alerts panel must be shown to read
// the ALERTS series Prometheus writes for them.
const probeRules = `groups:
  - name: dashboard-probe
    interval: 1s
    rules:
      - alert: KeyfleetDashboardProbe
        expr: vector(1)
        labels:
          severity: ticket
        annotations:
          summary: "The dashboards test's probe"
`

// selector finds the series an alert reads: a keyfleet metric or recorded
// series, with its label matchers.
var selector = regexp.MustCompile(`keyfleet[a-z0-9_:]*(\{[^}]*\})?`)

// TestExpressionsReturnData runs a real fleetd while a real Prometheus
// scrapes it every second and evaluates keyfleet's rules every second:
// the simulator runs 50 devices against it with injected faults
// (crashes, flapping links, lost and duplicated messages) while the test
// revokes one, runs a staged campaign over them, and runs one over
// devices of its own, one with its downlinks cut and one switched off,
// which pauses itself in its canary stage and is rolled back; their
// rotations, failed and cancelled, recover in a third (M10).
// Then it asks that Prometheus every recording rule's expression and
// recorded series, every alert's expression and the series it reads, and
// every dashboard panel's query: each must parse, and each but the
// alerts' own expressions (which hold only while the alert fires) must
// return data, numbers rather than NaN.
func TestExpressionsReturnData(t *testing.T) {
	if _, err := exec.LookPath("prometheus"); err != nil {
		t.Fatal("prometheus not found: run `make deps` (scripts/deps.sh --with-promtool installs Debian's prometheus package)")
	}
	rules, files := readRules(t)
	dashboards := readDashboards(t)

	f := fleettest.StartFleet(t, func(c *server.Config) { c.OpsAddr = "127.0.0.1:0"; c.Grace = time.Hour })
	fr := addFragile(t, f)
	// Restarted, so that its fleet scan, at start and every 5 minutes,
	// counts devices.
	if err := f.Close(); err != nil {
		t.Fatal(err)
	}
	f.Restart(t)
	fr.start(t, func(id string) bool { return id != offFragile })

	prom := startPrometheus(t, f.OpsAddr(), files)
	// Counters are scraped at zero before anything happens, so that rates
	// and increases see the events below.
	eventually(t, 30*time.Second, "two scrapes of fleetd", func() bool {
		n, err := prom.count(`count_over_time(up{job="fleetd"}[1m]) >= 2 and up{job="fleetd"} == 1`)
		return err == nil && n > 0
	})

	t0 := time.Now()
	sim := startSimulation(t, f)
	ids := waitSimulated(t, f, sim)
	t.Logf("simulated fleet of %d provisioned and connected in %.1f s", len(ids), time.Since(t0).Seconds())
	t1 := time.Now()
	paused := driveFleet(t, f, sim, ids, fr)
	t.Logf("revocation and campaigns done in %.1f s", time.Since(t1).Seconds())
	// What the run must have shown before the expressions are asked: each
	// event the rules and panels read, the injected faults' traces
	// (duplicated uplinks refused as replays, lost messages resent), and
	// the page for the campaign that paused itself, firing.
	t2 := time.Now()
	prom.waitFor(t, 30*time.Second, []string{
		`keyfleet_rotations_total{result="activated"} > ` + fmt.Sprint(simDevices/2),
		`keyfleet_rotations_total{result="failed"} > 0`,
		`keyfleet_rotations_total{result="cancelled"} > 0`,
		`sum(keyfleet_recovery_duration_seconds_count) > 0`,
		`sum(keyfleet_campaign_devices_total{stage="1", result="succeeded"}) > 0`,
		`sum(keyfleet_campaign_devices_total{stage="1", result="failed"}) > 0`,
		`sum(keyfleet_campaign_self_pauses_total) > 0`,
		`keyfleet_campaigns{state="rolled-back"} > 0`,
		`keyfleet_campaigns{state="completed"} > 1`,
		`keyfleet_revocations_total{result="revoked"} > 0`,
		`sum(keyfleet_broker_denials_total{reason=~"auth:.*"}) > 0`,
		`keyfleet_uplink_rejections_total{reason="replay"} > 0`,
		`keyfleet_resent_total > 0`,
		`ALERTS{alertname="KeyfleetCampaignPaused", alertstate="firing", severity="page", campaign="` + paused + `"}`,
	})

	// What must return data, and what must only parse.
	type check struct {
		what, expr string
		mayBeEmpty bool
	}
	var checks []check
	for _, r := range rules {
		if r.Record != "" {
			checks = append(checks, check{what: "rule " + r.Record, expr: r.Expr},
				check{what: "recorded series " + r.Record, expr: r.Record})
			continue
		}
		checks = append(checks, check{what: "alert " + r.Alert, expr: r.Expr, mayBeEmpty: true})
		seen := map[string]bool{}
		for _, s := range selector.FindAllString(r.Expr, -1) {
			if !seen[s] {
				seen[s] = true
				checks = append(checks, check{what: "alert " + r.Alert + " reads", expr: s})
			}
		}
	}
	for _, tg := range targets(dashboards) {
		expr := grafanaVars.Replace(tg.expr)
		if v := unknownVar.FindString(expr); v != "" {
			t.Errorf("panel %s: variable %s has no value in this test", tg.where, v)
			continue
		}
		checks = append(checks, check{what: "panel " + tg.where, expr: expr})
	}

	// Rules are evaluated every second and scrapes come every second:
	// poll until every check holds, then report those that do not.
	failing := map[int]string{}
	deadline := time.Now().Add(60 * time.Second)
	for {
		clear(failing)
		for i, c := range checks {
			r, err := prom.query(c.expr)
			n := 0
			if err == nil {
				n, err = r.count()
			}
			switch {
			case err != nil:
				failing[i] = err.Error()
			case n == 0 && !c.mayBeEmpty:
				failing[i] = "no data"
			case r.hasNaN():
				failing[i] = "NaN: " + string(r.Result)
			}
		}
		if len(failing) == 0 || time.Now().After(deadline) {
			break
		}
		time.Sleep(time.Second)
	}
	idx := make([]int, 0, len(failing))
	for i := range failing {
		idx = append(idx, i)
	}
	sort.Ints(idx)
	for _, i := range idx {
		t.Errorf("%s: %s\n%s", checks[i].what, failing[i], checks[i].expr)
	}
	if len(failing) > 0 {
		t.Logf("prometheus log:\n%s", prom.log.String())
	}
	t.Logf("%d expressions asked of Prometheus (%d rules, %d panel queries), %d failing, %.1f s after the events",
		len(checks), len(rules), len(targets(dashboards)), len(failing), time.Since(t2).Seconds())
	// The run's figures, as Prometheus holds them.
	for _, e := range []string{
		`sum by (result) (keyfleet_rotations_total)`,
		`keyfleet:campaign_canary_failures:ratio`,
		`keyfleet:revocation_duration_seconds:p99_rate1h`,
		`keyfleet:recovery_duration_seconds:p99_rate1d`,
		`keyfleet:rotation_duration_seconds:p99_rate1h`,
		`keyfleet_uplink_rejections_total > 0`,
		`keyfleet_resent_total`,
	} {
		t.Logf("%s: %s", e, prom.show(e))
	}

	rep, err := sim.stop()
	if err != nil {
		t.Fatalf("simulator: %v", err)
	}
	fc := rep.Faults
	t.Logf("simulator: %d devices; injected %d crashes, %d flaps, %d messages dropped, %d duplicated",
		rep.Devices, fc.Crashes, fc.Flaps, fc.Dropped, fc.Duplicated)
	if fc.Crashes == 0 || fc.Flaps == 0 || fc.Dropped == 0 || fc.Duplicated == 0 {
		t.Errorf("simulator injected %+v, want crashes, flaps, drops and duplicates", fc)
	}
}

// prometheus is a running Prometheus and its HTTP API.
type prometheus struct {
	base string
	log  *lockedBuffer
}

// apiResult is the data of /api/v1/query.
type apiResult struct {
	ResultType string          `json:"resultType"`
	Result     json.RawMessage `json:"result"`
}

// query evaluates expr now through the HTTP API; an expression that does
// not parse is an error.
func (p prometheus) query(expr string) (apiResult, error) {
	c := http.Client{Timeout: 10 * time.Second}
	resp, err := c.PostForm(p.base+"/api/v1/query", url.Values{"query": {expr}})
	if err != nil {
		return apiResult{}, fmt.Errorf("query: %w", err)
	}
	defer resp.Body.Close()
	var body struct {
		Status    string    `json:"status"`
		Data      apiResult `json:"data"`
		ErrorType string    `json:"errorType"`
		Error     string    `json:"error"`
	}
	if err := json.NewDecoder(resp.Body).Decode(&body); err != nil {
		return apiResult{}, fmt.Errorf("query: decode (HTTP %d): %w", resp.StatusCode, err)
	}
	if body.Status != "success" {
		return apiResult{}, fmt.Errorf("query: %s: %s", body.ErrorType, body.Error)
	}
	return body.Data, nil
}

// count returns how many series (or samples) the result holds.
func (r apiResult) count() (int, error) {
	switch r.ResultType {
	case "vector", "matrix":
		var s []json.RawMessage
		if err := json.Unmarshal(r.Result, &s); err != nil {
			return 0, fmt.Errorf("query: %s result: %w", r.ResultType, err)
		}
		return len(s), nil
	case "scalar", "string":
		return 1, nil
	}
	return 0, fmt.Errorf("query: result type %q", r.ResultType)
}

// hasNaN reports whether a value of the result is NaN: a ratio or a
// quantile of nothing.
func (r apiResult) hasNaN() bool { return bytes.Contains(r.Result, []byte(`"NaN"`)) }

// waitFor polls until every expression returns data, and fails the test
// naming those that do not when timeout passes.
func (p prometheus) waitFor(t *testing.T, timeout time.Duration, exprs []string) {
	t.Helper()
	deadline := time.Now().Add(timeout)
	for {
		var missing []string
		for _, e := range exprs {
			if n, err := p.count(e); err != nil || n == 0 {
				missing = append(missing, fmt.Sprintf("%s (%v)", e, err))
			}
		}
		if len(missing) == 0 {
			return
		}
		if time.Now().After(deadline) {
			t.Fatalf("after %v, Prometheus has no data for:\n%s", timeout, strings.Join(missing, "\n"))
		}
		time.Sleep(250 * time.Millisecond)
	}
}

// show returns expr's instant vector as `{labels} value` items, for a log.
func (p prometheus) show(expr string) string {
	r, err := p.query(expr)
	if err != nil {
		return err.Error()
	}
	var v []struct {
		Metric map[string]string `json:"metric"`
		Value  [2]any            `json:"value"`
	}
	if err := json.Unmarshal(r.Result, &v); err != nil {
		return string(r.Result)
	}
	out := make([]string, len(v))
	for i, s := range v {
		for _, l := range []string{"__name__", "instance", "job"} {
			delete(s.Metric, l)
		}
		out[i] = fmt.Sprintf("%v %v", s.Metric, s.Value[1])
	}
	return strings.Join(out, "; ")
}

// count returns how many series (or samples) expr returns now.
func (p prometheus) count(expr string) (int, error) {
	r, err := p.query(expr)
	if err != nil {
		return 0, err
	}
	return r.count()
}

// startPrometheus runs Prometheus on a free loopback port with its data
// in a temporary directory, scraping fleetd's ops listener every second
// and loading copies of rules (evaluated every second) and probeRules. It
// stops Prometheus, its whole process group, when the test ends.
func startPrometheus(t *testing.T, target string, rules []string) prometheus {
	t.Helper()
	dir := t.TempDir()
	var loaded []string
	for _, r := range rules {
		b, err := os.ReadFile(r)
		if err != nil {
			t.Fatal(err)
		}
		dst := filepath.Join(dir, filepath.Base(r))
		if err := os.WriteFile(dst, groupInterval.ReplaceAll(b, []byte("${1}1s")), 0o644); err != nil {
			t.Fatal(err)
		}
		loaded = append(loaded, dst)
	}
	probe := filepath.Join(dir, "dashboard-probe.yml")
	if err := os.WriteFile(probe, []byte(probeRules), 0o644); err != nil {
		t.Fatal(err)
	}
	loaded = append(loaded, probe)
	cfg := fmt.Sprintf(`global:
  scrape_interval: 1s
  evaluation_interval: 1s
rule_files: [%s]
scrape_configs:
  - job_name: fleetd
    static_configs:
      - targets: [%q]
`, quoteAll(loaded), target)
	cfgFile := filepath.Join(dir, "prometheus.yml")
	if err := os.WriteFile(cfgFile, []byte(cfg), 0o644); err != nil {
		t.Fatal(err)
	}
	addr := fleettest.FreeAddr(t)
	log := &lockedBuffer{}
	cmd := exec.Command("prometheus", "--config.file="+cfgFile, "--web.listen-address="+addr,
		"--storage.tsdb.path="+filepath.Join(dir, "data"), "--log.level=warn")
	cmd.Stdout, cmd.Stderr = log, log
	cmd.SysProcAttr = &syscall.SysProcAttr{Setpgid: true}
	if err := cmd.Start(); err != nil {
		t.Fatalf("start prometheus: %v", err)
	}
	done := make(chan error, 1)
	go func() { done <- cmd.Wait() }()
	t.Cleanup(func() {
		_ = syscall.Kill(-cmd.Process.Pid, syscall.SIGTERM)
		select {
		case <-done:
		case <-time.After(10 * time.Second):
			_ = syscall.Kill(-cmd.Process.Pid, syscall.SIGKILL)
			<-done
		}
	})
	p := prometheus{base: "http://" + addr, log: log}
	eventually(t, 30*time.Second, "prometheus ready", func() bool {
		select {
		case err := <-done:
			done <- err
			t.Fatalf("prometheus exited: %v\n%s", err, log.String())
		default:
		}
		c := http.Client{Timeout: time.Second}
		resp, err := c.Get(p.base + "/-/ready")
		if err != nil {
			return false
		}
		_, _ = io.Copy(io.Discard, resp.Body)
		resp.Body.Close()
		return resp.StatusCode == http.StatusOK
	})
	return p
}

func quoteAll(ss []string) string {
	q := make([]string, len(ss))
	for i, s := range ss {
		q[i] = fmt.Sprintf("%q", s)
	}
	return strings.Join(q, ", ")
}

// lockedBuffer collects a process's output from its copying goroutines.
type lockedBuffer struct {
	mu sync.Mutex
	b  bytes.Buffer
}

func (w *lockedBuffer) Write(p []byte) (int, error) {
	w.mu.Lock()
	defer w.mu.Unlock()
	return w.b.Write(p)
}

func (w *lockedBuffer) String() string { w.mu.Lock(); defer w.mu.Unlock(); return w.b.String() }

// eventually polls cond until it holds or timeout passes.
func eventually(t *testing.T, timeout time.Duration, what string, cond func() bool) {
	t.Helper()
	deadline := time.Now().Add(timeout)
	for !cond() {
		if time.Now().After(deadline) {
			t.Fatalf("timed out after %v waiting for %s", timeout, what)
		}
		time.Sleep(50 * time.Millisecond)
	}
}

// runAgents starts an agent per keystore directory, its options adjusted
// by mod, and stops them at the end of the test.
func runAgents(t *testing.T, dirs []string, mod func(*device.Options)) {
	t.Helper()
	ctx, cancel := context.WithCancel(context.Background())
	var wg sync.WaitGroup
	for _, d := range dirs {
		o := device.Options{Dir: d, Logger: fleettest.Logger(t), ReconnectMin: 50 * time.Millisecond, ReconnectMax: time.Second}
		mod(&o)
		a, err := device.New(o)
		if err != nil {
			t.Fatal(err)
		}
		wg.Add(1)
		go func() { defer wg.Done(); _ = a.Run(ctx) }()
	}
	t.Cleanup(func() { cancel(); wg.Wait() })
}
