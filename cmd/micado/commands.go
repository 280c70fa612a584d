package main

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"net/url"
	"sort"
	"strconv"
	"strings"
	"text/tabwriter"
	"time"

	"github.com/micado-scale/micado/definitions"
	"github.com/micado-scale/micado/definitions/bytesize"
	"github.com/micado-scale/micado/internal/wire"
	"github.com/micado-scale/micado/manager"
	"github.com/spf13/cobra"
)

func launchCmd(g *globals) *cobra.Command {
	var (
		req     manager.LaunchRequest
		sf      scalingFlags
		ports   []string
		envs    []string
		health  string
		detach  bool
		wait    time.Duration
		jsonOut bool
	)
	cmd := &cobra.Command{
		Use:   "launch IMAGE --role ROLE",
		Short: "Run containers of an image on workers with a role and enough free memory",
		Long: `Launch runs --replicas containers of IMAGE on workers tagged role=ROLE (and
every --tag) that have enough free memory, publishes each --port on a free
host port, registers every container in Consul with a health check, and
waits until all of them pass (unless --detach).

With --min and --max and a target (--cpu, --memory-target, --query with
--per-replica, or --schedule) the service is scaled by its real load,
unattended: see ` + "`micado autoscale --help`" + `.

The service is named after the image unless --name is given; its containers
are NAME-1, NAME-2, ...`,
		Example: `  micado launch micado/demo-web --role proxy --memory 64MiB --port 8080
  micado launch micado/demo-web --role app --name api --replicas 3 --port 8080 --health-path /health
  micado launch micado/demo-web --role app --env MESSAGE=hi --detach
  micado launch micado/demo-web --role app --port 8080 --min 2 --max 12 --cpu 60% --stabilization 5m`,
		Args: func(cmd *cobra.Command, args []string) error {
			if len(args) != 1 {
				return userErr("launch needs exactly one IMAGE, e.g. `micado launch micado/demo-web --role proxy`")
			}
			return nil
		},
		RunE: func(cmd *cobra.Command, args []string) error {
			req.Image = args[0]
			if sf.given(cmd) {
				var err error
				if req.Scaling, err = sf.policy(); err != nil {
					return err
				}
				if !cmd.Flags().Changed("replicas") {
					req.Replicas = req.Scaling.Min
				}
			}
			req.Ports = ports
			if len(envs) > 0 {
				req.Env = map[string]string{}
				for _, e := range envs {
					k, v, ok := strings.Cut(e, "=")
					if !ok || k == "" {
						return userErr("--env %q is not KEY=VALUE", e)
					}
					req.Env[k] = v
				}
			}
			if health != "" {
				req.Check = &manager.Check{Type: "http", Path: health}
			}
			// A launch is an application of one service: the same rules
			// and messages as a definition file, named after the flags.
			if err := checkLaunch(req); err != nil {
				return err
			}
			c, err := newClient(g)
			if err != nil {
				return err
			}
			var resp manager.LaunchResponse
			if err := c.do(cmd.Context(), "POST", "/v1/containers", req, &resp); err != nil {
				return err
			}
			out := cmd.OutOrStdout()
			if !jsonOut {
				for _, d := range resp.Decisions {
					fmt.Fprintln(out, d.Reason)
				}
			}
			if detach {
				if jsonOut {
					return printJSON(out, resp.Containers)
				}
				fmt.Fprintf(out, "launched %s (%d containers); follow with `micado ps`\n", resp.Service, len(resp.Containers))
				return nil
			}
			ctx, cancel := context.WithTimeout(cmd.Context(), wait)
			defer cancel()
			cs, err := waitPassing(ctx, c, resp.Service, len(resp.Containers), progress(cmd, jsonOut))
			if err != nil {
				return err
			}
			if jsonOut {
				return printJSON(out, cs)
			}
			fmt.Fprintf(out, "%s is running: %d of %d containers passing\n", resp.Service, len(cs), len(resp.Containers))
			printContainers(out, cs)
			return nil
		},
	}
	f := cmd.Flags()
	f.StringVar(&req.Role, "role", "", "role of the workers to run on (required)")
	f.StringArrayVar(&req.Tags, "tag", nil, "further worker tag key=value required (repeatable)")
	f.StringVar(&req.Memory, "memory", "", "memory request and limit per container, e.g. 64MiB (default 128MiB)")
	f.StringArrayVarP(&ports, "port", "p", nil, "container port to publish, e.g. 8080 or 53/udp (repeatable)")
	f.StringVar(&req.Name, "name", "", "service name (default: from the image)")
	f.StringArrayVarP(&envs, "env", "e", nil, "environment variable KEY=VALUE (repeatable)")
	f.IntVar(&req.Replicas, "replicas", 1, "number of containers")
	f.BoolVar(&req.Pinned, "pinned", false, "never move these containers to scale in (their worker then stays)")
	f.StringVar(&health, "health-path", "", "HTTP path Consul checks (default: a TCP check of the first port)")
	f.BoolVarP(&detach, "detach", "d", false, "return once the request is accepted")
	f.DurationVar(&wait, "wait", 3*time.Minute, "how long to wait for the containers to pass")
	f.BoolVar(&jsonOut, "json", false, "print the containers as JSON")
	sf.add(cmd)
	f.SortFlags = false
	return cmd
}

