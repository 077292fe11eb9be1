package statuspage

import (
	"bytes"
	"context"
	"embed"
	"fmt"
	"html/template"
	"log/slog"
	"net/http"
	"sort"
	"sync"
	"time"

	"github.com/keyfleet/keyfleet/server/metrics"
	"github.com/keyfleet/keyfleet/server/store"
)

// Sources are what the page reads, one small interface per part; the
// store, the trust chain, the releases, the broker and the metrics
// satisfy them. Sessions is nil when fleetd cannot tell who is connected
// (an external broker); Campaigns is nil until campaigns exist.
type Sources struct {
	Devices interface {
		ForEachDevice(ctx context.Context, fn func(*store.Device) error) error
	}
	Audit interface {
		ForEachAudit(ctx context.Context, from uint64, fn func(*store.AuditRecord) error) error
	}
	Anchors  interface{ AnchorVersion() uint32 }
	Firmware interface{ CurrentFirmware() (uint32, []byte) }
	SLIs     interface{ SLIs() []metrics.SLI }
	Sessions interface{ Present(device string) bool }
	// Campaigns feeds the campaigns section; nil leaves it out.
	Campaigns Campaigns
}

// Campaigns lists the campaigns to show, the running ones first.
type Campaigns interface {
	Campaigns(ctx context.Context) ([]Campaign, error)
}

// Campaign is one campaign as the page shows it.
type Campaign struct {
	ID, Kind, State string
	Selector        string
	Stages          []Stage
}

// Stage is one stage of a campaign and how its devices stand.
type Stage struct {
	Name                                 string // "1 (5%)"
	Total, Succeeded, Failed, Away, Left int
}

// Options tune the page; zero values take the defaults.
type Options struct {
	// AwayAfter is how long a device that is not connected must have
	// been silent to count as away; default one hour.
	AwayAfter time.Duration
	// MaxDevices bounds each list of devices; default 50.
	MaxDevices int
	// AuditRecords is how many of the last audit records to show;
	// default 20.
	AuditRecords int
	// ScanEvery is how long one reading of the devices serves; default
	// 10 seconds.
	ScanEvery time.Duration
	// Refresh is the browser's refresh interval; default 15 seconds.
	Refresh time.Duration
	// Now is the clock; nil means time.Now.
	Now func() time.Time
	// Logger; nil means slog.Default().
	Logger *slog.Logger
}

//go:embed templates/*.html static/*.css
var files embed.FS

// page is the parsed template, once per process.
var page = template.Must(template.New("page.html").Funcs(template.FuncMap{
	"ago": ago, "pct": pct,
	"rows": func(now time.Time, rows []deviceRow) any {
		return struct {
			Now  time.Time
			Rows []deviceRow
		}{now, rows}
	},
}).ParseFS(files, "templates/*.html"))

// css is the style sheet, inlined into the page so that it is one request.
var css = func() template.CSS {
	b, err := files.ReadFile("static/page.css")
	if err != nil {
		panic(err)
	}
	return template.CSS(b) // our own file, not input
}()

// Page serves the status page.
type Page struct {
	src  Sources
	opts Options

	mu   sync.Mutex
	scan *fleetScan // the last reading of the devices; nil before the first
}

// New returns the page reading src.
func New(src Sources, opts Options) *Page {
	if opts.AwayAfter <= 0 {
		opts.AwayAfter = time.Hour
	}
	if opts.MaxDevices <= 0 {
		opts.MaxDevices = 50
	}
	if opts.AuditRecords <= 0 {
		opts.AuditRecords = 20
	}
	if opts.ScanEvery <= 0 {
		opts.ScanEvery = 10 * time.Second
	}
	if opts.Refresh <= 0 {
		opts.Refresh = 15 * time.Second
	}
	if opts.Now == nil {
		opts.Now = time.Now
	}
	if opts.Logger == nil {
		opts.Logger = slog.Default()
	}
	return &Page{src: src, opts: opts}
}

// view is what the template renders.
type view struct {
	Now         time.Time
	Refresh     int // seconds
	CSS         template.CSS
	Fleet       *fleetScan
	Anchors     uint32
	Firmware    uint32
	SLIs        []metrics.SLI
	Campaigns   []Campaign
	HasCampaign bool // the campaigns section is on
	Audit       []auditRow
	AwayAfter   time.Duration
	Max         int
	Errors      []string // parts that could not be read; the rest still shows
}

