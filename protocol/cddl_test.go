package protocol

import (
	"fmt"
	"os"
	"reflect"
	"regexp"
	"sort"
	"strconv"
	"strings"
	"testing"
)

// The agreement test between docs/protocol.cddl and the Go structs. The
// parser below reads the subset of CDDL that file uses, line by line: a rule
// starts at column 0 ("name = ..." or "name<params> = ..."), a map or group
// rule has one entry per line ("? 4: msg-id, ; RID: ...") or a reference to
// a group ("header<1>,"), and closes with "}" or ")" alone on a line.

const cddlPath = "../docs/protocol.cddl"

// cddlEntry is one "key: type" line of a map or group.
// reporter is the part of testing.T the checks need; TestCDDLDriftDetected
// passes a recorder to see that they fail.
type reporter interface {
	Helper()
	Errorf(format string, args ...any)
}

// recorder is a reporter that only remembers whether anything failed.
type recorder struct{ errs []string }

func (r *recorder) Helper() {}
func (r *recorder) Errorf(format string, args ...any) {
	r.errs = append(r.errs, fmt.Sprintf(format, args...))
}

type cddlEntry struct {
	key      int
	optional bool
	typ      string // the type expression, with generic arguments substituted
	field    string // first word of the comment: the Go field it encodes
	line     int
}

type cddlRule struct {
	name    string
	params  []string
	body    string      // the text after "=" (first line only for type rules)
	entries []cddlEntry // for map and group rules
	refs    []cddlRef   // groups included in a map or group rule
	isGroup bool        // ( ... ) rather than { ... }
	line    int
}

type cddlRef struct {
	name string
	args []string
}

var (
	cddlRuleStart = regexp.MustCompile(`^([A-Za-z][A-Za-z0-9_-]*)(?:<([^>]*)>)?\s*=\s*(.*)$`)
	cddlKeyEntry  = regexp.MustCompile(`^(\?\s*)?(-?\d+)\s*(?::|=>)\s*(.+)$`)
	cddlGroupRef  = regexp.MustCompile(`^~?([A-Za-z][A-Za-z0-9_-]*)(?:<([^>]*)>)?$`)
	cddlFieldName = regexp.MustCompile(`^\s*([A-Za-z][A-Za-z0-9]*)`)
)

func splitArgs(s string) []string {
	if s == "" {
		return nil
	}
	var out []string
	for a := range strings.SplitSeq(s, ",") {
		out = append(out, strings.TrimSpace(a))
	}
	return out
}

// parseCDDL reads the rules of a CDDL file in the subset described above.
func parseCDDL(t reporter, text string) map[string]*cddlRule {
	t.Helper()
	rules := map[string]*cddlRule{}
	var open *cddlRule // map or group rule whose entries are being read
	for i, raw := range strings.Split(text, "\n") {
		lineNo := i + 1
		code, comment, _ := strings.Cut(raw, ";")
		trimmed := strings.TrimSpace(code)
		if open != nil {
			switch {
			case trimmed == "":
				continue
			case trimmed == "}" || trimmed == ")":
				open = nil
				continue
			}
			open.addEntry(t, strings.TrimSuffix(trimmed, ","), comment, lineNo)
			continue
		}
		m := cddlRuleStart.FindStringSubmatch(code)
		if m == nil {
			continue // comment, blank line or continuation of a type rule
		}
		r := &cddlRule{name: m[1], params: splitArgs(m[2]), body: strings.TrimSpace(m[3]), line: lineNo}
		if _, dup := rules[r.name]; dup {
			t.Errorf("%s:%d: rule %q defined twice", cddlPath, lineNo, r.name)
		}
		rules[r.name] = r
		switch {
		case r.body == "{" || r.body == "(":
			r.isGroup = r.body == "("
			open = r
		case strings.HasPrefix(r.body, "{") && strings.HasSuffix(r.body, "}"):
			// A map on one line: {1: -7}.
			for e := range strings.SplitSeq(strings.TrimSuffix(strings.TrimPrefix(r.body, "{"), "}"), ",") {
				if e = strings.TrimSpace(e); e != "" {
					r.addEntry(t, e, comment, lineNo)
				}
			}
		}
	}
	if open != nil {
		t.Errorf("%s: rule %q not closed", cddlPath, open.name)
	}
	return rules
}

