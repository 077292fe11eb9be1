// Package flagfile gives a command's flags a YAML configuration file and
// environment variables, with one precedence for every flag: command line
// > environment (PREFIX + the flag's name in capitals, "-" as "_") > file
// > the flag's default. Each flag is a key of the file under its own name
// ("mqtt-listen: 0.0.0.0:8883"), so the help text documents both.
//
// # Why not koanf or viper
//
// Both read a file into a map and lose where each key was written, so they
// cannot refuse an unknown key with its file and line, which an operator
// who mistyped "mqtt-listn" needs; both also need the flags bound to them
// one by one. This package reads yaml.v3 nodes, which carry their line,
// and sets values through the pflag.Value of each flag, so the file is
// parsed by exactly the code that parses the command line (durations
// like "7d" included) and pflag's Changed tells what the command line set.
//
// # Basics
//
// Load a file with the names of every flag any command accepts (a file is
// shared by fleetd init and fleetd run), then Apply it with the
// environment to the flag set of the command that runs. Apply returns
// Origins, which prefix a later check's error with where the value came
// from. Errors are "FILE:LINE: KEY: message", one per problem, joined.
//
// # Caveats
//
// A list flag takes a YAML sequence in the file and whitespace-separated
// (stringArray) or comma-separated (stringSlice) items in the
// environment; a mapping becomes KEY=VALUE items, for flags such as
// --key-uri ROLE=URI. The command line, the environment and the file do
// not merge a list: the first of them that sets it gives all of it.
package flagfile

import (
	"errors"
	"fmt"
	"os"
	"regexp"
	"slices"
	"sort"
	"strconv"
	"strings"

	"github.com/spf13/pflag"
	"gopkg.in/yaml.v3"

	"github.com/keyfleet/keyfleet/internal/yamlerr"
)

// Error is one problem at a place: a file line, an environment variable
// or a flag.
type Error struct {
	Where string // "fleetd.yaml:12", "KEYFLEET_GRACE" or "--grace"
	Key   string // the flag's name; empty for a file-wide problem
	Msg   string
}

func (e *Error) Error() string {
	if e.Key == "" {
		return e.Where + ": " + e.Msg
	}
	return e.Where + ": " + e.Key + ": " + e.Msg
}

// File is a loaded configuration file: its keys and where each is.
type File struct {
	Path   string
	values map[string]*yaml.Node
	lines  map[string]int
}

// Load reads path, a YAML mapping of flag names to values. Keys not in
// known, keys given twice and a file that is not such a mapping are
// refused, every one reported with its line.
func Load(path string, known []string) (*File, error) {
	b, err := os.ReadFile(path)
	if err != nil {
		return nil, fmt.Errorf("config: %w", err)
	}
	return Parse(path, b, known)
}

var yamlLine = regexp.MustCompile(`^line (\d+): `)

// Parse is Load of text already read; name is the file's name in errors.
func Parse(name string, text []byte, known []string) (*File, error) {
	f := &File{Path: name, values: map[string]*yaml.Node{}, lines: map[string]int{}}
	var doc yaml.Node
	if err := yaml.Unmarshal(text, &doc); err != nil {
		msg, line := yamlerr.Clean(err).Error(), 1
		if m := yamlLine.FindStringSubmatch(msg); m != nil {
			line, _ = strconv.Atoi(m[1])
			msg = msg[len(m[0]):]
		}
		return nil, &Error{Where: fmt.Sprintf("%s:%d", name, line), Msg: msg}
	}
	if len(doc.Content) == 0 { // an empty file sets nothing
		return f, nil
	}
	root := doc.Content[0]
	if root.Kind != yaml.MappingNode {
		return nil, &Error{Where: fmt.Sprintf("%s:%d", name, root.Line), Msg: "want a mapping of flag names to values"}
	}
	var errs []error
	for i := 0; i+1 < len(root.Content); i += 2 {
		k, v := root.Content[i], root.Content[i+1]
		where := fmt.Sprintf("%s:%d", name, k.Line)
		switch {
		case !slices.Contains(known, k.Value):
			msg := "unknown key"
			if s := suggest(k.Value, known); s != "" {
				msg += "; did you mean " + s + "?"
			}
			errs = append(errs, &Error{Where: where, Key: k.Value, Msg: msg})
		case f.values[k.Value] != nil:
			errs = append(errs, &Error{Where: where, Key: k.Value, Msg: fmt.Sprintf("set twice (first at line %d)", f.lines[k.Value])})
		default:
			f.values[k.Value], f.lines[k.Value] = v, k.Line
		}
	}
	return f, errors.Join(errs...)
}

