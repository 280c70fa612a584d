package main

import (
	"fmt"
	"io"
	"net/url"
	"strconv"
	"strings"
	"text/tabwriter"
	"time"

	"github.com/micado-scale/micado/definitions"
	"github.com/micado-scale/micado/manager"
	"github.com/spf13/cobra"
)

// scalingFlags are the flags that give a service a scaling policy, shared
// by launch and autoscale.
type scalingFlags struct {
	min, max      int
	cpu, memory   string
	query         string
	perReplica    float64
	stabilization string
	schedule      []string
}

func (s *scalingFlags) add(cmd *cobra.Command) {
	f := cmd.Flags()
	f.IntVar(&s.min, "min", 0, "autoscale: the fewest replicas")
	f.IntVar(&s.max, "max", 0, "autoscale: the most replicas")
	f.StringVar(&s.cpu, "cpu", "", "autoscale: target mean CPU per replica, % of one core, up to 100% (e.g. 60%)")
	f.StringVar(&s.memory, "memory-target", "", "autoscale: target mean memory used per replica, % of --memory (e.g. 70%)")
	f.StringVar(&s.query, "query", "", "autoscale: PromQL query read from the manager's --prometheus")
	f.Float64Var(&s.perReplica, "per-replica", 0, "autoscale: the value of --query each replica should carry")
	f.StringVar(&s.stabilization, "stabilization", "", "autoscale: how long load must stay low before replicas go (default 5m)")
	f.StringArrayVar(&s.schedule, "schedule", nil, `autoscale: a window "CRON for DURATION min N [max N]", e.g. "0 8 * * 1-5 for 10h min 4" (repeatable)`)
}

// given reports whether any scaling flag was set.
func (s *scalingFlags) given(cmd *cobra.Command) bool {
	for _, n := range []string{"min", "max", "cpu", "memory-target", "query", "per-replica", "stabilization", "schedule"} {
		if cmd.Flags().Changed(n) {
			return true
		}
	}
	return false
}

// policy builds and checks the policy the flags give.
func (s *scalingFlags) policy() (*definitions.Scaling, error) {
	p := &definitions.Scaling{Min: s.min, Max: s.max, Query: s.query, PerReplica: s.perReplica, Stabilization: s.stabilization}
	var err error
	if s.cpu != "" {
		if p.CPU, err = definitions.ParsePercent(s.cpu); err != nil {
			return nil, userErr("--cpu: %v", err)
		}
		if p.CPU <= 0 {
			return nil, userErr("--cpu %s: the target must be above 0%%", s.cpu)
		}
	}
	if s.memory != "" {
		if p.Memory, err = definitions.ParsePercent(s.memory); err != nil {
			return nil, userErr("--memory-target: %v", err)
		}
		if p.Memory <= 0 {
			return nil, userErr("--memory-target %s: the target must be above 0%%", s.memory)
		}
	}
	for _, w := range s.schedule {
		win, err := parseWindow(w)
		if err != nil {
			return nil, userErr("--schedule %q: %v", w, err)
		}
		p.Schedule = append(p.Schedule, win)
	}
	if probs := p.Problems(); len(probs) > 0 {
		flag := map[string]string{"min": "--min", "max": "--max", "cpu": "--cpu", "memory": "--memory-target", "query": "--query",
			"per_replica": "--per-replica", "stabilization": "--stabilization", "scaling": "the scaling flags"}
		for i, pr := range probs {
			field, msg, _ := strings.Cut(pr, ": ")
			if f, ok := flag[field]; ok {
				probs[i] = f + ": " + msg
			} else if strings.HasPrefix(field, "schedule") {
				probs[i] = "--schedule " + strings.TrimPrefix(field, "schedule") + ": " + msg
			}
		}
		return nil, userErr("%s", strings.Join(probs, "; "))
	}
	return p, nil
}

