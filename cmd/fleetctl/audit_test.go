package main

import (
	"bytes"
	"crypto/sha256"
	"encoding/binary"
	"encoding/hex"
	"encoding/json"
	"fmt"
	"net/url"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	bolt "go.etcd.io/bbolt"

	"github.com/keyfleet/keyfleet/adminapi"
	"github.com/keyfleet/keyfleet/internal/fleettest"
)

// The filters of audit list become the API's query: times as RFC 3339 or a
// duration back from now, kinds as repeated actions.
func TestAuditQuery(t *testing.T) {
	now := time.Date(2026, 11, 30, 12, 0, 0, 0, time.UTC)
	for _, tc := range []struct {
		name    string
		f       auditFilter
		want    url.Values
		wantErr string
	}{
		{"nothing", auditFilter{}, url.Values{}, ""},
		{"since a duration", auditFilter{since: "24h"}, url.Values{"since": {"2026-11-29T12:00:00Z"}}, ""},
		{"since days", auditFilter{since: "7d"}, url.Values{"since": {"2026-11-23T12:00:00Z"}}, ""},
		{"since and until", auditFilter{since: "2026-11-01T00:00:00Z", until: "1d12h"},
			url.Values{"since": {"2026-11-01T00:00:00Z"}, "until": {"2026-11-29T00:00:00Z"}}, ""},
		{"offset kept as the instant", auditFilter{until: "2026-11-30T13:00:00+01:00"}, url.Values{"until": {"2026-11-30T12:00:00Z"}}, ""},
		{"device and kinds", auditFilter{device: "dev-1", kinds: []string{"requested", "revoked"}, after: 40},
			url.Values{"device": {"dev-1"}, "action": {"requested", "revoked"}, "after": {"40"}}, ""},
		{"not a time", auditFilter{since: "yesterday"}, nil, `--since: "yesterday": want an RFC 3339 time`},
		{"negative duration", auditFilter{until: "-5m"}, nil, "--until"},
		{"date without a time", auditFilter{since: "2026-11-01"}, nil, "--since"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			got, err := tc.f.query(now)
			if tc.wantErr != "" {
				if err == nil || !strings.Contains(err.Error(), tc.wantErr) {
					t.Fatalf("got %v, %v; want an error containing %q", got, err, tc.wantErr)
				}
				return
			}
			if err != nil || got.Encode() != tc.want.Encode() {
				t.Errorf("got %q, %v; want %q", got.Encode(), err, tc.want.Encode())
			}
		})
	}
}

