// Package progress shows how far a long phase of a command has come: on a
// terminal, a bar drawn by github.com/schollz/progressbar; in a file or a
// CI log, where carriage-return frames would pile up by the thousand, a
// plain line every few seconds. The rate is counted here, from the phase's
// start, and shown only once a second has passed, so a phase that finds its
// work already done does not report billions of items a second (the
// library's own rate is off for that reason).
package progress

import (
	"fmt"
	"io"
	"os"
	"sync"
	"time"

	"github.com/schollz/progressbar/v3"
	"golang.org/x/term"
)

// Options tune a Bar; the zero value suits a person at a terminal or a CI
// log, decided from the writer.
type Options struct {
	// Unit names one item in the rate ("dev" gives "120 dev/s"); empty
	// shows no rate.
	Unit string
	// Every is the interval of plain lines (default 5 s).
	Every time.Duration
	// Terminal forces the redrawn bar (true) or plain lines (false);
	// nil decides from whether w is a terminal.
	Terminal *bool
	// Now is the clock (tests); nil is time.Now.
	Now func() time.Time
}

// Bar is the progress of one phase toward total items. A nil *Bar does
// nothing, so callers may skip progress by passing no writer.
type Bar struct {
	mu      sync.Mutex
	w       io.Writer
	desc    string
	total   int
	opts    Options
	tty     bool
	start   time.Time
	last    time.Time // last output
	n       int
	pb      *progressbar.ProgressBar // the terminal bar; nil in plain mode
	drawn   bool                     // a terminal frame was drawn
	written bool
	done    bool
}

// New starts a bar for total items described by desc, writing to w; a nil
// w gives a nil Bar.
func New(w io.Writer, total int, desc string, opts Options) *Bar {
	if w == nil {
		return nil
	}
	if opts.Now == nil {
		opts.Now = time.Now
	}
	if opts.Every <= 0 {
		opts.Every = 5 * time.Second
	}
	b := &Bar{w: w, desc: desc, total: total, opts: opts, start: opts.Now()}
	if opts.Terminal != nil {
		b.tty = *opts.Terminal
	} else {
		b.tty = IsTerminal(w)
	}
	b.last = b.start
	if b.tty {
		// The library draws and throttles; the rate goes in the
		// description (see rate), set on each update.
		b.pb = progressbar.NewOptions(total, progressbar.OptionSetWriter(w), progressbar.OptionSetDescription(desc),
			progressbar.OptionShowCount(), progressbar.OptionSetWidth(20), progressbar.OptionSetPredictTime(false),
			progressbar.OptionClearOnFinish())
	}
	return b
}

// IsTerminal reports whether w is a terminal.
func IsTerminal(w io.Writer) bool {
	f, ok := w.(*os.File)
	return ok && term.IsTerminal(int(f.Fd()))
}

// Add counts n more items done.
func (b *Bar) Add(n int) {
	if b == nil {
		return
	}
	b.mu.Lock()
	defer b.mu.Unlock()
	b.n += n
	b.update()
}

// Set sets the count of items done.
func (b *Bar) Set(n int) {
	if b == nil {
		return
	}
	b.mu.Lock()
	defer b.mu.Unlock()
	b.n = n
	b.update()
}

// Finish ends the phase: the terminal bar is cleared; in plain mode a last
// line says how long the phase took, if any line was written for it.
func (b *Bar) Finish() {
	if b == nil {
		return
	}
	b.mu.Lock()
	defer b.mu.Unlock()
	if b.done {
		return
	}
	b.done = true
	if b.tty {
		_ = b.pb.Finish() // clears the line
		return
	}
	if b.written {
		fmt.Fprintf(b.w, "%s: %s, done in %s\n", b.desc, b.counts(), b.elapsed().Round(100*time.Millisecond))
	}
}

func (b *Bar) elapsed() time.Duration { return b.opts.Now().Sub(b.start) }

func (b *Bar) update() {
	if b.done {
		return
	}
	now := b.opts.Now()
	if b.tty {
		// At most five frames a second, by this package's clock (the
		// first at once); Describe draws the frame.
		if b.drawn && now.Sub(b.last) < 200*time.Millisecond {
			return
		}
		b.last, b.drawn = now, true
		desc := b.desc
		if r := b.rate(); r != "" {
			desc += " " + r
		}
		_ = b.pb.Set(b.n)
		b.pb.Describe(desc)
		return
	}
	if now.Sub(b.last) < b.opts.Every {
		return
	}
	b.last = now
	fmt.Fprintf(b.w, "%s: %s\n", b.desc, b.counts())
	b.written = true
}

// counts is "450/1000 (45%), 120 dev/s".
func (b *Bar) counts() string {
	s := fmt.Sprintf("%d/%d", b.n, b.total)
	if b.total > 0 {
		s += fmt.Sprintf(" (%d%%)", 100*b.n/b.total)
	}
	if r := b.rate(); r != "" {
		s += ", " + r
	}
	return s
}

// rate is the items per second since the start, once a second has passed.
func (b *Bar) rate() string {
	el := b.elapsed()
	if b.opts.Unit == "" || el < time.Second {
		return ""
	}
	r := float64(b.n) / el.Seconds()
	if r >= 10 {
		return fmt.Sprintf("%.0f %s/s", r, b.opts.Unit)
	}
	return fmt.Sprintf("%.1f %s/s", r, b.opts.Unit)
}
