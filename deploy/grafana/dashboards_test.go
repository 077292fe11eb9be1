// Package grafana holds the tests of keyfleet's Grafana dashboards: the
// JSON files in this directory are the product, imported by an operator
// into Grafana (docs/observability.md, "Dashboards"); these tests check
// that each is well formed, and that every expression of every panel, and
// every recording and alerting rule of deploy/prometheus, parses and
// returns data in a real Prometheus scraping a real fleetd through a
// simulator run with campaigns, a revocation and injected faults. It has
// no non-test code.
//
// # Caveats
//
// The tests need the prometheus binary (Debian's prometheus package),
// which `make deps` installs through scripts/deps.sh --with-promtool, and
// SoftHSM2; without them they fail and say so.
package grafana

import (
	"encoding/json"
	"fmt"
	"os"
	"path/filepath"
	"regexp"
	"strings"
	"testing"
	"unicode"

	"github.com/keyfleet/keyfleet/internal/fleettest"
)

func TestMain(m *testing.M) { os.Exit(fleettest.Main(m)) }

// dashboardFiles are the dashboards an operator imports.
const dashboardFiles = "keyfleet-*.json"

// wantDashboards are the dashboards of docs/observability.md, by uid.
var wantDashboards = []string{"keyfleet-executive", "keyfleet-oncall", "keyfleet-debug"}

// operationsDoc is docs/operations.md, relative to this directory; the
// panels' runbook links point at its headings.
var operationsDoc = filepath.Join("..", "..", "docs", "operations.md")

const runbookBase = "https://github.com/keyfleet/keyfleet/blob/main/docs/operations.md#"

// datasourceRef is how a panel or target names its datasource.
type datasourceRef struct {
	Type string `json:"type"`
	UID  string `json:"uid"`
}

// panel is a Grafana panel, as far as these tests read it.
type panel struct {
	ID          int            `json:"id"`
	Type        string         `json:"type"`
	Title       string         `json:"title"`
	Description string         `json:"description"`
	Datasource  *datasourceRef `json:"datasource"`
	GridPos     *struct {
		H, W, X, Y int
	} `json:"gridPos"`
	Links []struct {
		Title string `json:"title"`
		URL   string `json:"url"`
	} `json:"links"`
	Targets []struct {
		Datasource *datasourceRef `json:"datasource"`
		RefID      string         `json:"refId"`
		Expr       string         `json:"expr"`
	} `json:"targets"`
	Panels []panel `json:"panels"` // a collapsed row's panels
}

// dashboard is a Grafana dashboard JSON model, as far as these tests read it.
type dashboard struct {
	file          string
	UID           string `json:"uid"`
	Title         string `json:"title"`
	SchemaVersion int    `json:"schemaVersion"`
	Templating    struct {
		List []struct {
			Name  string `json:"name"`
			Type  string `json:"type"`
			Query string `json:"query"`
		} `json:"list"`
	} `json:"templating"`
	Panels []panel `json:"panels"`
}

// allPanels returns the dashboard's panels, those in rows included.
func (d dashboard) allPanels() []panel {
	var out []panel
	for _, p := range d.Panels {
		out = append(out, p)
		out = append(out, p.Panels...)
	}
	return out
}

// target is one panel query: what Prometheus is asked.
type target struct {
	where string // dashboard / panel / refId
	expr  string
}

// targets returns every panel query of every dashboard.
func targets(ds []dashboard) []target {
	var out []target
	for _, d := range ds {
		for _, p := range d.allPanels() {
			for _, tg := range p.Targets {
				out = append(out, target{where: fmt.Sprintf("%s / %s / %s", d.UID, p.Title, tg.RefID), expr: tg.Expr})
			}
		}
	}
	return out
}

// readDashboards parses every dashboard file.
func readDashboards(t *testing.T) []dashboard {
	t.Helper()
	files, err := filepath.Glob(dashboardFiles)
	if err != nil || len(files) == 0 {
		t.Fatalf("no dashboards %s: %v", dashboardFiles, err)
	}
	var out []dashboard
	for _, f := range files {
		b, err := os.ReadFile(f)
		if err != nil {
			t.Fatal(err)
		}
		d := dashboard{file: f}
		if err := json.Unmarshal(b, &d); err != nil {
			t.Fatalf("%s: %v", f, err)
		}
		out = append(out, d)
	}
	return out
}

