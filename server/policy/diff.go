package policy

import (
	"fmt"
	"strconv"
)

// Change is one difference between two policy files.
type Change struct {
	// Field is the path of what changed: "grace", "rules[model=x].max_key_age",
	// or a whole rule "rules[model=x]" when it was added or removed.
	Field string
	// Old and New are the values as text; "" when unset.
	Old, New string
	// key is the effective setting whose value decides whether a device is
	// affected; "" for a whole rule or the rules' order.
	key string
	// oldRule and newRule are the rule's index in each file, -1 for none
	// (a change of the defaults, or a rule added or removed).
	oldRule, newRule int
}

// Affects reports whether a device whose policy was before and is after
// is affected by the change. A field of the defaults or of a rule: the
// device's effective value differs (and for a rule, the rule governs it
// before or after). A rule added or removed: it governs the device after
// or before. The order: the rule governing the device changed.
func (c Change) Affects(before, after Effective) bool {
	inRule := (c.oldRule >= 0 && before.Rule == c.oldRule) || (c.newRule >= 0 && after.Rule == c.newRule)
	switch {
	case c.key != "" && c.oldRule < 0 && c.newRule < 0:
		return before.value(c.key) != after.value(c.key)
	case c.key != "":
		return inRule && before.value(c.key) != after.value(c.key)
	case c.oldRule >= 0 || c.newRule >= 0:
		return inRule
	}
	return before.Select != after.Select
}

// fleetWide are the settings rules cannot override.
var fleetWide = []string{"cert_validity", "renew_after_expiry", "data_keys_decrypt", "data_key_destroy_after"}

// perDevice are the settings a rule may override.
var perDevice = []string{"max_key_age", "grace", "renew_before", "schedule", "jitter", "campaign"}

// value is one effective setting as text.
func (e Effective) value(key string) string {
	switch key {
	case "cert_validity":
		return e.CertValidity.D().String()
	case "renew_after_expiry":
		return e.RenewAfterExpiry.D().String()
	case "data_keys_decrypt":
		return strconv.Itoa(e.DataKeysDecrypt)
	case "data_key_destroy_after":
		return e.DataKeyDestroyAfter.D().String()
	case "max_key_age":
		if e.MaxKeyAge == 0 {
			return "none"
		}
		return e.MaxKeyAge.String()
	case "grace":
		return e.Grace.D().String()
	case "renew_before":
		return strconv.FormatFloat(e.RenewBefore, 'g', -1, 64)
	case "schedule":
		return e.Schedule.String()
	case "jitter":
		return e.Jitter.String()
	case "campaign":
		return e.Campaign.String()
	}
	return ""
}

// String is every effective setting, for comparing and logging.
func (e Effective) String() string {
	s := ""
	for _, k := range append(fleetWide, perDevice...) {
		s += k + "=" + e.value(k) + " "
	}
	return s
}

// settingValue is one set field of s as text; "" when unset.
func settingValue(s Settings, key string) string {
	switch key {
	case "max_key_age":
		if s.MaxKeyAge != nil {
			return s.MaxKeyAge.D().String()
		}
	case "grace":
		if s.Grace != nil {
			return s.Grace.D().String()
		}
	case "renew_before":
		if s.RenewBefore != nil {
			return strconv.FormatFloat(*s.RenewBefore, 'g', -1, 64)
		}
	case "schedule":
		if s.Schedule != nil {
			return s.Schedule.String()
		}
	case "jitter":
		if s.Jitter != nil {
			return s.Jitter.D().String()
		}
	case "campaign":
		if s.Campaign != nil {
			return s.Campaign.String()
		}
	}
	return ""
}

// Diff lists what changes from old to new, field by field: the defaults,
// then each rule matched by its selector (a rule whose selector changed is
// one removed and one added), then the rules' order if only that changed.
func Diff(old, new *File) []Change {
	var out []Change
	oe, ne := old.base(), new.base()
	for _, k := range fleetWide {
		if a, b := oe.value(k), ne.value(k); a != b {
			out = append(out, Change{Field: k, Old: a, New: b, key: k, oldRule: -1, newRule: -1})
		}
	}
	for _, k := range perDevice {
		a, b := settingValue(old.Base, k), settingValue(new.Base, k)
		if k == "grace" || k == "renew_before" {
			a, b = oe.value(k), ne.value(k)
		}
		if a != b {
			out = append(out, Change{Field: k, Old: a, New: b, key: k, oldRule: -1, newRule: -1})
		}
	}
	index := func(f *File) map[string]int {
		m := map[string]int{}
		for i, r := range f.Rules {
			if _, dup := m[r.Select]; !dup {
				m[r.Select] = i
			}
		}
		return m
	}
	oi, ni := index(old), index(new)
	var kept []string
	for i, r := range old.Rules {
		if oi[r.Select] != i {
			continue // a later rule with a selector used before selects nothing new
		}
		if j, ok := ni[r.Select]; ok {
			kept = append(kept, r.Select)
			for _, k := range perDevice {
				if a, b := settingValue(r.Settings, k), settingValue(new.Rules[j].Settings, k); a != b {
					out = append(out, Change{Field: fmt.Sprintf("rules[%s].%s", r.Select, k), Old: a, New: b, key: k, oldRule: i, newRule: j})
				}
			}
			continue
		}
		out = append(out, Change{Field: fmt.Sprintf("rules[%s]", r.Select), Old: "rule removed", oldRule: i, newRule: -1})
	}
	for i, r := range new.Rules {
		if _, ok := oi[r.Select]; !ok && ni[r.Select] == i {
			out = append(out, Change{Field: fmt.Sprintf("rules[%s]", r.Select), New: "rule added", oldRule: -1, newRule: i})
		}
	}
	var order []string
	for i, r := range new.Rules {
		if _, ok := oi[r.Select]; ok && ni[r.Select] == i {
			order = append(order, r.Select)
		}
	}
	if fmt.Sprint(order) != fmt.Sprint(kept) {
		out = append(out, Change{Field: "rules", Old: fmt.Sprintf("order %q", kept), New: fmt.Sprintf("order %q", order), oldRule: -1, newRule: -1})
	}
	return out
}
