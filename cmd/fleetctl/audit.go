package main

import (
	"bufio"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"net/url"
	"os"
	"strconv"
	"text/tabwriter"
	"time"

	"github.com/spf13/cobra"

	"github.com/keyfleet/keyfleet/adminapi"
	"github.com/keyfleet/keyfleet/internal/durationflag"
	"github.com/keyfleet/keyfleet/protocol"
)

// auditFilter is what `fleetctl audit list` asks for, as typed.
type auditFilter struct {
	since, until string
	device       string
	kinds        []string
	after        uint64
}

// query turns the filter into the API's query parameters; times are
// RFC 3339 or a duration back from now ("24h", "7d").
func (f auditFilter) query(now time.Time) (url.Values, error) {
	q := url.Values{}
	for _, t := range []struct{ flag, param, v string }{
		{"--since", adminapi.AuditSince, f.since}, {"--until", adminapi.AuditUntil, f.until},
	} {
		if t.v == "" {
			continue
		}
		at, err := when(t.v, now)
		if err != nil {
			return nil, fmt.Errorf("%s: %w", t.flag, err)
		}
		q.Set(t.param, at.UTC().Format(time.RFC3339Nano))
	}
	if f.device != "" {
		q.Set(adminapi.AuditDevice, f.device)
	}
	for _, k := range f.kinds {
		q.Add(adminapi.AuditAction, k)
	}
	if f.after > 0 {
		q.Set(adminapi.AuditAfter, strconv.FormatUint(f.after, 10))
	}
	return q, nil
}

// when reads a point in time: RFC 3339, or a duration back from now.
func when(s string, now time.Time) (time.Time, error) {
	if t, err := time.Parse(time.RFC3339Nano, s); err == nil {
		return t, nil
	}
	d, err := durationflag.Parse(s)
	if err != nil || d < 0 {
		return time.Time{}, fmt.Errorf("%q: want an RFC 3339 time (2026-01-02T15:04:05Z) or a duration back from now (90m, 24h, 7d)", s)
	}
	return now.Add(-d), nil
}