// TestDashboardsWellFormed checks what Grafana needs to import each
// dashboard and what an operator needs to read it: a uid and title, a
// Prometheus datasource variable every panel and target uses, unique
// panel ids, a query and a description on every panel, and runbook links
// that resolve to a heading of docs/operations.md.
func TestDashboardsWellFormed(t *testing.T) {
	ds := readDashboards(t)
	headings := runbookAnchors(t)
	uids := map[string]bool{}
	for _, d := range ds {
		uids[d.UID] = true
		if d.UID == "" || d.Title == "" {
			t.Errorf("%s: uid %q title %q, want both set", d.file, d.UID, d.Title)
		}
		if d.SchemaVersion < 36 {
			t.Errorf("%s: schemaVersion %d, want at least 36 (datasource references by uid)", d.file, d.SchemaVersion)
		}
		hasVar := false
		for _, v := range d.Templating.List {
			if v.Name == "datasource" && v.Type == "datasource" && v.Query == "prometheus" {
				hasVar = true
			}
		}
		if !hasVar {
			t.Errorf("%s: no Prometheus datasource variable named datasource", d.file)
		}
		ids := map[int]string{}
		for _, p := range d.allPanels() {
			if prev, dup := ids[p.ID]; dup || p.ID == 0 {
				t.Errorf("%s: panel %q has id %d, already %q's (or zero)", d.file, p.Title, p.ID, prev)
			}
			ids[p.ID] = p.Title
			if p.GridPos == nil || p.GridPos.W == 0 || p.GridPos.H == 0 {
				t.Errorf("%s: panel %q has no gridPos", d.file, p.Title)
			}
			if p.Type == "row" {
				continue
			}
			if p.Description == "" {
				t.Errorf("%s: panel %q has no description", d.file, p.Title)
			}
			if len(p.Targets) == 0 {
				t.Errorf("%s: panel %q has no query", d.file, p.Title)
			}
			for _, ref := range []*datasourceRef{p.Datasource} {
				if ref == nil || ref.Type != "prometheus" || ref.UID != "${datasource}" {
					t.Errorf("%s: panel %q datasource %+v, want prometheus ${datasource}", d.file, p.Title, ref)
				}
			}
			refs := map[string]bool{}
			for _, tg := range p.Targets {
				if tg.Datasource == nil || tg.Datasource.Type != "prometheus" || tg.Datasource.UID != "${datasource}" {
					t.Errorf("%s: panel %q target %s datasource %+v, want prometheus ${datasource}", d.file, p.Title, tg.RefID, tg.Datasource)
				}
				if tg.Expr == "" || tg.RefID == "" || refs[tg.RefID] {
					t.Errorf("%s: panel %q target %q: empty expression, or refId empty or repeated", d.file, p.Title, tg.RefID)
				}
				refs[tg.RefID] = true
			}
			for _, l := range p.Links {
				if a, ok := strings.CutPrefix(l.URL, runbookBase); ok && !headings[a] {
					t.Errorf("%s: panel %q links to runbook #%s, not a heading of %s", d.file, p.Title, a, operationsDoc)
				}
			}
		}
	}
	for _, u := range wantDashboards {
		if !uids[u] {
			t.Errorf("no dashboard with uid %s", u)
		}
	}
	if len(ds) != len(wantDashboards) || len(uids) != len(ds) {
		t.Errorf("%d dashboards with %d distinct uids, want %d: %v", len(ds), len(uids), len(wantDashboards), wantDashboards)
	}
}

// runbookAnchors returns the anchors GitHub gives the headings of
// docs/operations.md.
func runbookAnchors(t *testing.T) map[string]bool {
	t.Helper()
	b, err := os.ReadFile(operationsDoc)
	if err != nil {
		t.Fatal(err)
	}
	out := map[string]bool{}
	for _, line := range strings.Split(string(b), "\n") {
		h := strings.TrimLeft(line, "#")
		if len(h) == len(line) || !strings.HasPrefix(h, " ") {
			continue
		}
		out[anchor(strings.TrimSpace(h))] = true
	}
	return out
}

// anchor is GitHub's anchor of a heading: lower case, punctuation dropped,
// spaces as hyphens.
func anchor(h string) string {
	var b strings.Builder
	for _, r := range strings.ToLower(h) {
		switch {
		case unicode.IsLetter(r) || unicode.IsDigit(r) || r == '-' || r == '_':
			b.WriteRune(r)
		case r == ' ':
			b.WriteByte('-')
		}
	}
	return b.String()
}

// grafanaVars are the values Grafana's built-in variables take in the
// queries sent to Prometheus here: windows long enough to cover the whole
// test.
var grafanaVars = strings.NewReplacer(
	"$__rate_interval", "5m", "${__rate_interval}", "5m",
	"$__interval", "1m", "${__interval}", "1m",
	"$__range", "1h", "${__range}", "1h",
)

// unknownVar finds a Grafana variable left in a query.
var unknownVar = regexp.MustCompile(`\$\{?\w+`)