// audit list, export and verify against a real fleetd: the filters select
// the records they name, the export verifies with a hash computed here
// independently of the store, and a record changed in the stopped fleetd's
// bbolt file makes verify (and the independent check) fail.
func TestAuditCommands(t *testing.T) {
	f := fleettest.StartFleet(t, nil)
	run := against(f)
	mustRun := func(args ...string) string {
		t.Helper()
		out, errOut, status := run(args...)
		if status != 0 {
			t.Fatalf("fleetctl %v: status %d\n%s%s", args, status, out, errOut)
		}
		return out
	}
	for _, id := range []string{"dev-1", "dev-2", "dev-3"} {
		mustRun("device", "add", id, "--out", filepath.Join(t.TempDir(), id))
	}
	mustRun("rotate", "dev-1", "dev-2")
	mustRun("device", "revoke", "dev-3", "--reason", "lost in transit")
	time.Sleep(1100 * time.Millisecond) // the records below are later than those above
	mid := time.Now().UTC()
	mustRun("rotate", "dev-1") // already in progress: no record
	mustRun("device", "revoke", "dev-2", "--reason", "stolen")

	list := func(args ...string) []adminapi.AuditRecord {
		t.Helper()
		out := mustRun(append([]string{"audit", "list", "-o", "json"}, args...)...)
		var recs []adminapi.AuditRecord
		if err := json.Unmarshal([]byte(out), &recs); err != nil {
			t.Fatalf("audit list -o json: %v\n%s", err, out)
		}
		return recs
	}
	all := list("--limit", "0")
	if len(all) < 8 {
		t.Fatalf("audit list: got %d records, want the provisioning, rotation and revocation records", len(all))
	}
	for _, tc := range []struct {
		name string
		args []string
		want func(r adminapi.AuditRecord) bool
	}{
		{"device", []string{"--device", "dev-3"}, func(r adminapi.AuditRecord) bool { return r.Device == "dev-3" }},
		{"kind", []string{"--kind", "revoked"}, func(r adminapi.AuditRecord) bool { return r.Action == "revoked" }},
		{"kinds and device", []string{"--kind", "requested,revoked", "--device", "dev-2"},
			func(r adminapi.AuditRecord) bool {
				return r.Device == "dev-2" && (r.Action == "requested" || r.Action == "revoked")
			}},
		{"since", []string{"--since", mid.Format(time.RFC3339Nano)}, func(r adminapi.AuditRecord) bool { return !recTime(t, r).Before(mid) }},
		{"until", []string{"--until", mid.Format(time.RFC3339Nano)}, func(r adminapi.AuditRecord) bool { return recTime(t, r).Before(mid) }},
		{"since a duration", []string{"--since", "1h"}, func(adminapi.AuditRecord) bool { return true }},
		{"until a day ago", []string{"--until", "1d"}, func(adminapi.AuditRecord) bool { return false }},
	} {
		t.Run(tc.name, func(t *testing.T) {
			got := list(append(tc.args, "--limit", "0")...)
			var want []uint64
			for _, r := range all {
				if tc.want(r) {
					want = append(want, r.Seq)
				}
			}
			var seqs []uint64
			for _, r := range got {
				seqs = append(seqs, r.Seq)
			}
			if fmt.Sprint(seqs) != fmt.Sprint(want) {
				t.Errorf("got records %v, want %v", seqs, want)
			}
		})
	}
	t.Run("limit and after", func(t *testing.T) {
		out, errOut, status := run("audit", "list", "--limit", "3")
		if status != 0 || strings.Count(out, "\n") != 4 || !strings.Contains(errOut, "continue with --after 3") {
			t.Fatalf("got status %d, %q, stderr %q; want a header, 3 records and a hint to continue after 3", status, out, errOut)
		}
		if got := list("--after", "3", "--limit", "2"); len(got) != 2 || got[0].Seq != 4 || got[1].Seq != 5 {
			t.Errorf("--after 3 --limit 2: got %+v, want records 4 and 5", got)
		}
	})
	t.Run("table", func(t *testing.T) {
		out := mustRun("audit", "list", "--kind", "revoked")
		for _, w := range []string{"SEQ", "KIND", "revoked", "dev-3", "lost in transit", "admin:"} {
			if !strings.Contains(out, w) {
				t.Errorf("table lacks %q:\n%s", w, out)
			}
		}
	})

	export := filepath.Join(t.TempDir(), "audit.jsonl")
	_, errOut, status := run("audit", "export", "--out", export)
	if status != 0 {
		t.Fatalf("audit export: status %d: %s", status, errOut)
	}
	head := verifyExport(t, export)
	if !strings.Contains(errOut, fmt.Sprintf("exported %d records; head %s", len(all), head)) {
		t.Errorf("export summary %q, want %d records and head %s", errOut, len(all), head)
	}
	if out := mustRun("audit", "verify"); !strings.Contains(out, fmt.Sprintf("audit chain verified: %d records, head %s", len(all), head)) {
		t.Errorf("audit verify: got %q, want %d records and the export's head %s", out, len(all), head)
	}
	if _, errOut, status := run("audit", "export", "--out", export); status != 1 || !strings.Contains(errOut, "exists") {
		t.Errorf("export over an existing file: got status %d, %q; want 1 and a refusal", status, errOut)
	}

	// Change one record's detail in the store file while fleetd is down.
	if err := f.Close(); err != nil {
		t.Fatal(err)
	}
	tamper(t, filepath.Join(f.Config.DataDir, "fleet.db"), "lost in transit", "lost in trAnsit")
	f.Restart(t)
	out, errOut, status := run("audit", "verify")
	if status != 1 || !strings.Contains(out, "AUDIT CHAIN BROKEN") || !strings.Contains(errOut, "audit chain does not verify") {
		t.Errorf("verify after tampering: got status %d, %q, %q; want 1 and the chain broken", status, out, errOut)
	}
	tampered := filepath.Join(t.TempDir(), "tampered.jsonl")
	if _, errOut, status := run("audit", "export", "--out", tampered); status != 0 {
		t.Fatalf("export after tampering: status %d: %s", status, errOut)
	}
	if _, err := checkExport(tampered); err == nil || !strings.Contains(err.Error(), "hash") {
		t.Errorf("independent check of the tampered export: got %v, want a hash mismatch", err)
	}
}

func recTime(t *testing.T, r adminapi.AuditRecord) time.Time {
	t.Helper()
	at, err := time.Parse(time.RFC3339Nano, r.Time)
	if err != nil {
		t.Fatal(err)
	}
	return at
}

// tamper replaces old by new (same length) in the first audit record that
// holds it, directly in fleetd's bbolt file.
func tamper(t *testing.T, path, old, new string) {
	t.Helper()
	db, err := bolt.Open(path, 0o600, &bolt.Options{Timeout: time.Second})
	if err != nil {
		t.Fatal(err)
	}
	defer db.Close()
	n := 0
	if err := db.Update(func(tx *bolt.Tx) error {
		b := tx.Bucket([]byte("audit"))
		if b == nil {
			return fmt.Errorf("no audit bucket in %s", path)
		}
		c := b.Cursor()
		for k, v := c.First(); k != nil; k, v = c.Next() {
			if bytes.Contains(v, []byte(old)) {
				n++
				return b.Put(bytes.Clone(k), bytes.Replace(v, []byte(old), []byte(new), 1))
			}
		}
		return nil
	}); err != nil {
		t.Fatal(err)
	}
	if n != 1 {
		t.Fatalf("tamper: %q in no audit record", old)
	}
}

