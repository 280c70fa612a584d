package main

import (
	"context"
	"fmt"
	"math"
	"net/http"
	"strconv"
	"strings"
	"time"

	"github.com/micado-scale/micado/coordinator"
	"github.com/micado-scale/micado/definitions"
	"github.com/micado-scale/micado/definitions/bytesize"
	"github.com/micado-scale/micado/manager"
	"github.com/robfig/cron/v3"
	"github.com/spf13/cobra"
)

// scaleInFlags configure the manager's consolidator.
type scaleInFlags struct {
	schedule    string
	threshold   float64
	delay       time.Duration
	unneeded    time.Duration
	minPerRole  string
	maxNonEmpty int
	moveTimeout time.Duration
	drainDL     time.Duration
	revalidate  time.Duration
	windows     []string
	budget      string
	minSaving   float64
}

func (s *scaleInFlags) register(cmd *cobra.Command) {
	f := cmd.Flags()
	f.StringVar(&s.schedule, "consolidate-schedule", manager.DefaultConsolidateSchedule, `cron schedule of scale-in rounds, e.g. "@every 1m" or "*/5 * * * *"; "off" disables them`)
	f.Float64Var(&s.threshold, "scale-in-threshold", coordinator.DefaultScaleDownUtilizationThreshold, "only workers with less of their memory reserved are scaled in")
	f.DurationVar(&s.delay, "scale-in-delay", coordinator.DefaultScaleDownDelayAfterAdd, "a worker is kept at least this long after it joined")
	f.DurationVar(&s.unneeded, "unneeded-time", coordinator.DefaultScaleDownUnneededTime, "a worker must be removable this long before it is scaled in")
	f.StringVar(&s.minPerRole, "min-per-role", "", "workers kept per role, e.g. proxy=1,app=2")
	f.IntVar(&s.maxNonEmpty, "max-drain-per-round", coordinator.DefaultMaxNonEmptyPerRound, "workers with containers drained per round in the whole cluster (0: only the per-role --drain-budget limits it; empty ones may all go)")
	f.StringVar(&s.budget, "drain-budget", "10%", "the most workers of a role draining at once: N workers or N% of the role's workers (rounded up: a role may always drain one)")
	f.Float64Var(&s.minSaving, "min-saving", 0, "a worker with containers is removed or replaced only if that saves at least this per hour (in the currency of --instance-prices)")
	f.DurationVar(&s.moveTimeout, "move-timeout", manager.DefaultMoveTimeout, "how long one move may take to pass its check")
	f.StringArrayVar(&s.windows, "consolidate-window", nil, `maintenance window "CRON for DURATION" (UTC), e.g. "0 2 * * * for 3h": outside every window unattended rounds only remove empty workers (repeatable)`)
	f.DurationVar(&s.drainDL, "drain-deadline", manager.DefaultDrainDeadline, "how long draining one worker may take; past it the move in progress is rolled back and the worker kept")
	f.DurationVar(&s.revalidate, "revalidate-delay", manager.DefaultRevalidateDelay, "an unattended round re-plans after this delay and acts only if the plan holds")
}

func (s *scaleInFlags) apply(cfg *manager.Config) error {
	if s.schedule != "off" {
		if _, err := cron.ParseStandard(s.schedule); err != nil {
			return userErr("--consolidate-schedule %q is not a cron schedule: %v", s.schedule, err)
		}
	}
	if s.threshold <= 0 || s.threshold > 1 {
		return userErr("--scale-in-threshold %.2f must be above 0 and at most 1", s.threshold)
	}
	if s.delay < 0 || s.unneeded < 0 || s.moveTimeout <= 0 || s.drainDL <= 0 || s.revalidate < 0 {
		return userErr("scale-in durations must not be negative")
	}
	if s.maxNonEmpty < 0 {
		return userErr("--max-drain-per-round must not be negative")
	}
	budget, err := parseBudget(s.budget)
	if err != nil {
		return err
	}
	if s.minSaving < 0 || math.IsNaN(s.minSaving) || math.IsInf(s.minSaving, 0) {
		return userErr("--min-saving %v must be a price per hour of at least 0", s.minSaving)
	}
	mins, err := parseMinPerRole(s.minPerRole)
	if err != nil {
		return err
	}
	cfg.ConsolidateSchedule = s.schedule
	cfg.Consolidate = coordinator.ConsolidateOptions{Threshold: s.threshold, DelayAfterAdd: s.delay, UnneededTime: s.unneeded,
		MinPerRole: mins, MaxNonEmpty: s.maxNonEmpty, Budget: budget, MinSaving: s.minSaving}
	cfg.MoveTimeout = s.moveTimeout
	cfg.DrainDeadline = s.drainDL
	for _, w := range s.windows {
		win, err := parseWindow(w)
		if err != nil {
			return userErr("--consolidate-window %q: %v", w, err)
		}
		if win.Min != 0 || win.Max != 0 {
			return userErr("--consolidate-window %q: a maintenance window has no min or max: write \"CRON for DURATION\"", w)
		}
		sch, err := definitions.ParseCron(win.Cron)
		if err != nil {
			return userErr("--consolidate-window %q: %v", w, err)
		}
		d, err := time.ParseDuration(win.Duration)
		if err != nil || d <= 0 || d > definitions.MaxWindowDuration {
			return userErr("--consolidate-window %q: %q is not a duration from 1s to 168h", w, win.Duration)
		}
		cfg.ConsolidateWindows = append(cfg.ConsolidateWindows, coordinator.ScheduleWindow{Spec: win.Cron, Schedule: sch, Duration: d})
	}
	cfg.RevalidateDelay = s.revalidate
	if s.revalidate == 0 {
		cfg.RevalidateDelay = time.Nanosecond
	}
	return nil
}

