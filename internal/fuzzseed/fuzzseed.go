// Package fuzzseed keeps the checked-in seed corpora of keyfleet's fuzz
// targets (testdata/fuzz/<Target>/<name>, in `go test fuzz v1` format), so
// that plain `go test` runs every fuzz body on them.
//
// Seeds usually carry fresh signatures, so their bytes change from run to
// run: a test lists its seeds with Add, which checks that each file exists,
// or, with KEYFLEET_WRITE_FUZZ_CORPUS=1 in the environment, writes it.
package fuzzseed

import (
	"fmt"
	"os"
	"path/filepath"
	"testing"
)

// Corpus checks or writes the seeds of one package's fuzz targets.
type Corpus struct {
	t       testing.TB
	rewrite bool
	rerun   string // the command that rewrites them, for the failure message
}

// New returns the corpus of the package under test; rerun is the command
// that rewrites it, e.g. "go test -run TestFuzzCorpus ./anchors".
func New(t testing.TB, rerun string) *Corpus {
	return &Corpus{t: t, rewrite: os.Getenv("KEYFLEET_WRITE_FUZZ_CORPUS") == "1", rerun: rerun}
}

// Add checks that the seed name of target is on disk, or writes it with
// data when rewriting.
func (c *Corpus) Add(target, name string, data []byte) {
	c.t.Helper()
	dir := filepath.Join("testdata", "fuzz", target)
	path := filepath.Join(dir, name)
	if !c.rewrite {
		if _, err := os.Stat(path); err != nil {
			c.t.Errorf("seed %s missing (KEYFLEET_WRITE_FUZZ_CORPUS=1 %s writes it): %v", path, c.rerun, err)
		}
		return
	}
	if err := os.MkdirAll(dir, 0o755); err != nil {
		c.t.Fatal(err)
	}
	body := fmt.Sprintf("go test fuzz v1\n[]byte(%+q)\n", data)
	if err := os.WriteFile(path, []byte(body), 0o644); err != nil {
		c.t.Fatal(err)
	}
}

// Slug turns a test case's name into a seed file name.
func Slug(s string) string {
	b := []byte(s)
	for i, ch := range b {
		switch {
		case ch >= 'a' && ch <= 'z', ch >= '0' && ch <= '9', ch == '-':
		case ch >= 'A' && ch <= 'Z':
			b[i] = ch + 'a' - 'A'
		default:
			b[i] = '-'
		}
	}
	return string(b)
}
