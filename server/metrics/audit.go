package metrics

import (
	"context"
	"errors"
	"fmt"
	"sync"
	"time"

	"github.com/prometheus/client_golang/prometheus"

	"github.com/keyfleet/keyfleet/protocol"
	"github.com/keyfleet/keyfleet/server/lifecycle"
	"github.com/keyfleet/keyfleet/server/store"
)

// Audit completeness (M7) compares, for the identity slot of every
// device, the state changes fleetd reported with the audit records of
// state changes the store holds, both counted from fleetd's start. The
// identity slot's records and changes correspond one to one
// (rotation.events); data keys, anchors and firmware are audited in words
// of their own (data-key-created, anchors-rotated) and are not compared.
const auditedSlot = lifecycle.SlotIdentity

var (
	writtenDesc = desc("audit_records_written_total",
		"Audit records of key state changes written since start, identity slot (M7).", "slot")
	chainOKDesc = desc("audit_chain_verified",
		"1 if the last verification of the audit chain succeeded, 0 if it found the chain broken or could not read it (M7).")
	chainAtDesc = desc("audit_chain_verified_timestamp_seconds",
		"When the audit chain was last verified (Unix time), whatever the result.")
	chainLenDesc = desc("audit_chain_records", "Records in the audit chain at its last successful verification.")
)

// changeActions are the audit actions of key state changes
// (lifecycle.Change.Action), registrations excepted.
var changeActions = map[string]bool{"requested": true, "issued": true, "activated": true, "superseded": true,
	"retired": true, "revoked": true, "failed": true, "cancelled": true}

// auditCollector counts the state-change records appended since the last
// scrape, and reports the last verification of the chain.
type auditCollector struct {
	st       store.Store
	counting bool // the start of the log was found: written is meaningful

	mu sync.Mutex
	// base is the first sequence number counted: records before fleetd's
	// start are not. high is the highest counted, last the highest
	// counted on each chain (see collectWritten).
	base, high uint64
	last       map[uint32]uint64
	window     uint64 // lateWindow for a store of several chains, else 0
	written    uint64
	verified   bool // a verification ran
	ok         bool
	at         time.Time
	records    uint64
}

var errStop = errors.New("stop")

// lateWindow is how far behind the highest record counted each scrape
// reads again, in sequence numbers, for records committed late (see
// collectWritten).
const lateWindow = 1000

// chained is the capability of a store that keeps several audit chains
// (pgstore): only there may records commit out of number order.
type chained interface{ Chains() int }

// lateWindowOf is the window to read again for st: none for a store of
// one chain, where re-reading would only cost time (about 4 ms a scrape
// for 1000 bbolt records).
func lateWindowOf(st store.Store) uint64 {
	if c, ok := st.(chained); ok && c.Chains() > 1 {
		return lateWindow
	}
	return 0
}

// auditHead returns the sequence number of the last audit record (0 for
// none), in O(log n) short reads. A probe asks whether any record is at
// or after a number, which is monotone however the numbers skip (a store
// with several chains, store.AuditRecord), so the search needs no dense
// numbering.
func auditHead(ctx context.Context, st store.Store) (uint64, error) {
	exists := func(seq uint64) (bool, error) {
		found := false
		err := st.ForEachAudit(ctx, seq, func(*store.AuditRecord) error { found = true; return errStop })
		if errors.Is(err, errStop) {
			err = nil
		}
		return found, err
	}
	lo, hi := uint64(0), uint64(1) // record lo exists (0: none needed), hi is not known to
	for {
		ok, err := exists(hi)
		if err != nil {
			return 0, fmt.Errorf("metrics: audit head: %w", err)
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
			return 0, fmt.Errorf("metrics: audit head: %w", err)
		}
		if ok {
			lo = mid
		} else {
			hi = mid
		}
	}
	return lo, nil
}

func (c *auditCollector) Describe(ch chan<- *prometheus.Desc) {
	ch <- writtenDesc
	ch <- chainOKDesc
	ch <- chainAtDesc
	ch <- chainLenDesc
}

func (c *auditCollector) Collect(ch chan<- prometheus.Metric) {
	ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
	defer cancel()
	c.mu.Lock()
	defer c.mu.Unlock()
	if c.counting {
		c.collectWritten(ctx, ch)
	}
	if !c.verified {
		return
	}
	ok := 0.0
	if c.ok {
		ok = 1
	}
	ch <- prometheus.MustNewConstMetric(chainOKDesc, prometheus.GaugeValue, ok)
	ch <- prometheus.MustNewConstMetric(chainAtDesc, prometheus.GaugeValue, float64(c.at.UnixNano())/1e9)
	ch <- prometheus.MustNewConstMetric(chainLenDesc, prometheus.GaugeValue, float64(c.records))
}

// collectWritten counts the records appended since the last scrape; c.mu
// is held.
//
// Sequence numbers order records but not their commits when the store
// keeps several chains (PostgreSQL): a write takes its numbers, and one
// taken later may commit first, so a record can appear below the highest
// number already counted. Each chain is numbered while its head is held,
// so along one chain commits do follow the numbers: a record is new iff
// its number is above the last counted on its chain. Each scrape therefore
// reads again from lateWindow numbers behind the highest counted and
// counts by chain, never twice. A record is missed only if, when it
// commits, more than lateWindow numbers above it were already counted
// (fleetd's writes hold their numbers for milliseconds). With one chain
// (bbolt) commits follow the numbers: nothing is missed and nothing is
// read again.
func (c *auditCollector) collectWritten(ctx context.Context, ch chan<- prometheus.Metric) {
	from := max(c.base, c.high+1) // nothing to read again with one chain
	if c.window > 0 {
		from = c.base
		if c.high >= c.base+c.window {
			from = c.high - c.window + 1
		}
	}
	// A failed read keeps what it counted so far; the next scrape goes on
	// from there.
	_ = c.st.ForEachAudit(ctx, from, func(r *store.AuditRecord) error {
		if r.Seq <= c.last[r.Chain] {
			return nil // counted at an earlier scrape
		}
		if r.Device != "" && r.Version != 0 && r.Slot == uint8(protocol.SlotIdentity) && changeActions[r.Action] {
			c.written++
		}
		c.last[r.Chain], c.high = r.Seq, max(c.high, r.Seq)
		return nil
	})
	ch <- prometheus.MustNewConstMetric(writtenDesc, prometheus.CounterValue, float64(c.written), string(auditedSlot))
}

// verifyAudit verifies the whole chain and records the result.
func (m *Metrics) verifyAudit(ctx context.Context) {
	n, err := m.st.VerifyAudit(ctx)
	if ctx.Err() != nil {
		return // stopping: not a verdict on the chain
	}
	c := m.audit
	c.mu.Lock()
	c.verified, c.ok, c.at = true, err == nil, m.opts.Now()
	if err == nil {
		c.records = n
	}
	c.mu.Unlock()
	if err != nil {
		m.opts.Logger.Error("audit chain verification failed", "err", err)
	}
}