func (r *cddlRule) addEntry(t reporter, entry, comment string, line int) {
	t.Helper()
	if m := cddlKeyEntry.FindStringSubmatch(entry); m != nil {
		key, err := strconv.Atoi(m[2])
		if err != nil {
			t.Errorf("%s:%d: key %q: %v", cddlPath, line, m[2], err)
			return
		}
		e := cddlEntry{key: key, optional: m[1] != "", typ: strings.TrimSpace(m[3]), line: line}
		if f := cddlFieldName.FindStringSubmatch(comment); f != nil {
			e.field = f[1]
		}
		r.entries = append(r.entries, e)
		return
	}
	if m := cddlGroupRef.FindStringSubmatch(entry); m != nil {
		r.refs = append(r.refs, cddlRef{name: m[1], args: splitArgs(m[2])})
		return
	}
	t.Errorf("%s:%d: cannot read entry %q of rule %q (one entry per line, \"? key: type\")", cddlPath, line, entry, r.name)
}

// expand returns the entries of a map or group rule with the groups it
// references inlined and generic arguments substituted.
func expand(t reporter, rules map[string]*cddlRule, r *cddlRule, args []string, depth int) []cddlEntry {
	t.Helper()
	if depth > 8 {
		t.Errorf("%s: group references of %q nest too deep", cddlPath, r.name)
		return nil
	}
	if len(args) != len(r.params) {
		t.Errorf("%s:%d: rule %q takes %d generic arguments, got %d", cddlPath, r.line, r.name, len(r.params), len(args))
	}
	var out []cddlEntry
	for _, ref := range r.refs {
		g, ok := rules[ref.name]
		if !ok || !g.isGroup {
			t.Errorf("%s: rule %q includes %q, which is not a group rule", cddlPath, r.name, ref.name)
			continue
		}
		out = append(out, expand(t, rules, g, ref.args, depth+1)...)
	}
	for _, e := range r.entries {
		for i, p := range r.params {
			if i < len(args) {
				e.typ = regexp.MustCompile(`\b`+regexp.QuoteMeta(p)+`\b`).ReplaceAllString(e.typ, args[i])
			}
		}
		out = append(out, e)
	}
	return out
}

var (
	cddlUintLit  = regexp.MustCompile(`^\d+$`)
	cddlRange    = regexp.MustCompile(`^(\d+)\s*\.\.\.?\s*(\d+)$`)
	cddlArrayOf  = regexp.MustCompile(`^\[\s*(?:\d*\s*\*\s*\d*|\+)\s*([A-Za-z][A-Za-z0-9_-]*)\s*\]$`)
	cddlPrimKind = map[string]string{"uint": "uint", "bstr": "bstr", "bytes": "bstr", "tstr": "tstr", "text": "tstr"}
)

// kindOf reduces a CDDL type expression to the CBOR kind a Go field
// decodes from: uint, nint, bstr, tstr, map, or "array of <rule>".
func kindOf(t reporter, rules map[string]*cddlRule, expr string, depth int) string {
	t.Helper()
	expr = strings.TrimSpace(expr)
	if depth > 8 {
		t.Errorf("%s: type %q: aliases nest too deep", cddlPath, expr)
		return "?"
	}
	// Control operators (.size, .cbor, ...) refine a type; the target
	// before them decides the kind.
	if i := strings.Index(expr, " ."); i > 0 {
		expr = strings.TrimSpace(expr[:i])
	}
	switch {
	case cddlUintLit.MatchString(expr), cddlRange.MatchString(expr):
		return "uint"
	case strings.HasPrefix(expr, "-") && cddlUintLit.MatchString(expr[1:]):
		return "nint"
	case strings.HasPrefix(expr, "{"):
		return "map"
	case strings.HasPrefix(expr, "["):
		if m := cddlArrayOf.FindStringSubmatch(expr); m != nil {
			return "array of " + m[1]
		}
		return "array"
	}
	if k, ok := cddlPrimKind[expr]; ok {
		return k
	}
	r, ok := rules[expr]
	if !ok {
		t.Errorf("%s: type %q is neither a prelude type this test knows nor a rule", cddlPath, expr)
		return "?"
	}
	if r.entries != nil || r.refs != nil {
		if r.isGroup {
			return "group"
		}
		return "map"
	}
	return kindOf(t, rules, r.body, depth+1)
}

