package inventory

import (
	"k8s.io/apimachinery/pkg/labels"

	"github.com/keyfleet/keyfleet/server/store"
)

// Selector picks devices by their labels and model. The zero value
// selects every device.
type Selector struct {
	sel labels.Selector // nil: everything
}

// ParseSelector reads a selector in the Kubernetes label-selector grammar:
// requirements joined by commas, each `k=v`, `k==v`, `k!=v`, `k in (a,b)`,
// `k notin (a,b)`, `k` (has the label) or `!k` (has not). The key "model"
// is the device's model. The empty string selects every device.
func ParseSelector(s string) (Selector, error) {
	if s == "" {
		return Selector{}, nil
	}
	sel, err := labels.Parse(s)
	if err != nil {
		return Selector{}, invalid("inventory: selector %q: %v", s, err)
	}
	return Selector{sel: sel}, nil
}

// Everything reports whether s selects every device.
func (s Selector) Everything() bool { return s.sel == nil || s.sel.Empty() }

// String is s in its canonical form (requirements sorted by key); ""
// selects everything.
func (s Selector) String() string {
	if s.sel == nil {
		return ""
	}
	return s.sel.String()
}

// Matches reports whether d is selected.
func (s Selector) Matches(d *store.Device) bool {
	return s.MatchesLabels(d.Model, d.Labels)
}

// MatchesLabels reports whether a device with this model and these labels
// is selected: for callers that hold no store record.
func (s Selector) MatchesLabels(model string, lbls map[string]string) bool {
	if s.sel == nil {
		return true
	}
	return s.sel.Matches(deviceLabels{model: model, labels: lbls})
}

// deviceLabels shows a device's labels and model to the selector without
// copying them into one map for every device of a large fleet.
type deviceLabels struct {
	model  string
	labels map[string]string
}

func (l deviceLabels) Has(key string) bool {
	if key == ModelKey {
		return l.model != ""
	}
	_, ok := l.labels[key]
	return ok
}

func (l deviceLabels) Get(key string) string {
	if key == ModelKey {
		return l.model
	}
	return l.labels[key]
}

func (l deviceLabels) Lookup(key string) (string, bool) {
	if key == ModelKey {
		return l.model, l.model != ""
	}
	v, ok := l.labels[key]
	return v, ok
}
