package inventory_test

import (
	"context"
	"errors"
	"maps"
	"path/filepath"
	"strings"
	"testing"

	"github.com/keyfleet/keyfleet/server/inventory"
	"github.com/keyfleet/keyfleet/server/store"
)

func TestValidateLabel(t *testing.T) {
	for _, tc := range []struct {
		key, value string
		wantErr    string // "" means valid
	}{
		{"site", "berlin", ""},
		{"example.com/ring", "canary", ""},
		{"a", "", ""},
		{"hw.rev_2", "A-1.b_c", ""},
		{strings.Repeat("k", 63), strings.Repeat("v", 63), ""},
		{"", "x", `label key "": name part must be non-empty`},
		{"Bad Key", "x", `label key "Bad Key": name part must consist of alphanumeric characters`},
		{"-site", "x", `label key "-site"`},
		{strings.Repeat("k", 64), "x", "must be no more than 63 bytes"},
		{"a/b/c", "x", `label key "a/b/c": a valid label key must consist of`},
		{"UPPER.example/x", "x", "prefix part"},
		{"site", "two words", `label site: value "two words": a valid label must be an empty string or consist of`},
		{"site", strings.Repeat("v", 64), "must be no more than 63 bytes"},
		{"site", "-edge", `value "-edge"`},
	} {
		t.Run(tc.key+"="+tc.value, func(t *testing.T) {
			err := inventory.ValidateLabel(tc.key, tc.value)
			if tc.wantErr == "" {
				if err != nil {
					t.Fatalf("got %v, want valid", err)
				}
				return
			}
			if err == nil || !strings.Contains(err.Error(), tc.wantErr) {
				t.Fatalf("got error %v, want one containing %q", err, tc.wantErr)
			}
			if !errors.Is(err, inventory.ErrInvalid) {
				t.Errorf("error %v does not wrap ErrInvalid", err)
			}
			if strings.Count(err.Error(), "inventory:") != 1 {
				t.Errorf("error %q should name the component once", err)
			}
		})
	}
}

func TestValidateModel(t *testing.T) {
	for _, tc := range []struct {
		model string
		ok    bool
	}{{"sensor-v2", true}, {"", true}, {"sensor v2", false}, {strings.Repeat("m", 64), false}} {
		if err := inventory.ValidateModel(tc.model); (err == nil) != tc.ok {
			t.Errorf("ValidateModel(%q) = %v, want ok=%v", tc.model, err, tc.ok)
		}
	}
}

func TestChangeValidate(t *testing.T) {
	for _, tc := range []struct {
		name    string
		c       inventory.Change
		wantErr string
	}{
		{"set and remove", inventory.Change{Set: map[string]string{"site": "b"}, Remove: []string{"ring"}}, ""},
		{"model", inventory.Change{Set: map[string]string{"model": "m1"}}, ""},
		{"bad model", inventory.Change{Set: map[string]string{"model": "m 1"}}, `label model: value "m 1"`},
		{"bad removed key", inventory.Change{Remove: []string{"bad key"}}, `label key "bad key"`},
		{"set and removed", inventory.Change{Set: map[string]string{"site": "b"}, Remove: []string{"site"}}, "site is both set and removed"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			err := tc.c.Validate()
			if tc.wantErr == "" {
				if err != nil {
					t.Fatalf("got %v, want valid", err)
				}
				return
			}
			if err == nil || !strings.Contains(err.Error(), tc.wantErr) {
				t.Fatalf("got error %v, want one containing %q", err, tc.wantErr)
			}
		})
	}
}

func TestApply(t *testing.T) {
	for _, tc := range []struct {
		name       string
		labels     map[string]string
		model      string
		c          inventory.Change
		wantLabels map[string]string
		wantModel  string
		wantDetail string
	}{
		{"first labels", nil, "", inventory.Change{Set: map[string]string{"site": "a", "ring": "canary"}},
			map[string]string{"site": "a", "ring": "canary"}, "", "ring=canary site=a"},
		{"replace and remove", map[string]string{"site": "a", "ring": "canary"}, "", inventory.Change{Set: map[string]string{"site": "b"}, Remove: []string{"ring"}},
			map[string]string{"site": "b"}, "", "site=b ring-"},
		{"remove the last", map[string]string{"site": "a"}, "", inventory.Change{Remove: []string{"site"}}, nil, "", "site-"},
		{"no change", map[string]string{"site": "a"}, "m", inventory.Change{Set: map[string]string{"site": "a", "model": "m"}, Remove: []string{"gone"}},
			map[string]string{"site": "a"}, "m", ""},
		{"model set", nil, "", inventory.Change{Set: map[string]string{"model": "m2"}}, nil, "m2", "model=m2"},
		{"model cleared", map[string]string{"site": "a"}, "m2", inventory.Change{Remove: []string{"model"}}, map[string]string{"site": "a"}, "", "model-"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			d := &store.Device{ID: "d1", Labels: maps.Clone(tc.labels), Model: tc.model}
			detail, err := inventory.Apply(d, tc.c)
			if err != nil {
				t.Fatal(err)
			}
			if detail != tc.wantDetail || !maps.Equal(d.Labels, tc.wantLabels) || d.Model != tc.wantModel {
				t.Errorf("got labels %v model %q detail %q, want %v %q %q", d.Labels, d.Model, detail, tc.wantLabels, tc.wantModel, tc.wantDetail)
			}
			if len(d.Labels) == 0 && d.Labels != nil {
				t.Errorf("no labels left, but the map is kept: %#v", d.Labels)
			}
		})
	}
	t.Run("too many", func(t *testing.T) {
		d := &store.Device{ID: "d1", Labels: map[string]string{}}
		set := map[string]string{}
		for i := range inventory.MaxLabels + 1 {
			set["k"+strings.Repeat("x", i)] = "v"
		}
		if _, err := inventory.Apply(d, inventory.Change{Set: set}); err == nil || !strings.Contains(err.Error(), "at most 64") {
			t.Errorf("got %v, want a refusal naming the limit", err)
		}
	})
}