// goKind reduces a Go field type to the CBOR kind fxamacker/cbor encodes it as.
func goKind(f reflect.StructField) string {
	switch typ := f.Type; typ.Kind() {
	case reflect.Uint8, reflect.Uint16, reflect.Uint32, reflect.Uint64:
		return "uint"
	case reflect.String:
		return "tstr"
	case reflect.Struct:
		return "map"
	case reflect.Slice:
		if typ.Elem().Kind() == reflect.Uint8 {
			return "bstr"
		}
		switch el := typ.Elem(); el.Kind() {
		case reflect.Struct:
			return "array of " + el.Name()
		case reflect.Slice:
			if el.Elem().Kind() == reflect.Uint8 {
				return "array of bstr"
			}
		case reflect.Uint8, reflect.Uint16, reflect.Uint32, reflect.Uint64:
			return "array of uint"
		}
		return "unsupported Go element kind " + typ.Elem().Kind().String()
	default:
		return "unsupported Go kind " + typ.Kind().String()
	}
}

// goField is one keyasint field of a struct, embedded structs flattened.
type goField struct {
	key       int
	omitempty bool
	field     reflect.StructField
}

func goFields(t reporter, typ reflect.Type) map[int]goField {
	t.Helper()
	out := map[int]goField{}
	for i := range typ.NumField() {
		f := typ.Field(i)
		if f.Anonymous && f.Type.Kind() == reflect.Struct {
			for k, v := range goFields(t, f.Type) {
				if _, dup := out[k]; dup {
					t.Errorf("%v: key %d used twice", typ, k)
				}
				out[k] = v
			}
			continue
		}
		tag, ok := f.Tag.Lookup("cbor")
		if !ok || tag == "-" {
			if f.IsExported() {
				t.Errorf("%v.%s: exported field without a cbor tag", typ, f.Name)
			}
			continue
		}
		parts := strings.Split(tag, ",")
		key, err := strconv.Atoi(parts[0])
		if err != nil || !containsString(parts[1:], "keyasint") {
			t.Errorf("%v.%s: tag %q is not an integer key with keyasint", typ, f.Name, tag)
			continue
		}
		if _, dup := out[key]; dup {
			t.Errorf("%v: key %d used twice", typ, key)
		}
		out[key] = goField{key: key, omitempty: containsString(parts[1:], "omitempty"), field: f}
	}
	return out
}

func containsString(list []string, s string) bool {
	for _, x := range list {
		if x == s {
			return true
		}
	}
	return false
}

func sortedKeys[V any](m map[int]V) []int {
	keys := make([]int, 0, len(m))
	for k := range m {
		keys = append(keys, k)
	}
	sort.Ints(keys)
	return keys
}

