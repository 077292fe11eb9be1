package main

import (
	"context"
	"fmt"
	"io"
	"strings"
	"text/tabwriter"
	"time"

	"github.com/spf13/cobra"

	"github.com/keyfleet/keyfleet/adminapi"
	"github.com/keyfleet/keyfleet/adminapi/client"
	"github.com/keyfleet/keyfleet/internal/durationflag"
	"github.com/keyfleet/keyfleet/internal/progress"
)

const campaignHelp = `A campaign changes the devices a label selector selects in stages:
--stages are cumulative shares of them (1%,10%,100%: a canary of 1%, then
up to 10%, then all), started at most --rate devices a minute. Each device
ends succeeded, failed (refused, errored, or timed out while connected for
--device-timeout) or away (not connected since its stage began; its change
waits for it and it converges when it returns). A stage completes when
every device reached has finished and at least --min-reached were reached;
above --max-failure failures among the devices reached, the campaign pauses
itself. Kinds: identity (rotate the identity credential; rollback cancels
the rotations not yet activated, activated devices keep their new
credential), data-key (a new primary data key; rollback makes the previous
version primary again on every device the campaign changed), firmware
(roll out the staged release --release, published with firmware publish
--staged, which becomes the fleet's release when the campaign completes;
rollback takes the desired release back to the previous one, and devices
that installed the new one get the previous image under a new version
number, as their anti-rollback rule requires)); anchors (prepare the next trust-anchor set replacing the keys
of --roles, hand it to each device of a stage, publish it fleet-wide when
the campaign completes; no rollback, the chain moves forward only: abort
stops it, devices given the set keep it, the others stay on the published
one, and both stay connected and served).

watch exits 0 when the campaign completes, 2 when it pauses, is aborted or
rolled back, 1 on an error.`

// campaignFlags are create's flags as typed; parse checks them.
type campaignFlags struct {
	kind, selector, stages, maxFailure, rate string
	roles                                    []string
	minReached                               int
	release                                  uint32
	timeout                                  time.Duration
	watch                                    bool
}

// request checks the flags and names the one at fault.
func (f campaignFlags) request() (adminapi.CampaignRequest, error) {
	req := adminapi.CampaignRequest{Kind: f.kind, Selector: f.selector, MinReached: f.minReached,
		DeviceTimeoutSeconds: f.timeout.Seconds(), Release: f.release, Roles: f.roles}
	var err error
	if req.Stages, err = adminapi.ParseStages(f.stages); err != nil {
		return req, fmt.Errorf("--stages: %w", err)
	}
	if req.MaxFailure, err = adminapi.ParsePercent(f.maxFailure); err != nil {
		return req, fmt.Errorf("--max-failure: %w", err)
	}
	if req.Rate, err = adminapi.ParseRate(f.rate); err != nil {
		return req, fmt.Errorf("--rate: %w", err)
	}
	if f.minReached < 0 {
		return req, fmt.Errorf("--min-reached: %d is negative", f.minReached)
	}
	if f.timeout <= 0 {
		return req, fmt.Errorf("--device-timeout: must be positive")
	}
	if f.kind == adminapi.CampaignKindFirmware && f.release == 0 {
		return req, fmt.Errorf("--release: a firmware campaign needs the staged release it rolls out")
	}
	if f.kind != adminapi.CampaignKindFirmware && f.release != 0 {
		return req, fmt.Errorf("--release: only a firmware campaign takes a release")
	}
	if err := adminapi.ValidateRoles(f.kind, f.roles); err != nil {
		return req, fmt.Errorf("--roles: %w", err)
	}
	return req, req.Validate()
}

