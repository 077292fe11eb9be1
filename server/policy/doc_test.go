package policy

import (
	"os"
	"path/filepath"
	"strings"
	"testing"
)

// TestDocExamples: the policy files shown in docs/operations.md parse,
// so the reference an operator copies from is a valid file.
func TestDocExamples(t *testing.T) {
	b, err := os.ReadFile(filepath.Join("..", "..", "docs", "operations.md"))
	if err != nil {
		t.Fatal(err)
	}
	n := 0
	for _, section := range []string{"### Policy file", "## Runbooks for devices that come back"} {
		_, rest, ok := strings.Cut(string(b), "\n"+section+"\n")
		if !ok {
			t.Fatalf("docs/operations.md has no %q", section)
		}
		_, block, ok := strings.Cut(rest, "```yaml\n")
		if !ok {
			t.Fatalf("no yaml block under %q", section)
		}
		block, _, _ = strings.Cut(block, "```")
		if _, err := ParseFile("operations.md", []byte(block)); err != nil {
			t.Errorf("the example under %q does not parse:\n%v", section, err)
		}
		n++
	}
	if n != 2 {
		t.Errorf("%d examples checked", n)
	}
}
