package main

import (
	"context"
	"errors"
	"fmt"
	"io"
	"text/tabwriter"
	"time"

	"github.com/keyfleet/keyfleet/adminapi"
	"github.com/keyfleet/keyfleet/adminapi/client"
	"github.com/keyfleet/keyfleet/internal/progress"
)

// Exit statuses of fleetctl. Every command exits 0 or exitError; rotate
// --wait adds the outcomes of the rotations it waited for.
const (
	exitOK     = 0
	exitError  = 1 // the command failed (connection, refusal, a rotation that could not be requested)
	exitFailed = 2 // some rotation failed, or had not finished at --timeout
	exitAway   = 3 // none failed, but some devices were away (not connected)
)

const exitHelp = `Exit status: 0 on success; 1 on an error. rotate --wait: 0 when every
rotation activated; 1 on an error (including a rotation that could not be
requested); 2 when some rotation failed or had not finished at --timeout;
3 when none failed but some devices were away (not connected to the
broker), so their rotations wait for them.`

// statusError is an error with an exit status other than exitError.
type statusError struct {
	status int
	err    error
}

func (e *statusError) Error() string { return e.err.Error() }
func (e *statusError) Unwrap() error { return e.err }

// exitStatus is the exit status for the error a command returned.
func exitStatus(err error) int {
	var se *statusError
	switch {
	case err == nil:
		return exitOK
	case errors.As(err, &se):
		return se.status
	}
	return exitError
}

// Outcomes of one waited-for rotation.
const (
	outcomeActivated = "activated"
	outcomeFailed    = "failed"
	outcomeAway      = "away"
	outcomeTimedOut  = "timed out"
	outcomeError     = "error"
	outcomeWaiting   = "" // not yet decided
)

// waited is one rotation rotate --wait follows, and how it ended.
type waited struct {
	Device  string `json:"device"`
	Version uint32 `json:"version"`
	Outcome string `json:"outcome"`
	State   string `json:"state,omitempty"`
	Error   string `json:"error,omitempty"`
	// awaySince is when the device was first seen disconnected in the
	// current stretch of polls; zero while connected.
	awaySince time.Time
}

// waitOptions tune rotate --wait.
type waitOptions struct {
	timeout   time.Duration
	awayAfter time.Duration // disconnected this long in a row: away
	interval  time.Duration // between polls
	now       func() time.Time
}

// settled maps a version's state to an outcome; "" while it is open.
func settled(state string) string {
	switch state {
	case "active", "superseded", "retired":
		return outcomeActivated // superseded and retired versions were active first
	case "failed", "cancelled", "revoked":
		return outcomeFailed
	}
	return outcomeWaiting
}

// waitRotations follows the requested rotations until each has activated,
// failed or found its device away, or until the timeout; it reports them
// and returns an error carrying the exit status.
func (a *app) waitRotations(ctx context.Context, c *client.Client, resp adminapi.RotateResponse, stderr io.Writer, o waitOptions) error {
	all := make([]*waited, 0, len(resp.Rotations))
	var open []*waited
	for _, r := range resp.Rotations {
		w := &waited{Device: r.Device, Version: r.Version}
		if r.Error != "" {
			w.Outcome, w.Error = outcomeError, r.Error
		} else {
			open = append(open, w)
		}
		all = append(all, w)
	}
	bar := progress.New(stderr, len(open), "rotations finished", progress.Options{Unit: "dev"})
	deadline := o.now().Add(o.timeout)
	for {
		if err := poll(ctx, c, open, o.now(), o.awayAfter); err != nil {
			bar.Finish()
			return err
		}
		done, waiting := 0, 0
		for _, w := range open {
			if w.Outcome != outcomeWaiting {
				done++
			}
			if w.Outcome == outcomeWaiting {
				waiting++
			}
		}
		bar.Set(done)
		if waiting == 0 {
			break
		}
		if !o.now().Before(deadline) {
			for _, w := range open {
				switch {
				case w.Outcome != outcomeWaiting:
				case !w.awaySince.IsZero():
					w.Outcome = outcomeAway // not connected when time ran out
				default:
					w.Outcome = outcomeTimedOut
				}
			}
			break
		}
		select {
		case <-ctx.Done():
			bar.Finish()
			return ctx.Err()
		case <-time.After(min(o.interval, time.Until(deadline))):
		}
	}
	bar.Finish()
	if err := a.print(all, func(tw *tabwriter.Writer) {
		fmt.Fprintln(tw, "DEVICE\tVERSION\tOUTCOME\tSTATE")
		for _, w := range all {
			note := w.State
			switch w.Outcome {
			case outcomeAway:
				note += " (device not connected; the rotation completes when it returns)"
			case outcomeError:
				note = w.Error
			}
			fmt.Fprintf(tw, "%s\t%d\t%s\t%s\n", w.Device, w.Version, w.Outcome, note)
		}
	}); err != nil {
		return err
	}
	summary, status := verdict(all)
	if status != exitOK {
		return &statusError{status, errors.New(summary)}
	}
	fmt.Fprintln(stderr, summary)
	return nil
}

