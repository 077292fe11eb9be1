package inventory

import (
	"context"
	"errors"
	"fmt"
	"maps"
	"slices"
	"strings"

	"k8s.io/apimachinery/pkg/api/validate/content"

	"github.com/keyfleet/keyfleet/server/store"
)

// ModelKey is the label-like key under which selectors and label changes
// see a device's model.
const ModelKey = "model"

// MaxLabels bounds the labels of one device: labels group devices, and a
// record that grows without bound slows every listing of the fleet.
const MaxLabels = 64

// ErrInvalid marks a label, model or selector that breaks the rules; the
// admin API answers it with 400.
var ErrInvalid = errors.New("invalid")

// invalid wraps ErrInvalid with what was wrong, in the operator's words.
func invalid(format string, args ...any) error {
	return &invalidError{msg: fmt.Sprintf(format, args...)}
}

type invalidError struct{ msg string }

func (e *invalidError) Error() string { return e.msg }
func (e *invalidError) Unwrap() error { return ErrInvalid }

// ValidateKey checks a label key: an optional DNS-subdomain prefix and
// "/", then a name of at most 63 characters of [A-Za-z0-9_.-] that begins
// and ends alphanumeric.
func ValidateKey(key string) error {
	if errs := content.IsLabelKey(key); len(errs) > 0 {
		return invalid("inventory: label key %q: %s", key, strings.Join(errs, "; "))
	}
	return nil
}

// ValidateLabel checks one label; the key "model" is the device's model
// and takes a model's value.
func ValidateLabel(key, value string) error {
	if err := ValidateKey(key); err != nil {
		return err
	}
	if errs := content.IsLabelValue(value); len(errs) > 0 {
		return invalid("inventory: label %s: value %q: %s", key, value, strings.Join(errs, "; "))
	}
	return nil
}

// ValidateModel checks a model name: a label value, so that `model=x`
// selects it; empty means none.
func ValidateModel(model string) error {
	if errs := content.IsLabelValue(model); len(errs) > 0 {
		return invalid("inventory: model %q: %s", model, strings.Join(errs, "; "))
	}
	return nil
}

// Change is one edit of a device's labels: Set adds or replaces, Remove
// deletes (kubectl label's k=v and k-). The key ModelKey sets or clears
// the model.
type Change struct {
	Set    map[string]string
	Remove []string
}

// Empty reports whether c changes nothing.
func (c Change) Empty() bool { return len(c.Set) == 0 && len(c.Remove) == 0 }

// Validate checks every key and value of c, and refuses a key both set
// and removed.
func (c Change) Validate() error {
	for _, k := range slices.Sorted(maps.Keys(c.Set)) {
		if err := ValidateLabel(k, c.Set[k]); err != nil {
			return err
		}
	}
	for _, k := range c.Remove {
		if err := ValidateKey(k); err != nil {
			return err
		}
		if _, ok := c.Set[k]; ok {
			return invalid("inventory: label %s is both set and removed", k)
		}
	}
	return nil
}

// Apply applies c to d and returns a description of what changed, for the
// audit record, or "" if d already was as c wants. c must be valid.
func Apply(d *store.Device, c Change) (string, error) {
	var done []string
	for _, k := range slices.Sorted(maps.Keys(c.Set)) {
		v := c.Set[k]
		if k == ModelKey {
			if d.Model != v {
				d.Model = v
				done = append(done, k+"="+v)
			}
			continue
		}
		if old, ok := d.Labels[k]; ok && old == v {
			continue
		}
		if d.Labels == nil {
			d.Labels = map[string]string{}
		}
		d.Labels[k] = v
		done = append(done, k+"="+v)
	}
	for _, k := range slices.Sorted(slices.Values(c.Remove)) {
		if k == ModelKey {
			if d.Model != "" {
				d.Model = ""
				done = append(done, k+"-")
			}
			continue
		}
		if _, ok := d.Labels[k]; ok {
			delete(d.Labels, k)
			done = append(done, k+"-")
		}
	}
	if len(d.Labels) == 0 {
		d.Labels = nil
	}
	if len(d.Labels) > MaxLabels {
		return "", invalid("inventory: device %s would have %d labels; at most %d", d.ID, len(d.Labels), MaxLabels)
	}
	return strings.Join(done, " "), nil
}

// Store is what Labeler needs of the store.
type Store interface {
	UpdateDevice(ctx context.Context, id string, fn func(d *store.Device) ([]store.Event, error)) (*store.Device, error)
}

// Labeler changes devices' labels and models in the store, each change
// audited ("labelled", with what changed as the detail).
type Labeler struct{ st Store }

// NewLabeler returns a Labeler writing to st.
func NewLabeler(st Store) *Labeler { return &Labeler{st: st} }

// AuditLabelled is the audit action of a label change.
const AuditLabelled = "labelled"

// Label applies c to the device id and returns the device as stored. A
// change that changes nothing writes nothing.
func (l *Labeler) Label(ctx context.Context, id string, c Change, actor string) (*store.Device, error) {
	if err := c.Validate(); err != nil {
		return nil, err
	}
	return l.st.UpdateDevice(ctx, id, func(d *store.Device) ([]store.Event, error) {
		detail, err := Apply(d, c)
		if err != nil {
			return nil, err
		}
		if detail == "" {
			return nil, store.ErrNoChange
		}
		return []store.Event{{Action: AuditLabelled, Device: id, Actor: actor, Detail: detail}}, nil
	})
}