func parseMinPerRole(s string) (map[string]int, error) {
	out := map[string]int{}
	for _, p := range splitList(s) {
		role, n, ok := strings.Cut(p, "=")
		v, err := strconv.Atoi(n)
		if !ok || role == "" || err != nil || v < 0 {
			return nil, userErr("--min-per-role %q is not ROLE=N", p)
		}
		out[role] = v
	}
	return out, nil
}

func consolidateCmd(g *globals) *cobra.Command {
	var dryRun, jsonOut bool
	cmd := &cobra.Command{
		Use:   "consolidate",
		Short: "Run one scale-in round now: repack, empty and terminate the workers that can go, replace others by cheaper types",
		Long: `Consolidate runs one scale-in round now and prints the plan and its reasons.
The manager also runs rounds on its own schedule (--consolidate-schedule).
Run by hand, a round skips the waiting rules (delay after scale-out, unneeded
for a while) and maintenance windows because you asked for it now, but never
the safety rules (pinned containers, minimum workers per role, the drain
budget, the minimum saving, everything must fit elsewhere). Moves are make
before break: the new copy passes its Consul check before the old one stops.
With --dry-run it only prints what it would do and the saving per hour.`,
		Example: "  micado consolidate --dry-run\n  micado consolidate",
		Args:    cobra.NoArgs,
		RunE: func(cmd *cobra.Command, _ []string) error {
			c, err := newClient(g)
			if err != nil {
				return err
			}
			c.http.Timeout = 15 * time.Minute
			if !jsonOut && !dryRun {
				fmt.Fprintln(cmd.ErrOrStderr(), "consolidating (moves wait for each new copy to pass its check)...")
			}
			var res manager.ConsolidateResult
			ctx, cancel := context.WithTimeout(cmd.Context(), 15*time.Minute)
			defer cancel()
			if !jsonOut && !dryRun {
				// Progress: what the round does while it runs.
				fctx, stop := context.WithCancel(ctx)
				done := make(chan struct{})
				go func() {
					defer close(done)
					followEvents(fctx, c, []string{manager.EventScaleIn, manager.EventMoved, manager.EventTerminated}, progress(cmd, false))
				}()
				defer func() { stop(); <-done }()
			}
			if err := c.do(ctx, http.MethodPost, "/v1/consolidate", manager.ConsolidateRequest{DryRun: dryRun}, &res); err != nil {
				return err
			}
			if jsonOut {
				return printJSON(cmd.OutOrStdout(), res)
			}
			out := cmd.OutOrStdout()
			for _, sk := range res.Plan.Skipped {
				fmt.Fprintf(out, "skip %s: %s\n", sk.Worker, sk.Reason)
			}
			for _, mv := range res.Plan.Moves {
				fmt.Fprintf(out, "move %s (%s) from %s to %s: %s\n", mv.Container, bytesize.Format(mv.Memory), mv.From, mv.To, mv.Reason)
			}
			for _, r := range res.Plan.Removals {
				fmt.Fprintf(out, "remove %s: %s%s\n", r.Worker, r.Reason, savingSuffix(r.Saving))
			}
			if len(res.Plan.Removals) == 0 {
				for _, w := range res.Plan.Remove {
					fmt.Fprintf(out, "remove %s\n", w)
				}
			}
			for _, r := range res.Plan.Replace {
				fmt.Fprintf(out, "replace %s by a %s instance: %s%s\n", r.Worker, r.Type.Name, r.Reason, savingSuffix(r.Saving))
			}
			if res.Plan.SavingPerHour > 0 {
				fmt.Fprintf(out, "saving in all: %s\n", coordinator.FormatPrice(res.Plan.SavingPerHour))
			}
			for _, a := range res.Actions {
				fmt.Fprintln(out, a)
			}
			switch res.Outcome {
			case "nothing-to-do":
				fmt.Fprintln(out, "nothing to scale in")
			case "planned":
				fmt.Fprintln(out, "dry run: nothing was changed")
			case "removed":
				done := append([]string(nil), res.Plan.Remove...)
				for _, r := range res.Plan.Replace {
					done = append(done, r.Worker+" (replaced)")
				}
				fmt.Fprintf(out, "scaled in: %s\n", strings.Join(done, ", "))
			default:
				return userErr("consolidation %s: %s", res.Outcome, res.Error)
			}
			return nil
		},
	}
	cmd.Flags().BoolVar(&dryRun, "dry-run", false, "print the plan and change nothing")
	cmd.Flags().BoolVar(&jsonOut, "json", false, "print the round as JSON")
	return cmd
}

// parseBudget reads --drain-budget: "N" workers or "N%" of a role.
func parseBudget(v string) (coordinator.Budget, error) {
	v = strings.TrimSpace(v)
	if p, ok := strings.CutSuffix(v, "%"); ok {
		f, err := strconv.ParseFloat(strings.TrimSpace(p), 64)
		if err != nil || f <= 0 || f > 100 {
			return coordinator.Budget{}, userErr("--drain-budget %q: a percentage above 0%% and at most 100%%", v)
		}
		return coordinator.Budget{Percent: f / 100}, nil
	}
	n, err := strconv.Atoi(v)
	if err != nil || n < 1 {
		return coordinator.Budget{}, userErr("--drain-budget %q: a number of workers (at least 1) or a percentage such as 10%%", v)
	}
	return coordinator.Budget{Workers: n}, nil
}

func savingSuffix(v float64) string {
	if v <= 0 {
		return ""
	}
	return " (saves " + coordinator.FormatPrice(v) + ")"
}
