// Package prometheus holds the tests of keyfleet's Prometheus rules: the
// recording and alerting rules in this directory are the product, loaded
// by an operator's Prometheus; these tests run promtool over them in `make
// test` and check that every alert is tested and links to a runbook that
// exists. It has no non-test code.
//
// # Caveats
//
// The tests need promtool (Debian's prometheus package), which `make deps`
// installs through scripts/deps.sh --with-promtool; without it they fail
// and say so.
package prometheus

import (
	"bufio"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"regexp"
	"slices"
	"strings"
	"testing"
	"unicode"

	"gopkg.in/yaml.v3"
)

// ruleFiles are the files an operator's Prometheus loads; testFiles are
// promtool's unit tests of them.
const (
	ruleFiles = "keyfleet-*.yml"
	testFiles = "tests/*.yml"
)

// runbookBase is where every alert's runbook_url points: a heading of
// docs/operations.md as GitHub renders it.
const runbookBase = "https://github.com/keyfleet/keyfleet/blob/main/docs/operations.md#"

// operationsDoc is docs/operations.md, relative to this directory.
var operationsDoc = filepath.Join("..", "..", "docs", "operations.md")

// rule is one recording or alerting rule of a rules file.
type rule struct {
	Record      string            `yaml:"record"`
	Alert       string            `yaml:"alert"`
	Expr        string            `yaml:"expr"`
	Labels      map[string]string `yaml:"labels"`
	Annotations map[string]string `yaml:"annotations"`
}

// ruleFile is a Prometheus rules file.
type ruleFile struct {
	Groups []struct {
		Name  string `yaml:"name"`
		Rules []rule `yaml:"rules"`
	} `yaml:"groups"`
}

// unitTestFile is a promtool unit-test file, as far as these tests read it.
type unitTestFile struct {
	Tests []struct {
		Name          string `yaml:"name"`
		AlertRuleTest []struct {
			Alertname string `yaml:"alertname"`
			ExpAlerts []any  `yaml:"exp_alerts"`
		} `yaml:"alert_rule_test"`
		PromqlExprTest []struct {
			Expr string `yaml:"expr"`
		} `yaml:"promql_expr_test"`
	} `yaml:"tests"`
}

// glob returns the files matching pattern, failing the test when there
// are none: a renamed directory must not pass by testing nothing.
func glob(t *testing.T, pattern string) []string {
	t.Helper()
	files, err := filepath.Glob(pattern)
	if err != nil {
		t.Fatal(err)
	}
	if len(files) == 0 {
		t.Fatalf("no files match %s", pattern)
	}
	return files
}

// loadRules reads every rule of the rules files.
func loadRules(t *testing.T) []rule {
	t.Helper()
	var rules []rule
	for _, f := range glob(t, ruleFiles) {
		var rf ruleFile
		readYAML(t, f, &rf)
		for _, g := range rf.Groups {
			rules = append(rules, g.Rules...)
		}
	}
	if len(rules) == 0 {
		t.Fatal("the rules files hold no rules")
	}
	return rules
}

// loadUnitTests reads every promtool unit-test file.
func loadUnitTests(t *testing.T) []unitTestFile {
	t.Helper()
	var out []unitTestFile
	for _, f := range glob(t, testFiles) {
		var tf unitTestFile
		readYAML(t, f, &tf)
		out = append(out, tf)
	}
	return out
}

// readYAML decodes the YAML file at path into v.
func readYAML(t *testing.T, path string, v any) {
	t.Helper()
	b, err := os.ReadFile(path)
	if err != nil {
		t.Fatal(err)
	}
	if err := yaml.Unmarshal(b, v); err != nil {
		t.Fatalf("%s: %v", path, err)
	}
}

// promtool runs promtool with args and fails the test with its output
// when it fails.
func promtool(t *testing.T, args ...string) string {
	t.Helper()
	bin, err := exec.LookPath("promtool")
	if err != nil {
		t.Fatal("promtool not installed: run `make deps` (scripts/deps.sh --with-promtool installs Debian's prometheus package)")
	}
	out, err := exec.Command(bin, args...).CombinedOutput()
	if err != nil {
		t.Fatalf("promtool %s: %v\n%s", strings.Join(args, " "), err, out)
	}
	return string(out)
}

// TestCheckRules: the rules files are valid rules, as Prometheus loads
// them (`promtool check rules`).
func TestCheckRules(t *testing.T) {
	out := promtool(t, append([]string{"check", "rules"}, glob(t, ruleFiles)...)...)
	t.Logf("%s", out)
}