// verifyExport checks an export with checkExport and returns its head.
func verifyExport(t *testing.T, path string) string {
	t.Helper()
	if _, err := checkExport(path); err != nil {
		t.Fatal(err)
	}
	b, err := os.ReadFile(path)
	if err != nil {
		t.Fatal(err)
	}
	lines := strings.Split(strings.TrimSpace(string(b)), "\n")
	var last struct{ Hash string }
	if err := json.Unmarshal([]byte(lines[len(lines)-1]), &last); err != nil {
		t.Fatal(err)
	}
	return last.Hash
}

// checkExport is an outside verifier, written from docs/operations.md
// alone: it shares no code with the store, and decodes the export into its
// own types. Each line's hash is SHA-256 over the previous hash of the
// same chain and the record's deterministic CBOR map with "Hash" null;
// sequence numbers increase strictly but may skip. It returns the head
// (last hash) of each chain.
func checkExport(path string) (map[uint32]string, error) {
	b, err := os.ReadFile(path)
	if err != nil {
		return nil, err
	}
	heads := map[uint32]string{}
	var last uint64
	for i, line := range strings.Split(strings.TrimSpace(string(b)), "\n") {
		var r struct {
			Seq                  uint64
			Time, Action, Device string
			Slot                 uint8
			Version              uint32
			RID                  *string
			Actor, Detail        string
			Prev                 *string
			Hash                 string
			Chain                uint32
		}
		if err := json.Unmarshal([]byte(line), &r); err != nil {
			return nil, fmt.Errorf("line %d: %w", i+1, err)
		}
		if r.Seq <= last {
			return nil, fmt.Errorf("line %d: record %d after %d, want a greater sequence number", i+1, r.Seq, last)
		}
		last = r.Seq
		prev, ok := heads[r.Chain]
		if ok != (r.Prev != nil) || ok && prev != *r.Prev {
			return nil, fmt.Errorf("record %d does not link to its predecessor on chain %d", r.Seq, r.Chain)
		}
		var m cborMap
		pairs := byte(11)
		m.text("RID").bytes(r.RID)
		m.text("Seq").uint(0, r.Seq)
		m.text("Hash").null()
		m.text("Prev").bytes(r.Prev)
		m.text("Slot").uint(0, uint64(r.Slot))
		m.text("Time")
		if r.Time == "" {
			m.null()
		} else {
			m.text(r.Time)
		}
		m.text("Actor").text(r.Actor)
		if r.Chain != 0 { // chain 0 is not encoded
			m.text("Chain").uint(0, uint64(r.Chain))
			pairs++
		}
		m.text("Action").text(r.Action)
		m.text("Detail").text(r.Detail)
		m.text("Device").text(r.Device)
		m.text("Version").uint(0, uint64(r.Version))
		h := sha256.New()
		if r.Prev != nil {
			p, err := hex.DecodeString(*r.Prev)
			if err != nil {
				return nil, err
			}
			h.Write(p)
		}
		h.Write(append([]byte{0xa0 | pairs}, m...)) // a map of 11 or 12 pairs
		if got := hex.EncodeToString(h.Sum(nil)); got != r.Hash {
			return nil, fmt.Errorf("record %d: hash mismatch: computed %s, export says %s", r.Seq, got, r.Hash)
		}
		heads[r.Chain] = r.Hash
	}
	return heads, nil
}

// cborMap builds the items of a CBOR map (RFC 8949), just enough for an
// audit record: unsigned integers, text, byte strings and null.
type cborMap []byte

func (m *cborMap) uint(major byte, n uint64) *cborMap {
	switch {
	case n < 24:
		*m = append(*m, major<<5|byte(n))
	case n <= 0xff:
		*m = append(*m, major<<5|24, byte(n))
	case n <= 0xffff:
		*m = binary.BigEndian.AppendUint16(append(*m, major<<5|25), uint16(n))
	case n <= 0xffffffff:
		*m = binary.BigEndian.AppendUint32(append(*m, major<<5|26), uint32(n))
	default:
		*m = binary.BigEndian.AppendUint64(append(*m, major<<5|27), n)
	}
	return m
}

func (m *cborMap) text(s string) *cborMap { m.uint(3, uint64(len(s))); *m = append(*m, s...); return m }

func (m *cborMap) null() *cborMap { *m = append(*m, 0xf6); return m }

// bytes appends a byte string given in hex, or null.
func (m *cborMap) bytes(h *string) *cborMap {
	if h == nil {
		return m.null()
	}
	b, _ := hex.DecodeString(*h)
	m.uint(2, uint64(len(b)))
	*m = append(*m, b...)
	return m
}
