package adminapi

import "time"

// Paths of the running policy.
const (
	// PathPolicy: GET the running policy (Policy).
	PathPolicy = "/v1/policy"
	// PathPolicyDiff: POST a PolicyRequest, get a PolicyDiff against the
	// running policy; nothing changes.
	PathPolicyDiff = "/v1/policy/diff"
	// PathPolicyApply: POST a PolicyRequest; the file becomes the next
	// version at once (Policy), or 400 with every error and nothing changed.
	PathPolicyApply = "/v1/policy/apply"
)

// PolicyRequest carries a policy file.
type PolicyRequest struct {
	// Name is the file's name, which errors are reported against.
	Name string `json:"name"`
	// YAML is the file.
	YAML string `json:"yaml"`
}

// Policy is a policy in force.
type Policy struct {
	// Version counts applies from 1; 0 is fleetd's built-in policy.
	Version   uint64    `json:"version"`
	SHA256    string    `json:"sha256,omitempty"`
	AppliedAt time.Time `json:"applied_at"`
	AppliedBy string    `json:"applied_by"`
	Rules     int       `json:"rules"`
	YAML      string    `json:"yaml"`
}

// PolicyChange is one line of a diff: a field of the defaults or of a
// rule (rules[SELECTOR].field), its old and new value, and how many
// devices' effective setting it changes.
type PolicyChange struct {
	Field   string `json:"field"`
	Old     string `json:"old,omitempty"`
	New     string `json:"new,omitempty"`
	Devices int    `json:"devices"`
}

// PolicyDiff is what applying a file would change.
type PolicyDiff struct {
	// From is the running version the diff is against.
	From    uint64         `json:"from"`
	Changes []PolicyChange `json:"changes"`
	// Devices is how many devices' policy changes at all, of Total.
	Devices int `json:"devices"`
	Total   int `json:"total"`
}

// PolicyErrors is the body of a 400 answer to a policy diff or apply: the
// ErrorBody fields and every error of the file, each "file:line: field:
// message".
type PolicyErrors struct {
	ErrorBody
	Errors []string `json:"errors"`
}