// Keys returns the file's keys in the order of their lines.
func (f *File) Keys() []string {
	var keys []string
	for k := range f.values {
		keys = append(keys, k)
	}
	sort.Slice(keys, func(i, j int) bool { return f.lines[keys[i]] < f.lines[keys[j]] })
	return keys
}

// Where is "FILE:LINE" of key; "" if the file does not set it.
func (f *File) Where(key string) string {
	if f.values[key] == nil {
		return ""
	}
	return fmt.Sprintf("%s:%d", f.Path, f.lines[key])
}

// Origins tells where each flag's value came from, for messages of checks
// made after Apply. Flags left at their default have none. An item of a
// mapping in the file has its own line, under "NAME.ITEM".
type Origins map[string]string

// WrapItem is Wrap with the origin of one item of a mapping ("key-uri" item
// "ca": the line of "ca:" under "key-uri:"), or else of the whole flag.
func (o Origins) WrapItem(name, item string, err error) error {
	if at := o[name+"."+item]; at != "" && err != nil {
		return fmt.Errorf("%s: %s: %w", at, name, err)
	}
	return o.Wrap(name, err)
}

// Wrap prefixes err with where the flag's value came from ("fleetd.yaml:7:
// key-uri: ...", "--key-uri: ...", "KEYFLEET_KEY_URI: ..."), each of its errors if it joins several, so that every
// line of the message says where; with no origin, err is returned as it is.
func (o Origins) Wrap(name string, err error) error {
	if err == nil || o[name] == "" {
		return err
	}
	if j, ok := err.(interface{ Unwrap() []error }); ok {
		var errs []error
		for _, e := range j.Unwrap() {
			errs = append(errs, o.Wrap(name, e))
		}
		return errors.Join(errs...)
	}
	if !strings.Contains(o[name], ":") { // "--flag" or "KEYFLEET_FLAG" names the key already
		return fmt.Errorf("%s: %w", o[name], err)
	}
	return fmt.Errorf("%s: %s: %w", o[name], name, err)
}

// EnvName is the environment variable of a flag: prefix + NAME_IN_CAPS.
func EnvName(prefix, flag string) string {
	return prefix + strings.ToUpper(strings.ReplaceAll(flag, "-", "_"))
}

// Apply sets each flag of fs that the command line did not set from the
// environment variable EnvName(prefix, name) (looked up with getenv), or
// else from f (which may be nil). skip names flags that take no value
// from either (such as the --config flag itself). Every bad value is
// reported; the flags it could set stay set.
func Apply(fs *pflag.FlagSet, f *File, prefix string, getenv func(string) string, skip ...string) (Origins, error) {
	origins := Origins{}
	var errs []error
	fs.VisitAll(func(fl *pflag.Flag) {
		if slices.Contains(skip, fl.Name) {
			return
		}
		if fl.Changed {
			origins[fl.Name] = "--" + fl.Name
			return
		}
		if env := EnvName(prefix, fl.Name); getenv(env) != "" {
			origins[fl.Name] = env
			if err := setEnv(fl, getenv(env)); err != nil {
				errs = append(errs, &Error{Where: env, Msg: err.Error()})
			}
			return
		}
		if f == nil || f.values[fl.Name] == nil {
			return
		}
		where := f.Where(fl.Name)
		origins[fl.Name] = where
		if n := f.values[fl.Name]; n.Kind == yaml.MappingNode {
			for i := 0; i+1 < len(n.Content); i += 2 {
				origins[fl.Name+"."+n.Content[i].Value] = fmt.Sprintf("%s:%d", f.Path, n.Content[i].Line)
			}
		}
		if err := setNode(fl, f.values[fl.Name]); err != nil {
			errs = append(errs, &Error{Where: where, Key: fl.Name, Msg: err.Error()})
		}
	})
	return origins, errors.Join(errs...)
}

