package yamlerr

import (
	"errors"
	"strings"
	"testing"
	"time"

	"gopkg.in/yaml.v3"
)

func TestClean(t *testing.T) {
	type doc struct {
		Every time.Duration `yaml:"every"`
		N     int           `yaml:"n"`
	}
	for _, tc := range []struct {
		in, want string
	}{
		{"every: soon\n", "line 1: cannot unmarshal !!str `soon` into time.Duration"},
		{"every: 1s\nn: x\nm: 2\n", "line 2: cannot unmarshal !!str `x` into int; line 3: field m not found in type yamlerr.doc"},
		{"every: [1\n", "line 1: did not find expected ',' or ']'"},
	} {
		dec := yaml.NewDecoder(strings.NewReader(tc.in))
		dec.KnownFields(true)
		var d doc
		err := dec.Decode(&d)
		if err == nil {
			t.Fatalf("%q decoded", tc.in)
		}
		if got := Clean(err).Error(); got != tc.want {
			t.Errorf("Clean(%q) = %q, want %q", err, got, tc.want)
		}
	}
	other := errors.New("open x: no such file")
	if Clean(other) != other {
		t.Error("a non-YAML error was changed")
	}
}
