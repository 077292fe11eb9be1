package client

import (
	"bufio"
	"context"
	"encoding/json"
	"fmt"
	"io"
	"net/http"
	"net/url"
	"strconv"

	"github.com/keyfleet/keyfleet/adminapi"
)

// AuditPage returns one page of the audit log; q holds the adminapi.Audit...
// query parameters. Follow Next for the rest.
func (c *Client) AuditPage(ctx context.Context, q url.Values) (adminapi.AuditPage, error) {
	var out adminapi.AuditPage
	path := adminapi.PathAudit
	if len(q) > 0 {
		path += "?" + q.Encode()
	}
	return out, c.do(ctx, http.MethodGet, path, nil, &out)
}

// ExportAudit streams the audit log from the record after seq after on,
// calling fn for each record in sequence order (strictly increasing, not
// necessarily dense) as it arrives, so that an
// export of any size takes constant memory. It has no overall timeout
// (ctx bounds it); an export cut short ends in an error, never in silence.
func (c *Client) ExportAudit(ctx context.Context, after uint64, fn func(adminapi.AuditRecord) error) error {
	path := adminapi.PathAuditExport
	if after > 0 {
		path += "?" + url.Values{adminapi.AuditAfter: {strconv.FormatUint(after, 10)}}.Encode()
	}
	req, err := http.NewRequestWithContext(ctx, http.MethodGet, c.base+path, nil)
	if err != nil {
		return err
	}
	hc := &http.Client{Transport: c.hc.Transport} // no whole-body timeout
	resp, err := hc.Do(req)
	if err != nil {
		return fmt.Errorf("admin API: %w", err)
	}
	defer resp.Body.Close()
	if resp.StatusCode/100 != 2 {
		b, _ := io.ReadAll(io.LimitReader(resp.Body, 1<<20))
		return apiError(resp.StatusCode, b)
	}
	sc := bufio.NewScanner(resp.Body)
	sc.Buffer(make([]byte, 64<<10), 1<<20)
	// Sequence numbers increase strictly but may skip (a store with
	// several chains takes them from one sequence, and a rolled-back
	// write loses its numbers): only going back or standing still is an
	// error.
	last := after
	for sc.Scan() {
		var r adminapi.AuditRecord
		if err := json.Unmarshal(sc.Bytes(), &r); err != nil {
			return fmt.Errorf("admin API: audit export: record after %d: %w", last, err)
		}
		if r.Seq <= last {
			return fmt.Errorf("admin API: audit export: got record %d after %d, want a greater sequence number", r.Seq, last)
		}
		last = r.Seq
		if err := fn(r); err != nil {
			return err
		}
	}
	if err := sc.Err(); err != nil {
		return fmt.Errorf("admin API: audit export cut short after record %d: %w", last, err)
	}
	return nil
}

// RotationProgress asks how far requested rotations have come, at most
// adminapi.MaxProgress at a time.
func (c *Client) RotationProgress(ctx context.Context, refs []adminapi.RotationRef) (adminapi.ProgressResponse, error) {
	var out adminapi.ProgressResponse
	return out, c.do(ctx, http.MethodPost, adminapi.PathRotationsProgress, adminapi.ProgressRequest{Rotations: refs}, &out)
}