// checkLaunch checks a launch as the manager will (definitions.ParseLaunch)
// and names the flags in its problems.
func checkLaunch(req manager.LaunchRequest) error {
	l, err := req.Launch() // the CLI only sets an http check
	if err != nil {
		return userErr("%v", err)
	}
	_, err = definitions.ParseLaunch(l)
	var probs definitions.Problems
	if !errors.As(err, &probs) {
		return err
	}
	msgs := make([]string, len(probs))
	for i, p := range probs {
		msgs[i] = launchFlag(p.Path) + ": " + p.Msg
	}
	return userErr("%s", strings.Join(msgs, "; "))
}

// launchFlag names the flag of a launch field path.
func launchFlag(path string) string {
	// name drops an index: "ports[1]" → "ports".
	name := func(s string) string {
		if i := strings.IndexByte(s, '['); i >= 0 {
			return s[:i]
		}
		return s
	}
	field, rest, _ := strings.Cut(path, ".")
	field = name(field)
	switch field {
	case "image":
		return "IMAGE"
	case "tags":
		return "--tag"
	case "ports":
		return "--port"
	case "env":
		return "--env"
	case "check":
		return "--health-path"
	case "scaling":
		sub, _, _ := strings.Cut(rest, ".")
		switch name(sub) {
		case "memory":
			return "--memory-target"
		case "per_replica":
			return "--per-replica"
		case "":
			return "the scaling flags"
		}
		return "--" + sub
	}
	return "--" + field
}

func progress(cmd *cobra.Command, quiet bool) func(string) {
	if quiet {
		return func(string) {}
	}
	return func(s string) { fmt.Fprintln(cmd.ErrOrStderr(), s) }
}

// waitPassing polls until want containers of service run and pass their
// Consul checks, reporting each change of state.
func waitPassing(ctx context.Context, c *client, service string, want int, report func(string)) ([]manager.ContainerView, error) {
	start := time.Now()
	last := map[string]string{}
	lastAt := map[string]time.Time{}
	for {
		var cs []manager.ContainerView
		err := c.get(ctx, "/v1/containers/"+url.PathEscape(service), &cs)
		if err != nil {
			if ctx.Err() != nil {
				return nil, userErr("gave up waiting for %s after %s", service, time.Since(start).Round(time.Second))
			}
			return nil, err
		}
		passing := 0
		for _, x := range cs {
			st := string(x.State)
			if x.State == manager.StateRunning {
				st += "/" + orDash(x.Health)
			}
			if x.Reason != "" && x.State != manager.StateRunning {
				st += ": " + x.Reason
			}
			// Report each change, and while held, how long it has waited.
			if last[x.Name] != st || (x.State == manager.StatePending && time.Since(lastAt[x.Name]) >= 2*time.Second) {
				report(fmt.Sprintf("%-20s %s: %s", x.Name, st, time.Since(start).Round(time.Second)))
				last[x.Name], lastAt[x.Name] = st, time.Now()
			}
			if x.State == manager.StateFailed {
				return nil, userErr("%s failed: %s", x.Name, x.Reason)
			}
			if x.State == manager.StateRunning && x.Health == "passing" {
				passing++
			}
		}
		if passing >= want {
			return cs, nil
		}
		select {
		case <-ctx.Done():
			return nil, userErr("gave up after %s: %d of %d containers of %s pass (see `micado ps`)", time.Since(start).Round(time.Second), passing, want, service)
		case <-time.After(250 * time.Millisecond):
		}
	}
}

func orDash(s string) string {
	if s == "" {
		return "-"
	}
	return s
}

func psCmd(g *globals) *cobra.Command {
	var jsonOut bool
	cmd := &cobra.Command{
		Use:               "ps [SERVICE]",
		ValidArgsFunction: completeContainers(g, true),
		Short:             "List containers: where they run, their state and Consul health",
		Example:           "  micado ps\n  micado ps demo-web --json",
		Args:              cobra.MaximumNArgs(1),
		RunE: func(cmd *cobra.Command, args []string) error {
			c, err := newClient(g)
			if err != nil {
				return err
			}
			path := "/v1/containers"
			if len(args) == 1 {
				path += "/" + url.PathEscape(args[0])
			}
			var cs []manager.ContainerView
			if err := c.get(cmd.Context(), path, &cs); err != nil {
				return err
			}
			if jsonOut {
				return printJSON(cmd.OutOrStdout(), cs)
			}
			printContainers(cmd.OutOrStdout(), cs)
			return nil
		},
	}
	cmd.Flags().BoolVar(&jsonOut, "json", false, "print JSON")
	return cmd
}