// parseWindow reads "CRON for DURATION min N [max N]".
func parseWindow(s string) (definitions.Window, error) {
	spec, rest, ok := strings.Cut(s, " for ")
	if !ok {
		return definitions.Window{}, fmt.Errorf(`write it as "CRON for DURATION min N [max N]", e.g. "0 8 * * 1-5 for 10h min 4"`)
	}
	w := definitions.Window{Cron: strings.TrimSpace(spec)}
	fields := strings.Fields(rest)
	if len(fields) == 0 {
		return w, fmt.Errorf("the window's duration is missing after \"for\"")
	}
	w.Duration = fields[0]
	fields = fields[1:]
	if len(fields)%2 != 0 {
		return w, fmt.Errorf("%q: give min N and/or max N", strings.Join(fields, " "))
	}
	for i := 0; i < len(fields); i += 2 {
		n, err := strconv.Atoi(fields[i+1])
		if err != nil {
			return w, fmt.Errorf("%s %q is not a number", fields[i], fields[i+1])
		}
		switch fields[i] {
		case "min":
			w.Min = n
		case "max":
			w.Max = n
		default:
			return w, fmt.Errorf("%q: give min N and/or max N", fields[i])
		}
	}
	return w, nil
}

func scaleCmd(g *globals) *cobra.Command {
	var jsonOut bool
	cmd := &cobra.Command{
		Use:               "scale SERVICE N",
		ValidArgsFunction: completeContainers(g, false),
		Short:             "Set a service's replicas by hand (within its scaling policy's min and max)",
		Example:           "  micado scale demo-web 4",
		Args: func(cmd *cobra.Command, args []string) error {
			if len(args) != 2 {
				return userErr("scale needs a SERVICE and a number of replicas, e.g. `micado scale demo-web 4`")
			}
			if n, err := strconv.Atoi(args[1]); err != nil || n < 1 {
				return userErr("%q is not a number of replicas (1 or more; `micado stop %s` removes the service)", args[1], args[0])
			}
			return nil
		},
		RunE: func(cmd *cobra.Command, args []string) error {
			n, _ := strconv.Atoi(args[1])
			c, err := newClient(g)
			if err != nil {
				return err
			}
			var v manager.PolicyView
			if err := c.do(cmd.Context(), "POST", "/v1/services/"+url.PathEscape(args[0])+"/scale", manager.ScaleRequest{Replicas: n}, &v); err != nil {
				return err
			}
			if jsonOut {
				return printJSON(cmd.OutOrStdout(), v)
			}
			fmt.Fprintf(cmd.OutOrStdout(), "%s: %d replicas asked (%d ready now; follow with `micado ps %s`)\n", args[0], n, v.Ready, args[0])
			if v.Scaling.Max > 0 && !v.Off {
				fmt.Fprintf(cmd.OutOrStdout(), "autoscaling is on: it goes on from %d as the load requires (micado autoscale %s --off stops it)\n", n, args[0])
			}
			return nil
		},
	}
	cmd.Flags().BoolVar(&jsonOut, "json", false, "print JSON")
	return cmd
}

func autoscaleCmd(g *globals) *cobra.Command {
	var (
		sf      scalingFlags
		on, off bool
		jsonOut bool
	)
	cmd := &cobra.Command{
		Use:   "autoscale [SERVICE] [--on|--off] [--min N --max N --cpu 60% ...]",
		Short: "List scaling policies with their metrics and last decisions, turn one on or off, or give a service a policy",
		Long: `Without arguments, autoscale lists every service that has a scaling policy:
its replicas, each metric against its target, and the last decision with its
reason. With a SERVICE it shows that one, --on/--off turn its autoscaling on
or off (the policy stays; decisions are still computed and shown), and the
scaling flags give a launched service a new policy (an application's
services take theirs from the definition file).`,
		Example: `  micado autoscale
  micado autoscale demo-web --off
  micado autoscale demo-web --min 2 --max 10 --cpu 60% --stabilization 3m`,
		Args: func(cmd *cobra.Command, args []string) error {
			if len(args) > 1 {
				return userErr("autoscale takes at most one SERVICE")
			}
			if on && off {
				return userErr("give --on or --off, not both")
			}
			if len(args) == 0 && (on || off || sf.given(cmd)) {
				return userErr("--on, --off and the scaling flags need a SERVICE")
			}
			return nil
		},
		RunE: func(cmd *cobra.Command, args []string) error {
			c, err := newClient(g)
			if err != nil {
				return err
			}
			out := cmd.OutOrStdout()
			if len(args) == 0 {
				var v manager.AutoscaleView
				if err := c.do(cmd.Context(), "GET", "/v1/autoscale", nil, &v); err != nil {
					return err
				}
				if jsonOut {
					return printJSON(out, v)
				}
				printPolicies(out, v)
				return nil
			}
			service := args[0]
			var v manager.PolicyView
			if on || off || sf.given(cmd) {
				ch := manager.AutoscaleChange{}
				if on || off {
					ch.Off = &off
				}
				if sf.given(cmd) {
					if ch.Scaling, err = sf.policy(); err != nil {
						return err
					}
				}
				if err := c.do(cmd.Context(), "PUT", "/v1/autoscale/"+url.PathEscape(service), ch, &v); err != nil {
					return err
				}
			} else if err := c.do(cmd.Context(), "GET", "/v1/autoscale/"+url.PathEscape(service), nil, &v); err != nil {
				return err
			}
			if jsonOut {
				v.Series = nil
				return printJSON(out, v)
			}
			printPolicies(out, manager.AutoscaleView{Policies: []manager.PolicyView{v}})
			return nil
		},
	}
	sf.add(cmd)
	cmd.Flags().BoolVar(&on, "on", false, "turn the service's autoscaling on")
	cmd.Flags().BoolVar(&off, "off", false, "turn the service's autoscaling off (replicas then change only by hand)")
	cmd.Flags().BoolVar(&jsonOut, "json", false, "print JSON")
	return cmd
}

