package adminapi

// AuditRecord is one record of the audit log as the API and `fleetctl
// audit export` carry it: every field the record's hash covers, exactly
// as hashed, so that a verifier outside keyfleet can recompute the chain
// (docs/operations.md, "Audit log", gives the computation).
type AuditRecord struct {
	Seq uint64 `json:"seq"`
	// Time is the record's timestamp as the store hashed it: RFC 3339 in
	// UTC with nanoseconds and trailing zeros dropped. It is a string, not
	// a time, so that it reaches the verifier byte for byte.
	Time    string `json:"time"`
	Action  string `json:"action"`
	Device  string `json:"device"`
	Slot    uint8  `json:"slot"`
	Version uint32 `json:"version"`
	// RID is the rotation id, hex; null when the record has none (which
	// hashes differently from an empty one).
	RID    *string `json:"rid"`
	Actor  string  `json:"actor"`
	Detail string  `json:"detail"`
	// Prev is the previous record's hash, hex; null for the first record.
	Prev *string `json:"prev"`
	// Hash is this record's hash, hex.
	Hash string `json:"hash"`
	// Chain is the hash chain the record is on (PostgreSQL keeps several;
	// Prev is then the previous record of the same chain). 0 is omitted
	// here and in the hashed encoding alike.
	Chain uint32 `json:"chain,omitempty"`
}

// AuditPage is one page of `GET /v1/audit`, oldest record first.
type AuditPage struct {
	Records []AuditRecord `json:"records"`
	// Next is the after= of the following page; 0 when the log ends. A page
	// may hold fewer records than asked for and still have a Next: the
	// server reads at most AuditScanLimit records per request, so a filter
	// that matches little does not hold a read open over a large log.
	Next uint64 `json:"next,omitempty"`
}

// Query parameters of `GET /v1/audit` (all optional; action repeats, and a
// record matches any of them) and of `GET /v1/audit/export` (after only).
const (
	AuditAfter  = "after"  // records with a greater sequence number
	AuditLimit  = "limit"  // at most this many records (1..MaxAuditPage)
	AuditSince  = "since"  // records at or after this time, RFC 3339
	AuditUntil  = "until"  // records before this time, RFC 3339
	AuditDevice = "device" // records of this device
	AuditAction = "action" // records with this action ("requested", "revoked", ...)
)

// MaxAuditPage bounds a page of `GET /v1/audit`, and is its default.
const MaxAuditPage = 1000

// AuditScanLimit bounds how many records one `GET /v1/audit` reads.
const AuditScanLimit = 20000

// AuditExportType is the content type of `GET /v1/audit/export`: JSON
// lines, one AuditRecord each, in sequence order, written as they are read
// so that the server never holds the log in memory.
const AuditExportType = "application/x-ndjson"