func printContainers(w io.Writer, cs []manager.ContainerView) {
	tw := tabwriter.NewWriter(w, 0, 4, 2, ' ', 0)
	fmt.Fprintln(tw, "NAME\tSERVICE\tIMAGE\tNODE\tSTATE\tHEALTH\tADDRESS\tMEMORY\tREASON")
	for _, c := range cs {
		addr := "-"
		if c.HostPort() > 0 {
			addr = fmt.Sprintf("%s:%d", c.Address, c.HostPort())
		}
		reason := "-"
		if c.State != manager.StateRunning && c.Reason != "" {
			reason = c.Reason
		}
		fmt.Fprintf(tw, "%s\t%s\t%s\t%s\t%s\t%s\t%s\t%s\t%s\n", c.Name, c.Service, c.Image, orDash(c.Node), c.State,
			orDash(c.Health), addr, bytesize.Format(c.Memory), reason)
	}
	tw.Flush()
}

func nodesCmd(g *globals) *cobra.Command {
	var jsonOut bool
	cmd := &cobra.Command{
		Use:     "nodes",
		Short:   "List worker nodes with their tags, memory and load",
		Example: "  micado nodes\n  micado nodes --json",
		Args:    cobra.NoArgs,
		RunE: func(cmd *cobra.Command, _ []string) error {
			c, err := newClient(g)
			if err != nil {
				return err
			}
			var ns []manager.MemberView
			if err := c.get(cmd.Context(), "/v1/nodes", &ns); err != nil {
				return err
			}
			if jsonOut {
				return printJSON(cmd.OutOrStdout(), ns)
			}
			sort.SliceStable(ns, func(i, j int) bool { return ns[i].Name < ns[j].Name })
			age := func(t time.Time) string {
				if t.IsZero() {
					return "-"
				}
				return time.Since(t).Round(time.Second).String()
			}
			tw := tabwriter.NewWriter(cmd.OutOrStdout(), 0, 4, 2, ' ', 0)
			fmt.Fprintln(tw, "NAME\tSTATUS\tTAGS\tCAPACITY\tRESERVED\tFREE\tUSED\tCPU\tCONTAINERS\tAGE")
			var managers []manager.MemberView
			for _, n := range ns {
				if n.Kind == wire.KindManager {
					managers = append(managers, n)
					continue
				}
				fmt.Fprintf(tw, "%s\t%s\t%s\t%s\t%s\t%s\t%s\t%.2f\t%d\t%s\n", n.Name, n.Status, strings.Join(n.Tags, ","),
					bytesize.Format(n.Capacity), bytesize.Format(n.Reserved), bytesize.Format(n.Free),
					bytesize.Format(n.Used), n.CPU, n.Containers, age(n.Started))
			}
			if err := tw.Flush(); err != nil {
				return err
			}
			if len(managers) == 0 {
				return nil
			}
			fmt.Fprintln(cmd.OutOrStdout())
			tw = tabwriter.NewWriter(cmd.OutOrStdout(), 0, 4, 2, ' ', 0)
			fmt.Fprintln(tw, "MANAGER\tSTATUS\tROLE\tLEADS SINCE\tTERM\tAGE")
			for _, n := range managers {
				role, since, term := "standby", "-", "-"
				if n.Leader {
					role = "leader"
					since = n.LeaderSince.Local().Format("15:04:05") + " (" + age(n.LeaderSince) + ")"
					term = strconv.FormatUint(n.Term, 10)
				}
				fmt.Fprintf(tw, "%s\t%s\t%s\t%s\t%s\t%s\n", n.Name, n.Status, role, since, term, age(n.Started))
			}
			return tw.Flush()
		},
	}
	cmd.Flags().BoolVar(&jsonOut, "json", false, "print JSON")
	return cmd
}

func stopCmd(g *globals) *cobra.Command {
	return &cobra.Command{
		Use:               "stop NAME",
		ValidArgsFunction: completeContainers(g, false),
		Short:             "Stop a container, or every container of a service, and remove its registration",
		Example:           "  micado stop demo-web      # the whole service\n  micado stop demo-web-2    # one container",
		Args: func(cmd *cobra.Command, args []string) error {
			if len(args) != 1 {
				return userErr("stop needs exactly one NAME (a container or a service; see `micado ps`)")
			}
			return nil
		},
		RunE: func(cmd *cobra.Command, args []string) error {
			c, err := newClient(g)
			if err != nil {
				return err
			}
			var out map[string][]string
			if err := c.do(cmd.Context(), "DELETE", "/v1/containers/"+url.PathEscape(args[0]), nil, &out); err != nil {
				return err
			}
			for _, n := range out["stopped"] {
				fmt.Fprintf(cmd.OutOrStdout(), "stopped %s\n", n)
			}
			return nil
		},
	}
}

func printJSON(w io.Writer, v any) error {
	enc := json.NewEncoder(w)
	enc.SetIndent("", "  ")
	return enc.Encode(v)
}
