package statuspage

import (
	"context"
	"errors"
	"fmt"
	"sort"
	"strings"
	"time"

	"github.com/keyfleet/keyfleet/protocol"
	"github.com/keyfleet/keyfleet/server/store"
)

// fleetScan is one reading of every device: the counts, and the devices
// behind and away, bounded.
type fleetScan struct {
	At        time.Time
	Devices   int
	Revoked   int
	Connected int
	Sessions  bool // Connected is known
	ByState   []stateCount
	Behind    []deviceRow // the most behind first, at most MaxDevices
	NBehind   int
	Away      []deviceRow // the longest away first, at most MaxDevices
	NAway     int

	anchors, firmware uint32 // what the reading compared the devices with
}

// deviceRow is a device in a list: what it lags in and when it was seen.
type deviceRow struct {
	ID        string
	Model     string
	Labels    string // "k=v, k=v"
	Lags      []string
	LastSeen  time.Time
	Connected bool
	lag       uint32 // versions behind, summed over what it lags in: the sort key
}

// scanFleet reads every device once.
func scanFleet(ctx context.Context, src Sources, o Options, now time.Time, anchors, firmware uint32) (*fleetScan, error) {
	s := &fleetScan{At: now, Sessions: src.Sessions != nil, anchors: anchors, firmware: firmware}
	by := map[string]int{}
	behind := bounded{max: o.MaxDevices, less: func(a, b deviceRow) bool {
		if a.lag != b.lag {
			return a.lag > b.lag
		}
		return older(a, b)
	}}
	away := bounded{max: o.MaxDevices, less: older}
	err := src.Devices.ForEachDevice(ctx, func(d *store.Device) error {
		s.Devices++
		if d.Revoked {
			s.Revoked++
			by["revoked"]++
			return nil // refused everywhere: neither behind nor away
		}
		id := d.Slot(protocol.SlotIdentity)
		if l := id.Latest(); l != nil {
			by[l.State.String()]++
		}
		connected := src.Sessions != nil && src.Sessions.Present(d.ID)
		if connected {
			s.Connected++
		}
		row := deviceRow{ID: d.ID, Model: d.Model, LastSeen: d.LastSeen, Connected: connected}
		if id.Desired != id.Reported {
			row.Lags = append(row.Lags, fmt.Sprintf("identity v%d → v%d", id.Reported, id.Desired))
			row.lag += diff(id.Desired, id.Reported)
		}
		if d.Anchors < anchors {
			row.Lags = append(row.Lags, fmt.Sprintf("anchors v%d → v%d", d.Anchors, anchors))
			row.lag += anchors - d.Anchors
		}
		if firmware > 0 && d.Firmware != firmware {
			row.Lags = append(row.Lags, fmt.Sprintf("firmware v%d → v%d", d.Firmware, firmware))
			row.lag += diff(firmware, d.Firmware)
		}
		if len(row.Lags) > 0 || !connected && now.Sub(d.LastSeen) >= o.AwayAfter {
			row.Labels = labelText(d.Labels)
		}
		if len(row.Lags) > 0 {
			s.NBehind++
			behind.add(row)
		}
		if !connected && now.Sub(d.LastSeen) >= o.AwayAfter {
			s.NAway++
			away.add(row)
		}
		return nil
	})
	if err != nil {
		return nil, fmt.Errorf("statuspage: read devices: %w", err)
	}
	s.ByState, s.Behind, s.Away = states(by), behind.list(), away.list()
	return s, nil
}

func diff(a, b uint32) uint32 {
	if a > b {
		return a - b
	}
	return b - a
}

// older orders devices by when they were last seen, never first, then by
// id.
func older(a, b deviceRow) bool {
	if !a.LastSeen.Equal(b.LastSeen) {
		return a.LastSeen.Before(b.LastSeen)
	}
	return a.ID < b.ID
}