// ServeHTTP renders the page. A part that cannot be read is named at the
// top of the page and the rest still shows: during an incident a partial
// page is worth more than an error.
func (p *Page) ServeHTTP(w http.ResponseWriter, r *http.Request) {
	ctx, cancel := context.WithTimeout(r.Context(), 10*time.Second)
	defer cancel()
	v := view{Now: p.opts.Now().UTC(), Refresh: int(p.opts.Refresh / time.Second), CSS: css, AwayAfter: p.opts.AwayAfter,
		Max: p.opts.MaxDevices, HasCampaign: p.src.Campaigns != nil}
	v.Anchors = p.src.Anchors.AnchorVersion()
	v.Firmware, _ = p.src.Firmware.CurrentFirmware()
	fail := func(err error) {
		p.opts.Logger.Warn("status page: a part is unreadable", "err", err)
		v.Errors = append(v.Errors, err.Error())
	}
	var err error
	if v.Fleet, err = p.fleet(ctx, v.Anchors, v.Firmware); err != nil {
		fail(err)
	}
	v.SLIs = p.src.SLIs.SLIs()
	if v.Audit, err = lastAudit(ctx, p.src.Audit, p.opts.AuditRecords); err != nil {
		fail(err)
	}
	if p.src.Campaigns != nil {
		if v.Campaigns, err = p.src.Campaigns.Campaigns(ctx); err != nil {
			fail(fmt.Errorf("statuspage: campaigns: %w", err))
		}
	}
	var b bytes.Buffer
	if err := page.Execute(&b, v); err != nil {
		p.opts.Logger.Error("status page: render", "err", err)
		http.Error(w, "status page: render failed", http.StatusInternalServerError)
		return
	}
	h := w.Header()
	h.Set("Content-Type", "text/html; charset=utf-8")
	h.Set("Cache-Control", "no-store")
	h.Set("Content-Security-Policy", "default-src 'none'; style-src 'unsafe-inline'") // no script, ever
	h.Set("X-Content-Type-Options", "nosniff")
	_, _ = w.Write(b.Bytes())
}

// fleet returns the last reading of the devices if it is recent enough
// and was made against the same anchors and firmware, else a new one.
func (p *Page) fleet(ctx context.Context, anchors, firmware uint32) (*fleetScan, error) {
	p.mu.Lock()
	defer p.mu.Unlock()
	now := p.opts.Now()
	if s := p.scan; s != nil && now.Sub(s.At) < p.opts.ScanEvery && s.anchors == anchors && s.firmware == firmware {
		return s, nil
	}
	s, err := scanFleet(ctx, p.src, p.opts, now, anchors, firmware)
	if err != nil {
		return nil, err
	}
	p.scan = s
	return s, nil
}

// ago says how long before now t was, in one rough unit.
func ago(now, t time.Time) string {
	if t.IsZero() {
		return "never"
	}
	d := now.Sub(t)
	switch {
	case d < 0:
		return "just now"
	case d < time.Minute:
		return fmt.Sprintf("%ds ago", int(d.Seconds()))
	case d < time.Hour:
		return fmt.Sprintf("%dm ago", int(d.Minutes()))
	case d < 48*time.Hour:
		return fmt.Sprintf("%dh ago", int(d.Hours()))
	default:
		return fmt.Sprintf("%dd ago", int(d.Hours()/24))
	}
}

// pct is n of total as a whole percentage, for the bars.
func pct(n, total int) int {
	if total <= 0 {
		return 0
	}
	return n * 100 / total
}

// states lists a count by state in a stable order: the life cycle's
// order for known states, then the rest by name.
func states(by map[string]int) []stateCount {
	order := map[string]int{"pending": 0, "issued": 1, "active": 2, "superseded": 3, "retired": 4, "failed": 5,
		"cancelled": 6, "revoked": 7}
	out := make([]stateCount, 0, len(by))
	for s, n := range by {
		out = append(out, stateCount{s, n})
	}
	sort.Slice(out, func(i, j int) bool {
		oi, ki := order[out[i].State]
		oj, kj := order[out[j].State]
		if ki != kj {
			return ki
		}
		if oi != oj {
			return oi < oj
		}
		return out[i].State < out[j].State
	})
	return out
}

type stateCount struct {
	State string
	N     int
}
