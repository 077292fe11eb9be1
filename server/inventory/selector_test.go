package inventory_test

import (
	"errors"
	"strings"
	"testing"

	"github.com/keyfleet/keyfleet/server/inventory"
	"github.com/keyfleet/keyfleet/server/store"
)

func TestParseSelectorRefuses(t *testing.T) {
	for _, tc := range []struct {
		sel, wantErr string
	}{
		{"site in (a", `selector "site in (a": unable to parse requirement: found '', expected: ',' or ')'`},
		{"Bad Key=1", "found 'Key'"},
		{"a=b,,c", "identifier after ','"},
		{"x=y z", "found 'z'"},
		{"site=two words", "found 'words'"},
		{"bad key!/=x", `selector "bad key!/=x"`},
		{"site=" + strings.Repeat("v", 64), "must be no more than 63"},
	} {
		t.Run(tc.sel, func(t *testing.T) {
			_, err := inventory.ParseSelector(tc.sel)
			if err == nil || !strings.Contains(err.Error(), tc.wantErr) {
				t.Fatalf("got %v, want an error containing %q", err, tc.wantErr)
			}
			if !errors.Is(err, inventory.ErrInvalid) {
				t.Errorf("%v does not wrap ErrInvalid", err)
			}
		})
	}
}

func TestSelectorMatches(t *testing.T) {
	devs := map[string]*store.Device{
		"a": {ID: "a", Model: "x", Labels: map[string]string{"site": "a"}},
		"b": {ID: "b", Model: "x", Labels: map[string]string{"site": "b", "beta": ""}},
		"c": {ID: "c", Model: "y", Labels: map[string]string{"site": "c"}},
		"d": {ID: "d"}, // a record from before labels
		"e": {ID: "e", Labels: map[string]string{"example.com/ring": "canary", "model": "shadowed"}},
	}
	for _, tc := range []struct {
		sel, want string // want: ids of the matching devices, in order
	}{
		{"", "abcde"},
		{"model=x,site in (a,b),!beta", "a"},
		{"model=x", "ab"},
		{"model==y", "c"},
		{"model!=x", "cde"},
		{"model", "abc"},
		{"!model", "de"},
		{"model in (x,y)", "abc"},
		{"model notin (x)", "cde"},
		{"site in (a,b)", "ab"},
		{"site notin (a,b)", "cde"},
		{"beta", "b"},
		{"!beta", "acde"},
		{"site,!beta", "ac"},
		{"example.com/ring=canary", "e"},
		{"model=shadowed", ""}, // the key model is the model, never a stored label
		{"site=z", ""},
	} {
		t.Run(tc.sel, func(t *testing.T) {
			s, err := inventory.ParseSelector(tc.sel)
			if err != nil {
				t.Fatal(err)
			}
			var got string
			for _, id := range []string{"a", "b", "c", "d", "e"} {
				if s.Matches(devs[id]) {
					got += id
				}
			}
			if got != tc.want {
				t.Errorf("selector %q matched %q, want %q", tc.sel, got, tc.want)
			}
			if s.Everything() != (tc.sel == "") {
				t.Errorf("Everything() = %v for %q", s.Everything(), tc.sel)
			}
		})
	}
	var zero inventory.Selector
	if !zero.Matches(devs["d"]) || zero.String() != "" {
		t.Error("the zero Selector must select everything")
	}
	s, _ := inventory.ParseSelector("site in (b,a),model=x")
	if s.String() != "model=x,site in (a,b)" {
		t.Errorf("String() = %q, want the canonical form", s.String())
	}
}