func labelText(l map[string]string) string {
	parts := make([]string, 0, len(l))
	for k, v := range l {
		parts = append(parts, k+"="+v)
	}
	sort.Strings(parts)
	return strings.Join(parts, ", ")
}

// bounded keeps the first max rows by less out of any number added, in
// memory of at most twice max: a fleet of a million devices behind lists
// fifty.
type bounded struct {
	max  int
	less func(a, b deviceRow) bool
	rows []deviceRow
}

func (b *bounded) add(r deviceRow) {
	b.rows = append(b.rows, r)
	if len(b.rows) >= 2*b.max {
		b.trim()
	}
}

func (b *bounded) trim() {
	sort.Slice(b.rows, func(i, j int) bool { return b.less(b.rows[i], b.rows[j]) })
	if len(b.rows) > b.max {
		b.rows = b.rows[:b.max:b.max]
	}
}

func (b *bounded) list() []deviceRow {
	b.trim()
	return b.rows
}

// errFound stops a walk of the audit log.
var errFound = errors.New("statuspage: found")

type auditReader interface {
	ForEachAudit(ctx context.Context, from uint64, fn func(*store.AuditRecord) error) error
}

// auditRow is an audit record as the page shows it: no hashes, no
// request ids, no free-text detail.
type auditRow struct {
	Seq                   uint64
	Time                  time.Time
	Device, Action, Actor string
	Slot                  string
	Version               uint32
}

// lastAudit returns the last n audit records, newest first. The head's
// number is found in O(log n) short reads: a probe asks whether any record
// is at or after a number, which is monotone however the numbers skip.
// Numbers may skip (PostgreSQL takes them from one sequence for several
// chains, and a rolled-back write loses its own), so the last n records
// are not the last n numbers: a window behind the head is read, doubled
// until it holds n records or reaches the start.
func lastAudit(ctx context.Context, a auditReader, n int) ([]auditRow, error) {
	if n <= 0 {
		return nil, nil
	}
	exists := func(seq uint64) (bool, error) {
		found := false
		err := a.ForEachAudit(ctx, seq, func(*store.AuditRecord) error { found = true; return errFound })
		if errors.Is(err, errFound) {
			err = nil
		}
		return found, err
	}
	lo, hi := uint64(0), uint64(1) // a record is at or after lo (0: none needed); hi is not known to
	for {
		ok, err := exists(hi)
		if err != nil {
			return nil, fmt.Errorf("statuspage: read audit log: %w", err)
		}
		if !ok {
			break
		}
		lo, hi = hi, hi*2
	}
	for hi-lo > 1 {
		mid := lo + (hi-lo)/2
		ok, err := exists(mid)
		if err != nil {
			return nil, fmt.Errorf("statuspage: read audit log: %w", err)
		}
		if ok {
			lo = mid
		} else {
			hi = mid
		}
	}
	if lo == 0 {
		return nil, nil
	}
	var out []auditRow
	for span := uint64(n); ; span *= 2 {
		from := uint64(1)
		if lo > span {
			from = lo - span + 1
		}
		out = out[:0]
		err := a.ForEachAudit(ctx, from, func(r *store.AuditRecord) error {
			if r.Seq > lo {
				return errFound // appended since the head was found: the page shows the head it found
			}
			row := auditRow{Seq: r.Seq, Time: r.Time, Device: r.Device, Action: r.Action, Actor: r.Actor, Version: r.Version}
			if r.Slot != 0 {
				row.Slot = protocol.Slot(r.Slot).String()
			}
			out = append(out, row)
			return nil
		})
		if err != nil && !errors.Is(err, errFound) {
			return nil, fmt.Errorf("statuspage: read audit log: %w", err)
		}
		if len(out) >= n || from == 1 {
			break
		}
	}
	out = out[max(0, len(out)-n):]
	for i, j := 0, len(out)-1; i < j; i, j = i+1, j-1 {
		out[i], out[j] = out[j], out[i]
	}
	return out, nil
}