// printPolicies prints policies as a table, then each one's last decision.
func printPolicies(w io.Writer, v manager.AutoscaleView) {
	if len(v.Policies) == 0 {
		fmt.Fprintln(w, "no service has a scaling policy (micado launch … --min 2 --max 10 --cpu 60%, or scaling: in a definition file)")
	} else {
		tw := tabwriter.NewWriter(w, 0, 8, 2, ' ', 0)
		fmt.Fprintln(tw, "SERVICE\tAUTOSCALE\tREPLICAS\tREADY\tMIN\tMAX\tMETRICS\tWINDOWS")
		for _, p := range v.Policies {
			state := "on"
			if p.Off {
				state = "off"
			}
			fmt.Fprintf(tw, "%s\t%s\t%d\t%d\t%d\t%d\t%s\t%s\n", p.Service, state, p.Replicas, p.Ready, p.Scaling.Min, p.Scaling.Max,
				metricsText(p), orDash(strings.Join(p.Windows, ", ")))
		}
		tw.Flush()
		for _, p := range v.Policies {
			if p.Last != nil {
				fmt.Fprintf(w, "%s: %s (%s ago)\n", p.Service, p.Last.Reason, time.Since(p.Last.At).Round(time.Second))
			}
			if p.LastChange != nil && (p.Last == nil || p.LastChange.At != p.Last.At) {
				fmt.Fprintf(w, "%s: last change %d → %d %s ago: %s\n", p.Service, p.LastChange.Current, p.LastChange.Desired,
					time.Since(p.LastChange.At).Round(time.Second), p.LastChange.Reason)
			}
		}
	}
	for _, a := range v.Alerts {
		state := "above its limit"
		if a.Firing {
			state = "ALERT"
		}
		fmt.Fprintf(w, "role=%s %s: %s\n", a.Role, state, a.Reason)
	}
}

// metricsText renders a policy's metrics: "cpu 72.5%/60%".
func metricsText(p manager.PolicyView) string {
	var parts []string
	for _, m := range p.Metrics {
		val := "?"
		if !m.Missing {
			val = fmtMetric(m.Name, m.Value)
		}
		parts = append(parts, fmt.Sprintf("%s %s/%s", m.Name, val, fmtMetric(m.Name, m.Target)))
	}
	if len(parts) == 0 {
		s := p.Scaling
		if s.CPU > 0 {
			parts = append(parts, fmt.Sprintf("cpu ?/%g%%", s.CPU))
		}
		if s.Memory > 0 {
			parts = append(parts, fmt.Sprintf("memory ?/%g%%", s.Memory))
		}
		if s.Query != "" {
			parts = append(parts, fmt.Sprintf("query ?/%g", s.PerReplica))
		}
	}
	return orDash(strings.Join(parts, ", "))
}

func fmtMetric(name string, v float64) string {
	if name == "query" {
		return strconv.FormatFloat(v, 'g', 4, 64)
	}
	return strconv.FormatFloat(v, 'f', 1, 64) + "%"
}
