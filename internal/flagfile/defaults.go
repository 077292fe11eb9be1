package flagfile

import (
	"bytes"
	"fmt"
	"io"
	"slices"
	"strings"

	"github.com/spf13/pflag"
	"gopkg.in/yaml.v3"
)

// Section is a group of flags in a defaults file, under a comment.
type Section struct {
	Title string
	Flags *pflag.FlagSet
}

// WriteDefaults writes a complete configuration file: every flag of the
// sections, each once, at its default and under its help text, so that
// Load and Apply read it back to the same values. header opens the file
// as a comment. skip names flags left out (such as --config).
func WriteDefaults(w io.Writer, header string, sections []Section, skip ...string) error {
	root := &yaml.Node{Kind: yaml.MappingNode}
	seen := map[string]bool{}
	for _, s := range sections {
		first := true
		s.Flags.VisitAll(func(fl *pflag.Flag) {
			if seen[fl.Name] || fl.Hidden || slices.Contains(skip, fl.Name) {
				return
			}
			seen[fl.Name] = true
			comment := wrap(strings.ReplaceAll(fl.Usage, "`", ""), 76) // pflag's `NAME` marks
			if first && s.Title != "" {
				comment = "\n" + s.Title + "\n\n" + comment
				first = false
			}
			key := &yaml.Node{Kind: yaml.ScalarNode, Value: fl.Name, HeadComment: comment}
			root.Content = append(root.Content, key, defaultNode(fl))
		})
	}
	var buf bytes.Buffer
	for _, line := range strings.Split(strings.TrimSpace(header), "\n") {
		buf.WriteString(strings.TrimRight("# "+line, " ") + "\n")
	}
	enc := yaml.NewEncoder(&buf)
	enc.SetIndent(2)
	if err := enc.Encode(root); err != nil {
		return fmt.Errorf("config defaults: %w", err)
	}
	if err := enc.Close(); err != nil {
		return fmt.Errorf("config defaults: %w", err)
	}
	_, err := w.Write(buf.Bytes())
	return err
}

// defaultNode is a flag's default as YAML: lists as sequences (an empty
// stringArray of KEY=VALUE items as an empty mapping), booleans bare,
// everything else a quoted string, so a value such as "off" or "0" is
// never read back as another type.
func defaultNode(fl *pflag.Flag) *yaml.Node {
	if isList(fl) {
		n := &yaml.Node{Kind: yaml.SequenceNode, Style: yaml.FlowStyle}
		if fl.Value.Type() == "stringArray" && fl.DefValue == "[]" {
			return &yaml.Node{Kind: yaml.MappingNode, Style: yaml.FlowStyle}
		}
		if fl.DefValue == "[]" {
			return n
		}
		for _, item := range strings.Split(strings.Trim(fl.DefValue, "[]"), ",") {
			n.Content = append(n.Content, &yaml.Node{Kind: yaml.ScalarNode, Value: item, Style: yaml.DoubleQuotedStyle})
		}
		return n
	}
	if fl.Value.Type() == "bool" {
		return &yaml.Node{Kind: yaml.ScalarNode, Tag: "!!bool", Value: fl.DefValue}
	}
	return &yaml.Node{Kind: yaml.ScalarNode, Value: fl.DefValue, Style: yaml.DoubleQuotedStyle}
}

// wrap breaks text into lines of at most width bytes at spaces (a longer
// word stays whole).
func wrap(text string, width int) string {
	var lines []string
	line := ""
	for _, w := range strings.Fields(text) {
		if line != "" && len(line)+1+len(w) > width {
			lines, line = append(lines, line), ""
		}
		if line != "" {
			line += " "
		}
		line += w
	}
	return strings.Join(append(lines, line), "\n")
}
