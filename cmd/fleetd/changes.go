package main

import (
	"io"
	"sync"
	"time"

	"github.com/keyfleet/keyfleet/server/lifecycle"
)

// changePrinter writes one readable line per key state change, for a
// person watching fleetd (fleetd run --print-changes, as make run does):
// "07:51:02 dev-01 identity v3 active (152ms)". Changes come from many
// goroutines; each line is written whole.
type changePrinter struct {
	mu  sync.Mutex
	w   io.Writer
	now func() time.Time
}

func (p *changePrinter) print(c lifecycle.Change) {
	line := p.now().Format(time.TimeOnly) + " " + c.String() + "\n"
	p.mu.Lock()
	defer p.mu.Unlock()
	_, _ = io.WriteString(p.w, line)
}