// compareRule checks one CDDL map rule against one Go struct: the same set
// of integer keys, "?" exactly where the tag says omitempty, the same CBOR
// kind, and the comment naming the Go field.
func compareRule(t reporter, rules map[string]*cddlRule, name string, entries []cddlEntry, typ reflect.Type, structRule map[string]reflect.Type) {
	t.Helper()
	want := goFields(t, typ)
	got := map[int]cddlEntry{}
	for _, e := range entries {
		if _, dup := got[e.key]; dup {
			t.Errorf("%s:%d: rule %q has key %d twice", cddlPath, e.line, name, e.key)
		}
		got[e.key] = e
	}
	if g, w := sortedKeys(got), sortedKeys(want); !reflect.DeepEqual(g, w) {
		t.Errorf("rule %q has keys %v, want the keyasint keys of %v: %v", name, g, typ, w)
	}
	for _, k := range sortedKeys(want) {
		gf := want[k]
		e, ok := got[k]
		if !ok {
			t.Errorf("rule %q: no key %d for Go field %v.%s", name, k, typ, gf.field.Name)
			continue
		}
		if e.optional != gf.omitempty {
			t.Errorf("%s:%d: rule %q key %d: optional = %v, want %v (omitempty on %v.%s)",
				cddlPath, e.line, name, k, e.optional, gf.omitempty, typ, gf.field.Name)
		}
		if e.field != gf.field.Name {
			t.Errorf("%s:%d: rule %q key %d: comment names field %q, want %q", cddlPath, e.line, name, k, e.field, gf.field.Name)
		}
		gk, ck := goKind(gf.field), kindOf(t, rules, e.typ, 0)
		if elem, ok := strings.CutPrefix(ck, "array of "); ok {
			// Compare the element rule with its Go struct by name.
			if et, known := structRule[elem]; known {
				ck = "array of " + et.Name()
			} else {
				ck = "array of " + kindOf(t, rules, elem, 0)
			}
		}
		if gk != ck {
			t.Errorf("%s:%d: rule %q key %d (%s) is %q in CDDL, want %q for Go type %v",
				cddlPath, e.line, name, k, gf.field.Name, ck, gk, gf.field.Type)
		}
	}
}

// TestCDDLAgreement fails when docs/protocol.cddl and the Go message
// structs disagree: a message type without a rule, a field without an
// entry (or the reverse), an optional marker that does not match omitempty,
// or a type of another CBOR kind.
func TestCDDLAgreement(t *testing.T) {
	text, err := os.ReadFile(cddlPath)
	if err != nil {
		t.Fatalf("read CDDL: %v", err)
	}
	rules := parseCDDL(t, string(text))

	// Rules that describe a Go struct which is not a message.
	structRule := map[string]reflect.Type{
		"slot-version": reflect.TypeFor[SlotVersion](),
	}

	t.Run("header", func(t *testing.T) {
		r, ok := rules["header"]
		if !ok || !r.isGroup {
			t.Fatalf("%s: no group rule \"header\"", cddlPath)
		}
		entries := r.entries // unexpanded: the generic parameter stays a name
		got := map[int]cddlEntry{}
		for _, e := range entries {
			got[e.key] = e
		}
		want := goFields(t, reflect.TypeFor[Header]())
		if g, w := sortedKeys(got), sortedKeys(want); !reflect.DeepEqual(g, w) {
			t.Errorf("header has keys %v, want %v", g, w)
		}
		for k, e := range got {
			if k < 1 || k > 6 {
				t.Errorf("header key %d outside 1-6", k)
			}
			if gf, ok := want[k]; ok && e.optional != gf.omitempty {
				t.Errorf("header key %d: optional = %v, want %v (omitempty on Header.%s)", k, e.optional, gf.omitempty, gf.field.Name)
			}
		}
	})

	for name, typ := range structRule {
		t.Run(name, func(t *testing.T) {
			r, ok := rules[name]
			if !ok {
				t.Fatalf("%s: no rule %q for %v", cddlPath, name, typ)
			}
			compareRule(t, rules, name, expand(t, rules, r, nil, 0), typ, structRule)
		})
	}

	types := make([]Type, 0, len(typeNames))
	for typ := range typeNames {
		types = append(types, typ)
	}
	sort.Slice(types, func(i, j int) bool { return types[i] < types[j] })
	for _, typ := range types {
		name := typ.String()
		t.Run(name, func(t *testing.T) {
			r, ok := rules[name]
			if !ok {
				t.Fatalf("%s: no rule %q for message type %d", cddlPath, name, typ)
			}
			if r.isGroup || r.entries == nil && r.refs == nil {
				t.Fatalf("%s:%d: rule %q is not a map", cddlPath, r.line, name)
			}
			m, err := newMessage(typ)
			if err != nil {
				t.Fatal(err)
			}
			entries := expand(t, rules, r, nil, 0)
			for _, e := range entries {
				if e.key == 2 && e.typ != strconv.Itoa(int(typ)) {
					t.Errorf("%s:%d: rule %q fixes type %s, want %d", cddlPath, e.line, name, e.typ, typ)
				}
			}
			compareRule(t, rules, name, entries, reflect.TypeOf(m).Elem(), structRule)
		})
	}

	t.Run("envelope", func(t *testing.T) {
		for _, want := range []string{
			"signed-message = #6.18([",
			"protected-header = {1: -7, 4: bstr .size 8}",
			"unprotected: {},",
			"signature: bstr .size 64",
			fmt.Sprintf("msg-id = bstr .size %d", MessageIDSize),
			fmt.Sprintf("tstr .size (0..%d)", MaxDetailLen),
		} {
			if !strings.Contains(string(text), want) {
				t.Errorf("%s does not contain %q", cddlPath, want)
			}
		}
		// Which payloads are signed must follow Signed().
		sp, ok := rules["signed-payload"]
		if !ok {
			t.Fatalf("%s: no rule signed-payload", cddlPath)
		}
		listed := map[string]bool{}
		for alt := range strings.SplitSeq(sp.body, "/") {
			listed[strings.TrimSpace(alt)] = true
		}
		for _, typ := range types {
			if got, want := listed[typ.String()], Signed(typ); got != want {
				t.Errorf("signed-payload lists %q: %v, want %v (Signed(%v))", typ, got, want, typ)
			}
		}
	})
}

