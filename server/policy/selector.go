package policy

import (
	"fmt"
	"regexp"
	"strings"
)

// Matcher is a compiled selector; inventory.Selector satisfies it.
type Matcher interface {
	MatchesLabels(model string, labels map[string]string) bool
}

// Label-selector grammar, as Kubernetes' labels.Parse reads it: a key is
// an optional DNS-subdomain prefix and a slash, then a name of up to 63
// characters; a value is empty or a name.
var (
	selName = `[A-Za-z0-9]([-A-Za-z0-9_.]{0,61}[A-Za-z0-9])?`
	selKey  = `([a-z0-9]([-a-z0-9]*[a-z0-9])?(\.[a-z0-9]([-a-z0-9]*[a-z0-9])?)*/)?` + selName
	selVal  = `(` + selName + `)?`
	reqRes  = []*regexp.Regexp{
		regexp.MustCompile(`^!\s*` + selKey + `$`),
		regexp.MustCompile(`^` + selKey + `$`),
		regexp.MustCompile(`^` + selKey + `\s*(=|==|!=)\s*` + selVal + `$`),
		regexp.MustCompile(`^` + selKey + `\s+(in|notin)\s*\(\s*` + selVal + `(\s*,\s*` + selVal + `)*\s*\)$`),
	}
)

// CheckSelector checks a selector's grammar without matching anything:
// what `fleetctl policy validate` can do offline, without the Kubernetes
// library the server matches with (fleetd's parser has the last word at
// apply). The empty selector selects every device.
func CheckSelector(s string) error {
	if strings.TrimSpace(s) == "" {
		return nil
	}
	for _, req := range splitRequirements(s) {
		req = strings.TrimSpace(req)
		ok := false
		for _, re := range reqRes {
			if re.MatchString(req) {
				ok = true
				break
			}
		}
		if !ok {
			return fmt.Errorf("selector %q: requirement %q is not key, !key, key=value, key!=value, key in (a,b) or key notin (a,b)", s, req)
		}
	}
	return nil
}

// splitRequirements splits at the commas outside parentheses.
func splitRequirements(s string) []string {
	var out []string
	depth, start := 0, 0
	for i, c := range s {
		switch c {
		case '(':
			depth++
		case ')':
			depth--
		case ',':
			if depth == 0 {
				out = append(out, s[start:i])
				start = i + 1
			}
		}
	}
	return append(out, s[start:])
}
