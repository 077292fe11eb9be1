package admin

import (
	"bufio"
	"cmp"
	"context"
	"encoding/hex"
	"encoding/json"
	"errors"
	"fmt"
	"net/http"
	"net/url"
	"slices"
	"strconv"
	"time"

	"github.com/keyfleet/keyfleet/adminapi"
	"github.com/keyfleet/keyfleet/server/store"
)

// Audit reads and verifies the audit log; the store satisfies it. Records
// are read with ForEachAudit, a cursor, so that neither a list nor an
// export holds the log in memory.
type Audit interface {
	ForEachAudit(ctx context.Context, from uint64, fn func(r *store.AuditRecord) error) error
	VerifyAudit(ctx context.Context) (uint64, error)
}

// errPageFull stops a walk of the log once a page or chunk is complete.
var errPageFull = errors.New("admin: page full")

// exportChunk is how many records one read transaction of an export
// covers: short transactions, so a long export does not hold a read open
// while fleetd writes.
const exportChunk = 1000

func (h *handler) auditVerify(w http.ResponseWriter, r *http.Request) {
	n, err := h.p.Audit.VerifyAudit(r.Context())
	out := adminapi.AuditVerify{Records: n, OK: err == nil}
	if err != nil {
		out.Error = err.Error()
	}
	if n > 0 {
		chains, latest, herr := auditHeads(r.Context(), h.p.Audit, n)
		if herr != nil && err == nil {
			fail(w, herr)
			return
		}
		out.Chains, out.Head = chains, latest
	}
	writeJSON(w, http.StatusOK, out)
}

// auditHeads walks the first n records of the log (the n a verification
// counted) and returns where each chain ends and the hash of the latest
// record overall. Sequence numbers may skip and several chains interleave
// (PostgreSQL), so the head is not "record n": it is found by reading.
// Records never change once written (or the chain would not verify), so
// with one chain (bbolt, numbered densely) the walk names exactly the
// heads the verification checked; with several, a record committed during
// the walk with a lower number than one already read may shift the cut by
// one record, never past the verified count.
func auditHeads(ctx context.Context, a Audit, n uint64) ([]adminapi.AuditChainHead, string, error) {
	byChain := map[uint32]*adminapi.AuditChainHead{}
	var seen uint64
	var latest string
	err := a.ForEachAudit(ctx, 1, func(rec *store.AuditRecord) error {
		c := byChain[rec.Chain]
		if c == nil {
			c = &adminapi.AuditChainHead{Chain: rec.Chain}
			byChain[rec.Chain] = c
		}
		c.Records++
		c.Seq, c.Head = rec.Seq, hex.EncodeToString(rec.Hash)
		latest = c.Head
		if seen++; seen == n {
			return errPageFull
		}
		return nil
	})
	if err != nil && !errors.Is(err, errPageFull) {
		return nil, "", fmt.Errorf("admin: audit heads: %w", err)
	}
	chains := make([]adminapi.AuditChainHead, 0, len(byChain))
	for _, c := range byChain {
		chains = append(chains, *c)
	}
	slices.SortFunc(chains, func(a, b adminapi.AuditChainHead) int { return cmp.Compare(a.Chain, b.Chain) })
	return chains, latest, nil
}

// auditFilter is a parsed `GET /v1/audit` query.
type auditFilter struct {
	after        uint64
	limit        int
	since, until time.Time
	device       string
	actions      []string
}

func parseAuditFilter(q url.Values) (auditFilter, error) {
	f := auditFilter{limit: adminapi.MaxAuditPage, device: q.Get(adminapi.AuditDevice), actions: q[adminapi.AuditAction]}
	var err error
	if v := q.Get(adminapi.AuditAfter); v != "" {
		if f.after, err = strconv.ParseUint(v, 10, 64); err != nil {
			return f, fmt.Errorf("admin: %s=%q: want a sequence number", adminapi.AuditAfter, v)
		}
	}
	if v := q.Get(adminapi.AuditLimit); v != "" {
		if f.limit, err = strconv.Atoi(v); err != nil || f.limit < 1 || f.limit > adminapi.MaxAuditPage {
			return f, fmt.Errorf("admin: %s=%q: want 1 to %d", adminapi.AuditLimit, v, adminapi.MaxAuditPage)
		}
	}
	for _, t := range []struct {
		name string
		p    *time.Time
	}{{adminapi.AuditSince, &f.since}, {adminapi.AuditUntil, &f.until}} {
		if v := q.Get(t.name); v != "" {
			if *t.p, err = time.Parse(time.RFC3339Nano, v); err != nil {
				return f, fmt.Errorf("admin: %s=%q: want an RFC 3339 time", t.name, v)
			}
		}
	}
	return f, nil
}

