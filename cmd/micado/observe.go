package main

import (
	"context"
	"encoding/json"
	"fmt"
	"io"
	"net/url"
	"slices"
	"strconv"
	"strings"
	"text/tabwriter"
	"time"

	"github.com/micado-scale/micado/definitions/bytesize"
	"github.com/micado-scale/micado/manager"
	"github.com/spf13/cobra"
)

func eventsCmd(g *globals) *cobra.Command {
	var (
		jsonOut, follow bool
		last            int
		since           uint64
	)
	cmd := &cobra.Command{
		Use:   "events",
		Short: "Show the manager's decisions and what befell the cluster, each with its reason",
		Long: `Events shows every decision the manager took, with its reason: where a
container was placed and why, why one waits, which instance was asked of the
cloud, which worker was kept at scale-in and why, what moved, what was
terminated, and what reconciliation repaired. The manager keeps the last 1000,
also across restarts (in Consul KV).`,
		Example: `  micado events
  micado events -n 20
  micado events --follow
  micado events --json --since 1200`,
		Args: cobra.NoArgs,
		RunE: func(cmd *cobra.Command, _ []string) error {
			if last < 0 {
				return userErr("--last (-n) %d must not be negative", last)
			}
			c, err := newClient(g)
			if err != nil {
				return err
			}
			q := url.Values{}
			q.Set("since", strconv.FormatUint(since, 10))
			if last > 0 {
				q.Set("limit", strconv.Itoa(last))
			}
			var evs []manager.Event
			if err := c.get(cmd.Context(), "/v1/events?"+q.Encode(), &evs); err != nil {
				return err
			}
			out := cmd.OutOrStdout()
			for {
				for _, e := range evs {
					if jsonOut {
						if err := printJSONLine(out, e); err != nil {
							return err
						}
					} else {
						fmt.Fprintln(out, e.String())
					}
					since = e.Seq
				}
				if !follow {
					return nil
				}
				q := url.Values{}
				q.Set("since", strconv.FormatUint(since, 10))
				q.Set("wait", "30s")
				evs = nil
				if err := c.get(cmd.Context(), "/v1/events?"+q.Encode(), &evs); err != nil {
					if cmd.Context().Err() != nil {
						return nil
					}
					return err
				}
			}
		},
	}
	f := cmd.Flags()
	f.BoolVarP(&follow, "follow", "f", false, "keep printing new events as they happen")
	f.IntVarP(&last, "last", "n", 0, "show only the last `N` events (0 = every kept one)")
	f.Uint64Var(&since, "since", 0, "show events after this sequence number")
	f.BoolVar(&jsonOut, "json", false, "print one JSON object per line")
	return cmd
}

func explainCmd(g *globals) *cobra.Command {
	var jsonOut bool
	cmd := &cobra.Command{
		Use:               "explain NAME",
		ValidArgsFunction: completeContainers(g, false),
		Short:             "Explain why a container is where it is, or why it is still pending, worker by worker",
		Long: `Explain asks the same placement filters that place containers (draining,
tags, memory) about the container NAME (or every container of the service
NAME), on the cluster as it is now with the container's own reservation taken
off its worker: which worker each filter rejected and why, which pass and how
much memory they have free, and why the container was put where it is.`,
		Example: `  micado explain web-2
  micado explain db --json`,
		Args: cobra.ExactArgs(1),
		RunE: func(cmd *cobra.Command, args []string) error {
			c, err := newClient(g)
			if err != nil {
				return err
			}
			var ex []manager.Explanation
			if err := c.get(cmd.Context(), "/v1/containers/"+url.PathEscape(args[0])+"/explain", &ex); err != nil {
				return err
			}
			// A service with a scaling policy: why it has the replicas it has.
			var pol *manager.PolicyView
			var pv manager.PolicyView
			if c.get(cmd.Context(), "/v1/autoscale/"+url.PathEscape(args[0]), &pv) == nil {
				pv.Series = nil
				pol = &pv
			}
			if jsonOut {
				if pol != nil {
					return printJSON(cmd.OutOrStdout(), map[string]any{"containers": ex, "scaling": pol})
				}
				return printJSON(cmd.OutOrStdout(), ex)
			}
			if pol != nil {
				printScaleExplanation(cmd.OutOrStdout(), *pol)
				fmt.Fprintln(cmd.OutOrStdout())
			}
			for i, e := range ex {
				if i > 0 {
					fmt.Fprintln(cmd.OutOrStdout())
				}
				printExplanation(cmd.OutOrStdout(), e)
			}
			return nil
		},
	}
	cmd.Flags().BoolVar(&jsonOut, "json", false, "print JSON")
	return cmd
}

// printScaleExplanation says why a scaled service has its replicas.
func printScaleExplanation(w io.Writer, p manager.PolicyView) {
	state := "on"
	if p.Off {
		state = "off: replicas change only by hand"
	}
	fmt.Fprintf(w, "%s has %d replicas (%d ready); scaling policy min %d, max %d, autoscaling %s.\n", p.Service, p.Replicas, p.Ready, p.Scaling.Min, p.Scaling.Max, state)
	for _, m := range p.Metrics {
		if m.Missing {
			fmt.Fprintf(w, "  %s: no value (%s), so it is not scaled down\n", m.Name, orDash(m.Error))
			continue
		}
		fmt.Fprintf(w, "  %s: %s against a target of %s", m.Name, fmtMetric(m.Name, m.Value), fmtMetric(m.Name, m.Target))
		if m.Reported > 0 && m.Name != "query" {
			fmt.Fprintf(w, " (mean of %d replicas)", m.Reported)
		}
		fmt.Fprintln(w)
	}
	for _, win := range p.Windows {
		fmt.Fprintf(w, "  scheduled window active now: %s\n", win)
	}
	if p.Last != nil {
		fmt.Fprintf(w, "Last decision: %s\n", p.Last.Reason)
	}
	if p.LastChange != nil {
		fmt.Fprintf(w, "Last change: %d → %d at %s: %s\n", p.LastChange.Current, p.LastChange.Desired, p.LastChange.At.Local().Format("15:04:05"), p.LastChange.Reason)
	}
}