func (a *app) campaignCommands() *cobra.Command {
	cmd := &cobra.Command{Use: "campaign", Short: "staged campaigns: create, list, show, watch, pause, resume, abort, rollback",
		Long: "Staged campaigns.\n\n" + campaignHelp}
	var f campaignFlags
	interval := 500 * time.Millisecond
	create := &cobra.Command{Use: "create", Short: "create and start a campaign", Long: "Create and start a campaign.\n\n" + campaignHelp,
		Args: cobra.NoArgs,
		RunE: func(cmd *cobra.Command, _ []string) error {
			req, err := f.request()
			if err != nil {
				return err
			}
			c, err := a.client()
			if err != nil {
				return err
			}
			camp, err := c.CreateCampaign(cmd.Context(), req)
			if err != nil {
				return err
			}
			if err := a.print(camp, func(w *tabwriter.Writer) { showCampaign(w, camp) }); err != nil || !f.watch {
				return err
			}
			return watchCampaign(cmd.Context(), c, camp.ID, cmd.ErrOrStderr(), a.out, interval)
		}}
	fl := create.Flags()
	fl.StringVar(&f.kind, "kind", adminapi.CampaignKindIdentity, "what the campaign changes: identity, data-key, firmware or anchors")
	fl.Uint32Var(&f.release, "release", 0, "the staged firmware release a firmware campaign rolls out")
	fl.StringSliceVar(&f.roles, "roles", nil, "anchors only: the anchor keys the new set replaces (ca, update, firmware; default: those of the set prepared already, or ca,update)")
	fl.StringVar(&f.selector, "select", "", "Kubernetes label selector of the devices (empty: every device not revoked)")
	fl.StringVar(&f.stages, "stages", "1%,10%,100%", "cumulative shares of the selected devices, one per stage, the last 100%")
	fl.StringVar(&f.maxFailure, "max-failure", "2%", "failure share of the reached devices above which the campaign pauses itself")
	fl.IntVar(&f.minReached, "min-reached", 1, "devices that must have been reached before a stage completes or failures count")
	fl.StringVar(&f.rate, "rate", "1000/min", "devices started at most per minute (N/s, N/min, N/h; 0: no bound)")
	durationflag.Var(fl, &f.timeout, "device-timeout", 10*time.Minute, "how long a connected device may take before it counts as failed")
	fl.BoolVar(&f.watch, "watch", false, "watch the campaign after creating it (as campaign watch)")

	list := &cobra.Command{Use: "list", Short: "list campaigns", Args: cobra.NoArgs,
		RunE: func(cmd *cobra.Command, _ []string) error {
			c, err := a.client()
			if err != nil {
				return err
			}
			cs, err := c.Campaigns(cmd.Context())
			if err != nil {
				return err
			}
			return a.print(cs, func(w *tabwriter.Writer) {
				fmt.Fprintln(w, "CAMPAIGN\tKIND\tSTATE\tSTAGE\tDEVICES\tSUCCEEDED\tFAILED\tAWAY\tSELECTOR")
				for _, camp := range cs {
					t := total(camp)
					fmt.Fprintf(w, "%s\t%s\t%s\t%d/%d\t%d\t%d\t%d\t%d\t%s\n", camp.ID, camp.Kind, camp.State, camp.Stage+1,
						len(camp.Stages), t.Devices, t.Succeeded, t.Failed, t.Away, orDash(camp.Selector))
				}
			})
		}}
	show := &cobra.Command{Use: "show ID", Short: "show a campaign, its stages and every device's status", Args: cobra.ExactArgs(1),
		RunE: func(cmd *cobra.Command, args []string) error {
			c, err := a.client()
			if err != nil {
				return err
			}
			camp, err := c.Campaign(cmd.Context(), args[0], true)
			if err != nil {
				return err
			}
			return a.print(camp, func(w *tabwriter.Writer) {
				showCampaign(w, camp)
				fmt.Fprintln(w, "\nDEVICE\tSTAGE\tSTATUS\tVERSION\tDETAIL")
				for _, d := range camp.Devices {
					fmt.Fprintf(w, "%s\t%d\t%s\t%d\t%s\n", d.ID, d.Stage+1, d.Status, d.Version, orDash(d.Detail))
				}
			})
		}}
	watch := &cobra.Command{Use: "watch ID", Short: "follow a campaign stage by stage until it completes, pauses or ends",
		Long: "Follow a campaign stage by stage.\n\n" + campaignHelp, Args: cobra.ExactArgs(1),
		RunE: func(cmd *cobra.Command, args []string) error {
			c, err := a.client()
			if err != nil {
				return err
			}
			return watchCampaign(cmd.Context(), c, args[0], cmd.ErrOrStderr(), a.out, interval)
		}}
	durationflag.Var(watch.Flags(), &interval, "interval", 500*time.Millisecond, "time between polls")
	cmd.AddCommand(create, list, show, watch)
	for _, act := range []struct{ name, short string }{
		{adminapi.CampaignPause, "stop starting devices (those started go on)"},
		{adminapi.CampaignResume, "run a paused campaign again"},
		{adminapi.CampaignAbort, "end a campaign: start nothing more"},
		{adminapi.CampaignRollback, "end a campaign and undo its unfinished changes (identity: cancel open rotations)"},
	} {
		cmd.AddCommand(&cobra.Command{Use: act.name + " ID", Short: act.short, Args: cobra.ExactArgs(1),
			RunE: func(cmd *cobra.Command, args []string) error {
				c, err := a.client()
				if err != nil {
					return err
				}
				camp, err := c.CampaignAction(cmd.Context(), args[0], act.name)
				if err != nil {
					return err
				}
				return a.print(camp, func(w *tabwriter.Writer) { showCampaign(w, camp) })
			}})
	}
	return cmd
}

