package admin

import (
	"bufio"
	"context"
	"encoding/json"
	"fmt"
	"log/slog"
	"net/http"
	"net/http/httptest"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/keyfleet/keyfleet/adminapi"
	"github.com/keyfleet/keyfleet/server/store"
)

// auditStore is a real bbolt store holding n records: every 1000th of
// device "rare", the rest of "common"; the clock moves a second per
// append call (one call per 100 records).
func auditStore(t *testing.T, n int) (*store.Bolt, time.Time) {
	t.Helper()
	t0 := time.Date(2026, 11, 30, 12, 0, 0, 0, time.UTC)
	now := t0
	st, err := store.OpenBolt(filepath.Join(t.TempDir(), "fleet.db"), store.BoltOptions{Now: func() time.Time { return now }})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { st.Close() })
	var evs []store.Event
	for i := 1; i <= n; i++ {
		dev, action := "common", "requested"
		if i%1000 == 0 {
			dev, action = "rare", "revoked"
		}
		evs = append(evs, store.Event{Action: action, Device: dev, Actor: "test", Detail: fmt.Sprint(i)})
		if len(evs) == 100 || i == n {
			if err := st.Audit(context.Background(), evs...); err != nil {
				t.Fatal(err)
			}
			evs, now = evs[:0], now.Add(time.Second)
		}
	}
	return st, t0
}

// A page holds what the filter selects, at most limit records, and a read
// of a large log stops after AuditScanLimit records with a Next to go on
// from, so one request never walks the whole log.
func TestAuditPages(t *testing.T) {
	const n = adminapi.AuditScanLimit + 1500
	st, t0 := auditStore(t, n)
	h := &handler{p: Parts{Audit: st}, log: slog.New(slog.DiscardHandler)}
	get := func(query string) (adminapi.AuditPage, int) {
		t.Helper()
		rec := httptest.NewRecorder()
		h.auditList(rec, httptest.NewRequest(http.MethodGet, adminapi.PathAudit+"?"+query, nil))
		var p adminapi.AuditPage
		if rec.Code == http.StatusOK {
			if err := json.Unmarshal(rec.Body.Bytes(), &p); err != nil {
				t.Fatal(err)
			}
		}
		return p, rec.Code
	}
	seqs := func(p adminapi.AuditPage) string {
		var s []string
		for _, r := range p.Records {
			s = append(s, fmt.Sprint(r.Seq))
		}
		return strings.Join(s, ",")
	}
	at := func(sec int) string { return t0.Add(time.Duration(sec) * time.Second).Format(time.RFC3339) }
	for _, tc := range []struct {
		name     string
		query    string
		wantCode int
		wantSeqs string
		wantLen  int
		wantNext uint64
	}{
		{"default page", "", http.StatusOK, "", adminapi.MaxAuditPage, adminapi.MaxAuditPage},
		{"limit", "limit=3", http.StatusOK, "1,2,3", 3, 3},
		{"after", "after=10&limit=2", http.StatusOK, "11,12", 2, 12},
		{"last page", fmt.Sprintf("after=%d", n-2), http.StatusOK, fmt.Sprintf("%d,%d", n-1, n), 2, 0},
		{"rare device: the scan stops", "device=rare", http.StatusOK, "", adminapi.AuditScanLimit / 1000, adminapi.AuditScanLimit},
		{"rare device: the rest", fmt.Sprintf("device=rare&after=%d", adminapi.AuditScanLimit), http.StatusOK, "21000", 1, 0},
		{"kind", "action=revoked&action=nothing&limit=2", http.StatusOK, "1000,2000", 2, 2000},
		{"device and kind disagree", "device=common&action=revoked&after=20000", http.StatusOK, "", 0, 0},
		{"since and until", fmt.Sprintf("since=%s&until=%s", at(3), at(5)), http.StatusOK, "", 200, adminapi.AuditScanLimit},
		{"until before everything", "until=" + at(0), http.StatusOK, "", 0, adminapi.AuditScanLimit},
		{"bad limit", "limit=1001", http.StatusBadRequest, "", 0, 0},
		{"zero limit", "limit=0", http.StatusBadRequest, "", 0, 0},
		{"bad time", "since=yesterday", http.StatusBadRequest, "", 0, 0},
		{"bad after", "after=-1", http.StatusBadRequest, "", 0, 0},
	} {
		t.Run(tc.name, func(t *testing.T) {
			p, code := get(tc.query)
			if code != tc.wantCode {
				t.Fatalf("got status %d, want %d", code, tc.wantCode)
			}
			if len(p.Records) != tc.wantLen || p.Next != tc.wantNext || tc.wantSeqs != "" && seqs(p) != tc.wantSeqs {
				t.Errorf("got %d records (%.40s…), next %d; want %d (%s), next %d", len(p.Records), seqs(p), p.Next, tc.wantLen, tc.wantSeqs, tc.wantNext)
			}
		})
	}
	t.Run("since and until bound the records", func(t *testing.T) {
		p, _ := get(fmt.Sprintf("since=%s&until=%s", at(3), at(5)))
		if len(p.Records) != 200 || p.Records[0].Seq != 301 || p.Records[199].Seq != 500 {
			t.Errorf("got %d records from %s, want 301..500", len(p.Records), seqs(p))
		}
	})
}

// An export streams every record, in order, across its read chunks, with
// the chain fields as the verifier needs them.
func TestAuditExportStream(t *testing.T) {
	const n = 2*exportChunk + 7
	st, _ := auditStore(t, n)
	h := &handler{p: Parts{Audit: st}, log: slog.New(slog.DiscardHandler)}
	for _, tc := range []struct {
		query     string
		wantFirst uint64
	}{{"", 1}, {"?after=1500", 1501}, {fmt.Sprintf("?after=%d", n), 0}} {
		t.Run(tc.query, func(t *testing.T) {
			rec := httptest.NewRecorder()
			h.auditExport(rec, httptest.NewRequest(http.MethodGet, adminapi.PathAuditExport+tc.query, nil))
			if rec.Code != http.StatusOK || rec.Header().Get("Content-Type") != adminapi.AuditExportType {
				t.Fatalf("got %d %q", rec.Code, rec.Header().Get("Content-Type"))
			}
			sc := bufio.NewScanner(rec.Body)
			want := tc.wantFirst
			var prev string
			for sc.Scan() {
				var r adminapi.AuditRecord
				if err := json.Unmarshal(sc.Bytes(), &r); err != nil {
					t.Fatal(err)
				}
				if r.Seq != want || r.Hash == "" || r.Time == "" {
					t.Fatalf("got record %+v, want number %d with hash and time", r, want)
				}
				if r.Seq == 1 && r.Prev != nil || r.Seq > 1 && (r.Prev == nil || prev != "" && *r.Prev != prev) {
					t.Fatalf("record %d: prev %v does not name the hash before it (%s)", r.Seq, r.Prev, prev)
				}
				prev, want = r.Hash, want+1
			}
			if tc.wantFirst == 0 && want != 0 || tc.wantFirst != 0 && want != n+1 {
				t.Errorf("export ended before record %d, want %d records", want, n)
			}
		})
	}
}