// The labeler on a real store: the change is durable, audited once, and a
// change that changes nothing writes nothing.
func TestLabeler(t *testing.T) {
	ctx := context.Background()
	path := filepath.Join(t.TempDir(), "fleet.db")
	st, err := store.OpenBolt(path, store.BoltOptions{})
	if err != nil {
		t.Fatal(err)
	}
	if err := st.CreateDevice(ctx, &store.Device{ID: "d1"}); err != nil {
		t.Fatal(err)
	}
	l := inventory.NewLabeler(st)
	steps := []struct {
		c          inventory.Change
		wantLabels map[string]string
		wantModel  string
		wantAudit  string // detail of the new audit record, "" for none
		wantErr    string
	}{
		{inventory.Change{Set: map[string]string{"site": "a", "model": "m1"}}, map[string]string{"site": "a"}, "m1", "model=m1 site=a", ""},
		{inventory.Change{Set: map[string]string{"site": "a"}}, map[string]string{"site": "a"}, "m1", "", ""},
		{inventory.Change{Set: map[string]string{"ring": "beta"}, Remove: []string{"site"}}, map[string]string{"ring": "beta"}, "m1", "ring=beta site-", ""},
		{inventory.Change{Set: map[string]string{"Bad Key": "x"}}, map[string]string{"ring": "beta"}, "m1", "", `label key "Bad Key"`},
	}
	var seen uint64
	for i, s := range steps {
		_, err := l.Label(ctx, "d1", s.c, "admin:test")
		if s.wantErr != "" {
			if err == nil || !strings.Contains(err.Error(), s.wantErr) {
				t.Fatalf("step %d: got %v, want an error containing %q", i, err, s.wantErr)
			}
		} else if err != nil {
			t.Fatalf("step %d: %v", i, err)
		}
		d, err := st.GetDevice(ctx, "d1")
		if err != nil {
			t.Fatal(err)
		}
		if !maps.Equal(d.Labels, s.wantLabels) || d.Model != s.wantModel {
			t.Errorf("step %d: stored labels %v model %q, want %v %q", i, d.Labels, d.Model, s.wantLabels, s.wantModel)
		}
		var details []string
		if err := st.ForEachAudit(ctx, seen+1, func(r *store.AuditRecord) error {
			seen = r.Seq
			if r.Action != inventory.AuditLabelled || r.Device != "d1" || r.Actor != "admin:test" {
				t.Errorf("step %d: audit record %+v, want labelled d1 by admin:test", i, r.Event)
			}
			details = append(details, r.Detail)
			return nil
		}); err != nil {
			t.Fatal(err)
		}
		want := []string(nil)
		if s.wantAudit != "" {
			want = []string{s.wantAudit}
		}
		if strings.Join(details, "|") != strings.Join(want, "|") {
			t.Errorf("step %d: audited %q, want %q", i, details, want)
		}
	}
	if _, err := l.Label(ctx, "ghost", inventory.Change{Set: map[string]string{"a": "b"}}, "admin:test"); !errors.Is(err, store.ErrNotExist) {
		t.Errorf("unknown device: got %v, want ErrNotExist", err)
	}
	// Durable: the labels are there after a reopen.
	if err := st.Close(); err != nil {
		t.Fatal(err)
	}
	st, err = store.OpenBolt(path, store.BoltOptions{})
	if err != nil {
		t.Fatal(err)
	}
	defer st.Close()
	d, err := st.GetDevice(ctx, "d1")
	if err != nil || d.Labels["ring"] != "beta" || d.Model != "m1" {
		t.Errorf("after reopen: %+v, %v; want ring=beta, model m1", d, err)
	}
	if n, err := st.VerifyAudit(ctx); err != nil || n != 2 {
		t.Errorf("audit chain: %d records, %v; want 2, verified", n, err)
	}
}