func total(c adminapi.Campaign) adminapi.StageProgress {
	var t adminapi.StageProgress
	for _, p := range c.StageProgress {
		t.Devices += p.Devices
		t.Pending += p.Pending
		t.InProgress += p.InProgress
		t.Succeeded += p.Succeeded
		t.Failed += p.Failed
		t.Away += p.Away
		t.Cancelled += p.Cancelled
	}
	return t
}

func pct(f float64) string { return strings.TrimSuffix(fmt.Sprintf("%.2f", 100*f), ".00") + "%" }

func showCampaign(w io.Writer, c adminapi.Campaign) {
	stages := make([]string, len(c.Stages))
	for i, s := range c.Stages {
		stages[i] = pct(s)
	}
	fmt.Fprintf(w, "campaign\t%s\nkind\t%s\nselector\t%s\nstate\t%s\nstage\t%d of %d (%s)\n", c.ID, c.Kind, orDash(c.Selector),
		c.State, c.Stage+1, len(c.Stages), strings.Join(stages, ","))
	if c.Release != 0 {
		fmt.Fprintf(w, "release\t%d\n", c.Release)
	}
	fmt.Fprintf(w, "max failure\t%s\nmin reached\t%d\nrate\t%d/min\ndevice timeout\t%s\nreason\t%s\n", pct(c.MaxFailure),
		c.MinReached, c.Rate, durationflag.Format(time.Duration(c.DeviceTimeoutSeconds*float64(time.Second))), orDash(c.Reason))
	if c.RolledBackAt != nil {
		rec := "not yet"
		if c.RecoveredAt != nil {
			rec = fmt.Sprintf("%s (%s after the rollback)", stamp(*c.RecoveredAt), c.RecoveredAt.Sub(*c.RolledBackAt).Round(time.Millisecond))
		}
		fmt.Fprintf(w, "rolled back\t%s\nrecovered\t%s\n", stamp(*c.RolledBackAt), rec)
	}
	for i, p := range c.StageProgress {
		fmt.Fprintf(w, "stage %d\t%s\n", i+1, stageLine(p))
	}
}

func stageLine(p adminapi.StageProgress) string {
	s := fmt.Sprintf("%d devices: %d succeeded, %d failed, %d away, %d in progress, %d pending", p.Devices, p.Succeeded,
		p.Failed, p.Away, p.InProgress, p.Pending)
	if p.Cancelled > 0 {
		s += fmt.Sprintf(", %d cancelled", p.Cancelled)
	}
	return s
}

// watchCampaign polls a campaign and shows its current stage's progress
// (bar on a terminal, plain lines otherwise), a line per finished stage,
// and returns nil when it completes, a status error when it pauses or
// ends otherwise.
func watchCampaign(ctx context.Context, c *client.Client, id string, stderr, out io.Writer, interval time.Duration) error {
	var bar *progress.Bar
	stage := -1
	for {
		camp, err := c.Campaign(ctx, id, false)
		if err != nil {
			bar.Finish()
			return err
		}
		for stage < camp.Stage || (stage == camp.Stage && camp.State != adminapi.CampaignStateRunning) {
			if stage >= 0 {
				bar.Set(finished(camp.StageProgress[stage]))
				bar.Finish()
				fmt.Fprintf(out, "stage %d of %d (%s): %s\n", stage+1, len(camp.Stages), pct(camp.Stages[stage]),
					stageLine(camp.StageProgress[stage]))
			}
			if stage == camp.Stage {
				break
			}
			stage++
			bar = progress.New(stderr, camp.StageProgress[stage].Devices,
				fmt.Sprintf("stage %d of %d (%s)", stage+1, len(camp.Stages), pct(camp.Stages[stage])), progress.Options{Unit: "dev"})
		}
		switch camp.State {
		case adminapi.CampaignStateRunning:
			bar.Set(finished(camp.StageProgress[stage]))
		case adminapi.CampaignStateCompleted:
			t := total(camp)
			fmt.Fprintf(out, "campaign %s completed: %d succeeded, %d failed, %d away (their changes wait for them)\n",
				camp.ID, t.Succeeded, t.Failed, t.Away)
			return nil
		default:
			return &statusError{status: exitFailed, err: fmt.Errorf("campaign %s is %s: %s", camp.ID, camp.State, camp.Reason)}
		}
		select {
		case <-ctx.Done():
			bar.Finish()
			return ctx.Err()
		case <-time.After(interval):
		}
	}
}

// finished counts a stage's devices that no longer hold it up.
func finished(p adminapi.StageProgress) int { return p.Succeeded + p.Failed + p.Away + p.Cancelled }