// verdict sums up the outcomes and picks the exit status: an error first,
// then failures and timeouts, then devices away.
func verdict(all []*waited) (string, int) {
	count := map[string]int{}
	for _, w := range all {
		count[w.Outcome]++
	}
	summary := fmt.Sprintf("%d activated, %d failed, %d timed out, %d away, %d not requested, of %d",
		count[outcomeActivated], count[outcomeFailed], count[outcomeTimedOut], count[outcomeAway], count[outcomeError], len(all))
	switch {
	case count[outcomeError] > 0:
		return summary, exitError
	case count[outcomeFailed]+count[outcomeTimedOut] > 0:
		return summary, exitFailed
	case count[outcomeAway] > 0:
		return summary, exitAway
	}
	return summary, exitOK
}

// poll asks for every rotation still open, MaxProgress at a time, and
// settles those that finished or whose device has been away for awayAfter.
// An away rotation stays asked for: it counts as activated if its device
// comes back and activates it before the wait ends.
func poll(ctx context.Context, c *client.Client, open []*waited, now time.Time, awayAfter time.Duration) error {
	var ask []*waited
	for _, w := range open {
		if w.Outcome == outcomeWaiting || w.Outcome == outcomeAway {
			ask = append(ask, w)
		}
	}
	for len(ask) > 0 {
		batch := ask[:min(len(ask), adminapi.MaxProgress)]
		ask = ask[len(batch):]
		refs := make([]adminapi.RotationRef, len(batch))
		for i, w := range batch {
			refs[i] = adminapi.RotationRef{Device: w.Device, Version: w.Version}
		}
		resp, err := c.RotationProgress(ctx, refs)
		if err != nil {
			return err
		}
		if len(resp.Rotations) != len(batch) {
			return fmt.Errorf("rotation progress: got %d answers for %d rotations", len(resp.Rotations), len(batch))
		}
		for i, p := range resp.Rotations {
			batch[i].observe(p, now, awayAfter)
		}
	}
	return nil
}

// observe takes one progress answer into w.
func (w *waited) observe(p adminapi.RotationProgress, now time.Time, awayAfter time.Duration) {
	w.State = p.State
	if p.Error != "" {
		w.Outcome, w.Error = outcomeFailed, p.Error
		return
	}
	if o := settled(p.State); o != outcomeWaiting {
		w.Outcome = o
		return
	}
	switch {
	case p.Connected == nil || *p.Connected:
		// Connected, or fleetd cannot tell: keep waiting. A device
		// reconnecting with its new credential is briefly away; that
		// must not count.
		w.awaySince = time.Time{}
		if w.Outcome == outcomeAway {
			w.Outcome = outcomeWaiting
		}
	case w.awaySince.IsZero():
		w.awaySince = now
		fallthrough
	default:
		if now.Sub(w.awaySince) >= awayAfter {
			w.Outcome = outcomeAway
		}
	}
}