// TestUnitTests: promtool's unit tests of the rules pass (`promtool test
// rules`): each recording rule computes its SLI, each alert fires on the
// series that should fire it and not on the others.
func TestUnitTests(t *testing.T) {
	out := promtool(t, append([]string{"test", "rules"}, glob(t, testFiles)...)...)
	if strings.Count(out, "SUCCESS") != len(glob(t, testFiles)) {
		t.Fatalf("promtool test rules did not report success for every file:\n%s", out)
	}
}

// TestEveryRuleTested: every alert has a unit test in which it fires, and
// every recording rule is read by a unit test's expression; a rule
// without one could be wrong and promtool would still pass.
func TestEveryRuleTested(t *testing.T) {
	fired := map[string]bool{}
	read := map[string]bool{}
	ident := regexp.MustCompile(`[a-zA-Z_:][a-zA-Z0-9_:]*`)
	for _, tf := range loadUnitTests(t) {
		for _, tc := range tf.Tests {
			for _, at := range tc.AlertRuleTest {
				if len(at.ExpAlerts) > 0 {
					fired[at.Alertname] = true
				}
			}
			for _, et := range tc.PromqlExprTest {
				for _, id := range ident.FindAllString(et.Expr, -1) {
					read[id] = true
				}
			}
		}
	}
	for _, r := range loadRules(t) {
		switch {
		case r.Alert != "" && !fired[r.Alert]:
			t.Errorf("alert %s has no unit test in %s in which it fires", r.Alert, testFiles)
		case r.Record != "" && !read[r.Record]:
			t.Errorf("recording rule %s is read by no promql_expr_test in %s", r.Record, testFiles)
		}
	}
}

// TestAlertsRouted: every alert says how urgent it is (severity page or
// ticket), what happened (summary, description) and what to do
// (runbook_url, a heading of docs/operations.md that exists).
func TestAlertsRouted(t *testing.T) {
	anchors := headingAnchors(t, operationsDoc)
	alerts := 0
	for _, r := range loadRules(t) {
		if r.Alert == "" {
			continue
		}
		alerts++
		t.Run(r.Alert, func(t *testing.T) {
			if s := r.Labels["severity"]; s != "page" && s != "ticket" {
				t.Errorf("severity %q, want page or ticket", s)
			}
			for _, a := range []string{"summary", "description", "runbook_url"} {
				if strings.TrimSpace(r.Annotations[a]) == "" {
					t.Errorf("no %s annotation", a)
				}
			}
			url := r.Annotations["runbook_url"]
			anchor, ok := strings.CutPrefix(url, runbookBase)
			if !ok {
				t.Fatalf("runbook_url %q does not start with %s", url, runbookBase)
			}
			if !anchors[anchor] {
				t.Errorf("runbook_url %q: docs/operations.md has no heading with anchor #%s", url, anchor)
			}
		})
	}
	if alerts == 0 {
		t.Fatal("the rules files hold no alerts")
	}
}

// headingAnchors returns the anchors GitHub makes for the headings of the
// Markdown file at path, fenced code blocks left out.
func headingAnchors(t *testing.T, path string) map[string]bool {
	t.Helper()
	f, err := os.Open(path)
	if err != nil {
		t.Fatal(err)
	}
	defer f.Close()
	anchors := map[string]bool{}
	seen := map[string]int{}
	fenced := false
	sc := bufio.NewScanner(f)
	for sc.Scan() {
		line := sc.Text()
		if strings.HasPrefix(line, "```") {
			fenced = !fenced
			continue
		}
		if fenced {
			continue
		}
		text, ok := headingText(line)
		if !ok {
			continue
		}
		a := githubAnchor(text)
		if n := seen[a]; n > 0 {
			anchors[fmt.Sprintf("%s-%d", a, n)] = true
		} else {
			anchors[a] = true
		}
		seen[a]++
	}
	if err := sc.Err(); err != nil {
		t.Fatal(err)
	}
	return anchors
}

// headingText returns the text of an ATX heading line ("## Text").
func headingText(line string) (string, bool) {
	hashes := len(line) - len(strings.TrimLeft(line, "#"))
	if hashes < 1 || hashes > 6 || len(line) == hashes || line[hashes] != ' ' {
		return "", false
	}
	return strings.TrimSpace(strings.TrimRight(strings.TrimSpace(line[hashes:]), "#")), true
}