// isList reports whether a flag takes many values (pflag's slices and
// arrays), each Set adding one after the first.
func isList(fl *pflag.Flag) bool {
	t := fl.Value.Type()
	return strings.HasSuffix(t, "Slice") || strings.HasSuffix(t, "Array")
}

func setEnv(fl *pflag.Flag, v string) error {
	if fl.Value.Type() != "stringArray" {
		return set(fl, v)
	}
	for _, item := range strings.Fields(v) {
		if err := fl.Value.Set(item); err != nil {
			return err
		}
	}
	return nil
}

// set sets a single value; pflag's number and boolean errors, which
// quote strconv, are put as a person would.
func set(fl *pflag.Flag, v string) error {
	err := fl.Value.Set(v)
	if err != nil && strings.Contains(err.Error(), "strconv.") {
		return fmt.Errorf("%q is not a %s", v, fl.Value.Type())
	}
	return err
}

// setNode sets a flag from a YAML value: a scalar as the command line
// would, a sequence item by item, a mapping as KEY=VALUE items.
func setNode(fl *pflag.Flag, n *yaml.Node) error {
	var items []string
	switch n.Kind {
	case yaml.ScalarNode:
		if n.Tag == "!!null" {
			if isList(fl) {
				return nil // "san:" with nothing: no items
			}
			return errors.New("no value")
		}
		if !isList(fl) {
			return set(fl, n.Value)
		}
		items = []string{n.Value}
	case yaml.SequenceNode:
		if !isList(fl) {
			return errors.New("want a single value, not a list")
		}
		for _, it := range n.Content {
			if it.Kind != yaml.ScalarNode {
				return fmt.Errorf("line %d: want a plain value in the list", it.Line)
			}
			items = append(items, it.Value)
		}
	case yaml.MappingNode:
		if fl.Value.Type() != "stringArray" {
			return errors.New("want a single value, not a mapping")
		}
		for i := 0; i+1 < len(n.Content); i += 2 {
			k, v := n.Content[i], n.Content[i+1]
			if v.Kind != yaml.ScalarNode {
				return fmt.Errorf("line %d: %s: want a plain value", v.Line, k.Value)
			}
			items = append(items, k.Value+"="+v.Value)
		}
	default:
		return errors.New("want a value")
	}
	for _, it := range items {
		if err := fl.Value.Set(it); err != nil {
			return err
		}
	}
	return nil
}

// suggest returns the known name closest to s, if it is close (a typo).
func suggest(s string, known []string) string {
	best, bestD := "", 3
	for _, k := range known {
		if d := distance(s, k); d < bestD {
			best, bestD = k, d
		}
	}
	return best
}

// distance is the Levenshtein distance of a and b.
func distance(a, b string) int {
	prev := make([]int, len(b)+1)
	for j := range prev {
		prev[j] = j
	}
	for i := 1; i <= len(a); i++ {
		cur := make([]int, len(b)+1)
		cur[0] = i
		for j := 1; j <= len(b); j++ {
			cost := 1
			if a[i-1] == b[j-1] {
				cost = 0
			}
			cur[j] = min(prev[j]+1, cur[j-1]+1, prev[j-1]+cost)
		}
		prev = cur
	}
	return prev[len(b)]
}