// match reports whether a record passes the filter.
func (f *auditFilter) match(r *store.AuditRecord) bool {
	switch {
	case !f.since.IsZero() && r.Time.Before(f.since),
		!f.until.IsZero() && !r.Time.Before(f.until),
		f.device != "" && r.Device != f.device,
		len(f.actions) > 0 && !slices.Contains(f.actions, r.Action):
		return false
	}
	return true
}

func (h *handler) auditList(w http.ResponseWriter, r *http.Request) {
	f, err := parseAuditFilter(r.URL.Query())
	if err != nil {
		invalid(w, err)
		return
	}
	page := adminapi.AuditPage{Records: []adminapi.AuditRecord{}}
	scanned, last := 0, f.after
	err = h.p.Audit.ForEachAudit(r.Context(), f.after+1, func(rec *store.AuditRecord) error {
		scanned, last = scanned+1, rec.Seq
		if f.match(rec) {
			page.Records = append(page.Records, wireRecord(rec))
		}
		if len(page.Records) == f.limit || scanned == adminapi.AuditScanLimit {
			return errPageFull
		}
		return nil
	})
	switch {
	case errors.Is(err, errPageFull):
		// Full, or scanned enough: the next page starts after the last
		// record read. (It may turn out empty; the one after says so.)
		page.Next = last
	case err != nil:
		fail(w, err)
		return
	}
	writeJSON(w, http.StatusOK, page)
}

func (h *handler) auditExport(w http.ResponseWriter, r *http.Request) {
	f, err := parseAuditFilter(url.Values{adminapi.AuditAfter: r.URL.Query()[adminapi.AuditAfter]})
	if err != nil {
		invalid(w, err)
		return
	}
	w.Header().Set("Content-Type", adminapi.AuditExportType)
	bw := bufio.NewWriterSize(w, 64<<10)
	flusher, _ := w.(http.Flusher)
	next, started := f.after+1, false
	for {
		chunk := make([]adminapi.AuditRecord, 0, exportChunk)
		err := h.p.Audit.ForEachAudit(r.Context(), next, func(rec *store.AuditRecord) error {
			chunk = append(chunk, wireRecord(rec))
			if len(chunk) == exportChunk {
				return errPageFull
			}
			return nil
		})
		if err != nil && !errors.Is(err, errPageFull) {
			if !started {
				fail(w, err)
				return
			}
			// The status is sent: cut the stream short, so the client
			// sees a truncated body rather than a complete-looking export.
			h.log.Error("admin: audit export failed", "err", err, "from", next)
			panic(http.ErrAbortHandler)
		}
		for i := range chunk {
			if err := writeLine(bw, &chunk[i]); err != nil {
				return // the client went away
			}
		}
		started = true
		if len(chunk) < exportChunk {
			break
		}
		next = chunk[len(chunk)-1].Seq + 1
		_ = bw.Flush()
		if flusher != nil {
			flusher.Flush()
		}
	}
	_ = bw.Flush()
}

// writeLine writes one record of an export: JSON and a newline.
func writeLine(w *bufio.Writer, r *adminapi.AuditRecord) error {
	b, err := json.Marshal(r)
	if err != nil {
		return err
	}
	if _, err := w.Write(b); err != nil {
		return err
	}
	return w.WriteByte('\n')
}

// wireRecord is a stored record as the API carries it.
func wireRecord(r *store.AuditRecord) adminapi.AuditRecord {
	var at string // a zero time hashes as CBOR null: the empty string says so
	if !r.Time.IsZero() {
		at = r.Time.Format(time.RFC3339Nano)
	}
	return adminapi.AuditRecord{Seq: r.Seq, Time: at, Action: r.Action, Device: r.Device,
		Slot: r.Slot, Version: r.Version, RID: hexOrNull(r.RID), Actor: r.Actor, Detail: r.Detail,
		Prev: hexOrNull(r.Prev), Hash: hex.EncodeToString(r.Hash), Chain: r.Chain}
}

// hexOrNull keeps a nil byte string apart from an empty one: they hash
// differently (CBOR null and an empty byte string).
func hexOrNull(b []byte) *string {
	if b == nil {
		return nil
	}
	s := hex.EncodeToString(b)
	return &s
}