// auditCommands are `fleetctl audit list|export|verify`.
func (a *app) auditCommands() *cobra.Command {
	audit := &cobra.Command{Use: "audit", Short: "the hash-chained audit log: list, export, verify"}

	var f auditFilter
	var limit int
	list := &cobra.Command{Use: "list", Short: "list audit records, oldest first, filtered by time, device and kind", Args: cobra.NoArgs,
		RunE: func(cmd *cobra.Command, _ []string) error {
			if limit < 0 {
				return errors.New("--limit: want 0 (no limit) or more")
			}
			q, err := f.query(time.Now())
			if err != nil {
				return err
			}
			c, err := a.client()
			if err != nil {
				return err
			}
			recs := []adminapi.AuditRecord{}
			var more uint64 // the --after that continues a list cut by --limit
			for {
				if n := limit - len(recs); limit > 0 {
					q.Set(adminapi.AuditLimit, strconv.Itoa(min(n, adminapi.MaxAuditPage)))
				}
				page, err := c.AuditPage(cmd.Context(), q)
				if err != nil {
					return err
				}
				recs = append(recs, page.Records...)
				if page.Next == 0 {
					break
				}
				if limit > 0 && len(recs) >= limit {
					more = page.Next
					break
				}
				q.Set(adminapi.AuditAfter, strconv.FormatUint(page.Next, 10))
			}
			if err := a.print(recs, func(w *tabwriter.Writer) {
				fmt.Fprintln(w, "SEQ\tTIME\tKIND\tDEVICE\tSLOT\tVERSION\tACTOR\tDETAIL")
				for _, r := range recs {
					slot, version := "-", "-"
					if r.Slot != 0 || r.Version != 0 {
						slot, version = protocol.Slot(r.Slot).String(), strconv.FormatUint(uint64(r.Version), 10)
					}
					fmt.Fprintf(w, "%d\t%s\t%s\t%s\t%s\t%s\t%s\t%s\n", r.Seq, shortTime(r.Time), r.Action, dash(r.Device), slot, version,
						dash(r.Actor), r.Detail)
				}
			}); err != nil {
				return err
			}
			if more > 0 {
				fmt.Fprintf(cmd.ErrOrStderr(), "more records match: continue with --after %d\n", more)
			}
			return nil
		}}
	fl := list.Flags()
	fl.StringVar(&f.since, "since", "", "records at or after this time: RFC 3339, or a duration back from now (24h, 7d)")
	fl.StringVar(&f.until, "until", "", "records before this time: RFC 3339, or a duration back from now")
	fl.StringVar(&f.device, "device", "", "records of this device")
	fl.StringSliceVar(&f.kinds, "kind", nil, "records of these kinds (actions: provisioned, requested, issued, activated, retired, failed, revoked, refused, anchors-rotated, ...)")
	fl.IntVar(&limit, "limit", 100, "at most this many records (0: all)")
	fl.Uint64Var(&f.after, "after", 0, "records after this sequence number (to continue a list cut by --limit)")

	var outFile string
	export := &cobra.Command{Use: "export [--out FILE]",
		Short: "write every record as JSON lines with its chain fields, for a verifier outside keyfleet (docs/operations.md)",
		Args:  cobra.NoArgs,
		RunE: func(cmd *cobra.Command, _ []string) error {
			c, err := a.client()
			if err != nil {
				return err
			}
			var w io.Writer = a.out
			var file *os.File
			if outFile != "" {
				if file, err = os.OpenFile(outFile, os.O_WRONLY|os.O_CREATE|os.O_EXCL, 0o644); err != nil {
					return err
				}
				defer file.Close()
				w = file
			}
			bw := bufio.NewWriter(w)
			enc := json.NewEncoder(bw)
			// Records are counted, not taken from the last seq: sequence
			// numbers may skip (PostgreSQL). The head is the latest
			// record's hash, as audit verify prints it.
			var n uint64
			var head string
			chains := map[uint32]bool{}
			if err := c.ExportAudit(cmd.Context(), 0, func(r adminapi.AuditRecord) error {
				n, head, chains[r.Chain] = n+1, r.Hash, true
				return enc.Encode(r)
			}); err != nil {
				return err
			}
			if err := bw.Flush(); err != nil {
				return err
			}
			if file != nil {
				if err := file.Close(); err != nil {
					return err
				}
			}
			fmt.Fprintf(cmd.ErrOrStderr(), "exported %d records; head %s", n, dash(head))
			if len(chains) > 1 {
				fmt.Fprintf(cmd.ErrOrStderr(), "; %d chains", len(chains))
			}
			fmt.Fprintln(cmd.ErrOrStderr())
			return nil
		}}
	export.Flags().StringVar(&outFile, "out", "", "new file to write to (default: standard output)")

	verify := &cobra.Command{Use: "verify", Short: "verify the hash chain of the audit log; non-zero exit if it is broken", Args: cobra.NoArgs,
		RunE: func(cmd *cobra.Command, _ []string) error {
			c, err := a.client()
			if err != nil {
				return err
			}
			v, err := c.VerifyAudit(cmd.Context())
			if err != nil {
				return err
			}
			if err := a.print(v, func(w *tabwriter.Writer) {
				if v.OK {
					fmt.Fprintf(w, "audit chain verified: %d records, head %s\n", v.Records, dash(v.Head))
				} else {
					fmt.Fprintf(w, "AUDIT CHAIN BROKEN after %d records: %s\n", v.Records, v.Error)
				}
				if len(v.Chains) > 1 { // one chain (bbolt): the line above says it all
					fmt.Fprintln(w, "CHAIN\tRECORDS\tLAST SEQ\tHEAD")
					for _, c := range v.Chains {
						fmt.Fprintf(w, "%d\t%d\t%d\t%s\n", c.Chain, c.Records, c.Seq, c.Head)
					}
				}
			}); err != nil {
				return err
			}
			if !v.OK {
				return errors.New("audit chain does not verify")
			}
			return nil
		}}
	audit.AddCommand(list, export, verify)
	return audit
}

// shortTime shows a record's time to the second, in UTC.
func shortTime(s string) string {
	t, err := time.Parse(time.RFC3339Nano, s)
	if err != nil {
		return dash(s)
	}
	return t.UTC().Format(time.RFC3339)
}

func dash(s string) string {
	if s == "" {
		return "-"
	}
	return s
}