// mdLink is an inline Markdown link; GitHub's anchor keeps its text only.
var mdLink = regexp.MustCompile(`\[([^\]]*)\]\([^)]*\)`)

// githubAnchor is the anchor GitHub gives a heading with this text: the
// rendered text lowercased, each space a hyphen, and every character but
// letters, digits, hyphens and underscores dropped (so inline code loses
// its backticks). A repeated heading gets -1, -2, ... (headingAnchors).
func githubAnchor(text string) string {
	text = mdLink.ReplaceAllString(text, "$1")
	var b strings.Builder
	for _, r := range strings.ToLower(text) {
		switch {
		case r == ' ':
			b.WriteRune('-')
		case r == '-' || r == '_' || unicode.IsLetter(r) || unicode.IsDigit(r):
			b.WriteRune(r)
		}
	}
	return b.String()
}

// TestGithubAnchor pins the anchor rules on headings like the ones the
// runbooks have.
func TestGithubAnchor(t *testing.T) {
	for _, tc := range []struct{ heading, want string }{
		{"Audit chain broken", "audit-chain-broken"},
		{"Rotation success SLO burning", "rotation-success-slo-burning"},
		{"Old-key usage high", "old-key-usage-high"},
		{"A device stuck in `issued`", "a-device-stuck-in-issued"},
		{"HSM token unavailable or wrong PIN", "hsm-token-unavailable-or-wrong-pin"},
		{"Revocation slow (M5), p99 > 2 s", "revocation-slow-m5-p99--2-s"},
		{"See [operations](operations.md) now", "see-operations-now"},
		{"data_key_destroy_after", "data_key_destroy_after"},
	} {
		if got := githubAnchor(tc.heading); got != tc.want {
			t.Errorf("githubAnchor(%q) = %q, want %q", tc.heading, got, tc.want)
		}
	}
}

// TestHeadingAnchorsRepeated: a heading that repeats gets GitHub's
// numbered anchors, and headings inside code fences are not headings.
func TestHeadingAnchorsRepeated(t *testing.T) {
	path := filepath.Join(t.TempDir(), "doc.md")
	doc := "# Runbooks\n## Fix\n```\n# not a heading\n```\n### Fix\n#nospace\n"
	if err := os.WriteFile(path, []byte(doc), 0o600); err != nil {
		t.Fatal(err)
	}
	var got []string
	for a := range headingAnchors(t, path) {
		got = append(got, a)
	}
	slices.Sort(got)
	if want := []string{"fix", "fix-1", "runbooks"}; !slices.Equal(got, want) {
		t.Errorf("anchors %v, want %v", got, want)
	}
}

// TestRulesDocumented: docs/observability.md names every recording rule
// and alert, so the people who read the dashboards and get the pages can
// look up what each one computes.
func TestRulesDocumented(t *testing.T) {
	b, err := os.ReadFile(filepath.Join("..", "..", "docs", "observability.md"))
	if err != nil {
		t.Fatal(err)
	}
	doc := string(b)
	for _, r := range loadRules(t) {
		name := r.Record + r.Alert
		if !strings.Contains(doc, "`"+name+"`") {
			t.Errorf("docs/observability.md does not name %s", name)
		}
	}
}

// TestRulesReadRealMetrics: every keyfleet metric a rule reads has its
// row in docs/observability.md's metric tables, which
// server/metrics.TestEveryMetricDocumented keeps equal to what fleetd
// registers; a misspelt name would otherwise pass promtool and match
// nothing in production.
func TestRulesReadRealMetrics(t *testing.T) {
	b, err := os.ReadFile(filepath.Join("..", "..", "docs", "observability.md"))
	if err != nil {
		t.Fatal(err)
	}
	doc := string(b)
	metric := regexp.MustCompile(`\bkeyfleet_[a-z_]+`)
	for _, r := range loadRules(t) {
		for _, m := range metric.FindAllString(r.Expr, -1) {
			base := m
			for _, suffix := range []string{"_bucket", "_count", "_sum"} {
				if s, ok := strings.CutSuffix(m, suffix); ok && strings.HasSuffix(s, "_seconds") {
					base = s
				}
			}
			if !strings.Contains(doc, "| `"+base+"` |") {
				t.Errorf("%s%s reads %s, which docs/observability.md does not list as a metric of fleetd", r.Record, r.Alert, m)
			}
		}
	}
}