// TestCDDLDriftDetected runs the comparison on doctored inputs, so that
// TestCDDLAgreement is known to fail when the two sides drift apart.
func TestCDDLDriftDetected(t *testing.T) {
	text, err := os.ReadFile(cddlPath)
	if err != nil {
		t.Fatalf("read CDDL: %v", err)
	}
	structRule := map[string]reflect.Type{"slot-version": reflect.TypeFor[SlotVersion]()}
	// A Go message that gained a field the CDDL does not have.
	type rotateWithNewField struct {
		Rotate
		New uint8 `cbor:"20,keyasint"`
	}
	tests := []struct {
		name     string
		old, new string // textual edit of the CDDL; empty: none
		goType   reflect.Type
		rule     string
	}{
		{"go field without cddl entry", "", "", reflect.TypeFor[rotateWithNewField](), "rotate"},
		{"cddl entry without go field", "  19: unix-time,         ; NotAfter", "  19: unix-time,         ; NotAfter\n  20: uint,              ; Extra", reflect.TypeFor[Delegation](), "delegation"},
		{"missing key", "  13: bstr,", "  ; 13 removed", reflect.TypeFor[Cert](), "cert"},
		{"optional mismatch", "  ? 16: tstr", "  16: tstr", reflect.TypeFor[Error](), "error"},
		{"header optional mismatch", "  ? 4: msg-id,", "  4: msg-id,", reflect.TypeFor[Error](), "error"},
		{"kind mismatch", "  12: bstr,", "  12: tstr,", reflect.TypeFor[Enroll](), "enroll"},
		{"array element mismatch", "  10: [0*64 slot-version],", "  10: [0*64 msg-id],", reflect.TypeFor[Hello](), "hello"},
		{"comment names another field", "  ? 15: bstr,            ; Ref", "  ? 15: bstr,            ; Reference", reflect.TypeFor[Error](), "error"},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			doctored := string(text)
			if tt.old != "" {
				if !strings.Contains(doctored, tt.old) {
					t.Fatalf("test setup: %q not in %s", tt.old, cddlPath)
				}
				doctored = strings.Replace(doctored, tt.old, tt.new, 1)
			}
			rec := &recorder{}
			rules := parseCDDL(rec, doctored)
			r, ok := rules[tt.rule]
			if !ok {
				t.Fatalf("no rule %q", tt.rule)
			}
			compareRule(rec, rules, tt.rule, expand(rec, rules, r, nil, 0), tt.goType, structRule)
			if len(rec.errs) == 0 {
				t.Errorf("comparison of doctored rule %q passed, want it to fail", tt.rule)
			}
			for _, e := range rec.errs {
				t.Logf("detected: %s", e)
			}
		})
	}
}