func printExplanation(w io.Writer, e manager.Explanation) {
	switch {
	case e.Node != "" && (e.State == manager.StateRunning || e.State == manager.StateStarting):
		fmt.Fprintf(w, "%s is %s on %s.\n", e.Container, e.State, e.Node)
		if e.Placement != "" {
			fmt.Fprintf(w, "Placed there because: %s\n", e.Placement)
		}
	case e.State == manager.StatePending:
		fmt.Fprintf(w, "%s is pending: %s\n", e.Container, e.Reason)
		if e.WaitingFor != "" {
			fmt.Fprintf(w, "It waits for instance %s to join.\n", e.WaitingFor)
		}
	default:
		fmt.Fprintf(w, "%s is %s", e.Container, e.State)
		if e.Reason != "" {
			fmt.Fprintf(w, ": %s", e.Reason)
		}
		fmt.Fprintln(w, ".")
	}
	fmt.Fprintf(w, "Placing it now: %s\n", e.Now)
	tw := tabwriter.NewWriter(w, 0, 4, 2, ' ', 0)
	fmt.Fprintln(tw, "WORKER\tTAGS\tFREE\tVERDICT")
	for _, v := range e.Workers {
		name := v.Worker
		if v.Booting {
			name += " (booting)"
		}
		verdict := "fits: " + v.Reason
		if !v.Fits {
			verdict = "rejected by " + v.Filter + ": " + v.Reason
		}
		fmt.Fprintf(tw, "%s\t%s\t%s\t%s\n", name, orDash(strings.Join(v.Tags, ",")), bytesize.Format(v.Free), verdict)
	}
	tw.Flush()
}

// printJSONLine prints v as one line of JSON (for streams).
func printJSONLine(w io.Writer, v any) error {
	return json.NewEncoder(w).Encode(v)
}

// completeContainers completes container and service names from the
// manager (shell completion: `micado completion bash|zsh|fish`).
func completeContainers(g *globals, servicesOnly bool) func(*cobra.Command, []string, string) ([]string, cobra.ShellCompDirective) {
	return func(cmd *cobra.Command, args []string, _ string) ([]string, cobra.ShellCompDirective) {
		if len(args) > 0 {
			return nil, cobra.ShellCompDirectiveNoFileComp
		}
		c, err := newClient(g)
		if err != nil {
			return nil, cobra.ShellCompDirectiveNoFileComp
		}
		var cs []manager.ContainerView
		if err := c.get(cmd.Context(), "/v1/containers", &cs); err != nil {
			return nil, cobra.ShellCompDirectiveNoFileComp
		}
		seen := map[string]bool{}
		var out []string
		for _, x := range cs {
			for _, n := range []string{x.Service, x.Name} {
				if !seen[n] && (n == x.Service || !servicesOnly) {
					seen[n] = true
					out = append(out, n)
				}
			}
		}
		return out, cobra.ShellCompDirectiveNoFileComp
	}
}

// completeApps completes deployed application names.
func completeApps(g *globals) func(*cobra.Command, []string, string) ([]string, cobra.ShellCompDirective) {
	return func(cmd *cobra.Command, args []string, _ string) ([]string, cobra.ShellCompDirective) {
		if len(args) > 0 {
			return nil, cobra.ShellCompDirectiveNoFileComp
		}
		c, err := newClient(g)
		if err != nil {
			return nil, cobra.ShellCompDirectiveNoFileComp
		}
		var apps []manager.AppStatus
		if err := c.get(cmd.Context(), "/v1/apps", &apps); err != nil {
			return nil, cobra.ShellCompDirectiveNoFileComp
		}
		var out []string
		for _, a := range apps {
			out = append(out, a.Name)
		}
		return out, cobra.ShellCompDirectiveNoFileComp
	}
}

// followEvents prints, until ctx ends, the events of the given kinds that
// happen from now on: progress for commands that wait on the manager.
func followEvents(ctx context.Context, c *client, kinds []string, report func(string)) {
	var evs []manager.Event
	if err := c.get(ctx, "/v1/events?limit=1", &evs); err != nil {
		return
	}
	var since uint64
	if len(evs) > 0 {
		since = evs[0].Seq
	}
	start := time.Now()
	for ctx.Err() == nil {
		evs = nil
		if err := c.get(ctx, fmt.Sprintf("/v1/events?since=%d&wait=5s", since), &evs); err != nil {
			select {
			case <-ctx.Done():
			case <-time.After(time.Second):
			}
			continue
		}
		for _, e := range evs {
			since = e.Seq
			if slices.Contains(kinds, e.Kind) {
				report(fmt.Sprintf("%s: %s %s", time.Since(start).Round(time.Second), e.Subject, e.Message))
			}
		}
	}
}
