package deps

import (
	"bufio"
	"os"
	"os/exec"
	"path/filepath"
	"regexp"
	"slices"
	"strings"
	"testing"
)

// tableRow is one row of docs/architecture.md's package table:
// | `pkg` | `a`, `b` | or | `pkg` | nothing |.
var tableRow = regexp.MustCompile("^\\| `([a-z0-9/_-]+)` \\| (.*) \\|$")

// TestArchitectureTable: the package table in docs/architecture.md names,
// for every package, exactly the keyfleet packages it imports. People
// learn the layout from that table; a table that drifts from the code
// teaches the wrong layout.
func TestArchitectureTable(t *testing.T) {
	root := moduleRoot(t)
	f, err := os.Open(filepath.Join(root, "docs", "architecture.md"))
	if err != nil {
		t.Fatal(err)
	}
	defer f.Close()
	doc := map[string][]string{}
	sc := bufio.NewScanner(f)
	in := false // inside the table, from its header to the first line that is not a row
	for sc.Scan() {
		if sc.Text() == "| package | imports |" {
			in = true
			continue
		}
		if !in || sc.Text() == "|---|---|" {
			continue
		}
		m := tableRow.FindStringSubmatch(sc.Text())
		if m == nil {
			in = false
			continue
		}
		var imports []string
		if m[2] != "nothing" {
			for _, s := range strings.Split(m[2], ", ") {
				imports = append(imports, strings.Trim(s, "`"))
			}
		}
		doc[m[1]] = imports
	}
	if err := sc.Err(); err != nil {
		t.Fatal(err)
	}
	cmd := exec.Command("go", "list", "-f", "{{.ImportPath}}|{{join .Imports \" \"}}", "./...")
	cmd.Dir = root
	out, err := cmd.Output()
	if err != nil {
		t.Fatalf("go list: %v", err)
	}
	for _, line := range strings.Split(strings.TrimSpace(string(out)), "\n") {
		pkg, imports, _ := strings.Cut(line, "|")
		pkg = strings.TrimPrefix(pkg, module+"/")
		if pkg == "e2e" || pkg == "scripts" || pkg == "internal/deps" { // tests only
			continue
		}
		if strings.HasPrefix(pkg, "deploy/") { // other programs' configuration, with its tests only
			continue
		}
		var own []string
		for _, imp := range strings.Fields(imports) {
			if rest, ok := strings.CutPrefix(imp, module+"/"); ok {
				own = append(own, rest)
			}
		}
		slices.Sort(own)
		got, ok := doc[pkg]
		if !ok {
			t.Errorf("docs/architecture.md's package table has no row for %s (imports %v)", pkg, own)
			continue
		}
		slices.Sort(got)
		if !slices.Equal(got, own) {
			t.Errorf("docs/architecture.md says %s imports %v; it imports %v", pkg, got, own)
		}
		delete(doc, pkg)
	}
	for pkg := range doc {
		t.Errorf("docs/architecture.md's package table names %s, which is not a package", pkg)
	}
}
