package main

import (
	"context"
	"fmt"
	"io"
	"net/http"
	"net/url"
	"path/filepath"
	"strings"
	"text/tabwriter"
	"time"

	"github.com/micado-scale/micado/manager"
	"github.com/spf13/cobra"
)

func validateCmd() *cobra.Command {
	return &cobra.Command{
		Use:   "validate FILE",
		Short: "Check an application definition file and report every problem with its line",
		Long: `Validate checks a definition file, in micado's format or a Compose file (a top
level with services but no application), and reports every problem with its
line. For a Compose file it also warns, on stderr, of what micado ignores.`,
		Example: "  micado validate definitions/webshop.yaml\n  micado validate definitions/webshop.compose.yaml",
		Args: func(cmd *cobra.Command, args []string) error {
			if len(args) != 1 {
				return userErr("validate needs exactly one FILE")
			}
			return nil
		},
		RunE: func(cmd *cobra.Command, args []string) error {
			app, _, _, err := loadDefinition(args[0], cmd.ErrOrStderr())
			if err != nil {
				if _, ok := err.(*exitError); ok {
					return err
				}
				return userErr("%s is not valid:\n%v", args[0], err)
			}
			levels, _ := app.Levels()
			var order []string
			for _, l := range levels {
				order = append(order, strings.Join(l, ", "))
			}
			fmt.Fprintf(cmd.OutOrStdout(), "%s is valid: application %s, %d services, start order: %s\n",
				args[0], app.Name, len(app.Services), strings.Join(order, " → "))
			return nil
		},
	}
}

func deployCmd(g *globals) *cobra.Command {
	var (
		detach  bool
		wait    time.Duration
		jsonOut bool
	)
	cmd := &cobra.Command{
		Use:   "deploy FILE",
		Short: "Deploy an application definition, or apply the changes to it",
		Long: `Deploy starts an application's services in dependency order: a service starts
only after everything it depends on runs and passes its Consul checks. Deploying
a changed file applies only the difference: replica counts up or down, and a
new image or setting replaces that service's containers one at a time, make
before break. A file with errors changes nothing.

FILE may be a Compose file (a top level with services but no application):
micado deploys what it can honour of it and refuses the rest (see micado
convert, which shows the definition the manager gets).`,
		Example: "  micado deploy definitions/webshop.yaml\n  micado deploy definitions/webshop.yaml --detach",
		Args: func(cmd *cobra.Command, args []string) error {
			if len(args) != 1 {
				return userErr("deploy needs exactly one FILE")
			}
			return nil
		},
		RunE: func(cmd *cobra.Command, args []string) error {
			app, data, _, err := loadDefinition(args[0], cmd.ErrOrStderr())
			if err != nil {
				if _, ok := err.(*exitError); ok {
					return err
				}
				return userErr("%s is not valid, nothing was changed:\n%v", args[0], err)
			}
			c, err := newClient(g)
			if err != nil {
				return err
			}
			var st manager.AppStatus
			if err := c.do(cmd.Context(), http.MethodPost, "/v1/apps", manager.DeployRequest{File: filepath.Base(args[0]), Definition: string(data)}, &st); err != nil {
				return err
			}
			if detach {
				if jsonOut {
					return printJSON(cmd.OutOrStdout(), st)
				}
				fmt.Fprintf(cmd.OutOrStdout(), "deploying %s; follow with `micado status %s`\n", app.Name, app.Name)
				return nil
			}
			ctx, cancel := context.WithTimeout(cmd.Context(), wait)
			defer cancel()
			start := time.Now()
			last := ""
			for {
				// Each poll decodes into a fresh value: fields the manager
				// omits when empty (a service's reasons once it runs) must not
				// keep an earlier poll's values.
				var cur manager.AppStatus
				err := c.get(ctx, "/v1/apps/"+url.PathEscape(app.Name), &cur)
				if err != nil && ctx.Err() == nil {
					return err
				}
				if err == nil {
					st = cur
				}
				line := summary(st)
				if line != last && !jsonOut {
					fmt.Fprintf(cmd.ErrOrStderr(), "%s: %s\n", time.Since(start).Round(time.Second), line)
					last = line
				}
				if st.State == manager.AppDeployed || st.State == manager.AppFailed || ctx.Err() != nil {
					break
				}
				time.Sleep(500 * time.Millisecond)
			}
			if jsonOut {
				_ = printJSON(cmd.OutOrStdout(), st)
			} else {
				printAppStatus(cmd.OutOrStdout(), st)
			}
			switch st.State {
			case manager.AppDeployed:
				return nil
			case manager.AppFailed:
				return userErr("deploy of %s failed: %s", app.Name, st.Error)
			}
			return userErr("gave up waiting after %s; the deploy goes on (see `micado status %s`)", wait, app.Name)
		},
	}
	cmd.Flags().BoolVarP(&detach, "detach", "d", false, "return once the definition is accepted")
	cmd.Flags().DurationVar(&wait, "wait", 15*time.Minute, "how long to wait for the application to run")
	cmd.Flags().BoolVar(&jsonOut, "json", false, "print the final status as JSON")
	return cmd
}

func summary(st manager.AppStatus) string {
	var parts []string
	for _, s := range st.Services {
		parts = append(parts, fmt.Sprintf("%s %d/%d", s.Name, s.Passing, s.Desired))
	}
	return string(st.State) + " (" + strings.Join(parts, ", ") + ")"
}

func printAppStatus(w io.Writer, st manager.AppStatus) {
	fmt.Fprintf(w, "application %s (%s): %s\n", st.Name, st.File, st.State)
	if st.Error != "" {
		fmt.Fprintf(w, "  error: %s\n", st.Error)
	}
	tw := tabwriter.NewWriter(w, 0, 4, 2, ' ', 0)
	fmt.Fprintln(tw, "SERVICE\tCONSUL NAME\tLEVEL\tSTATE\tPASSING\tREASON")
	for _, s := range st.Services {
		reason := "-"
		if len(s.Reasons) > 0 {
			reason = strings.Join(s.Reasons, "; ")
		}
		fmt.Fprintf(tw, "%s\t%s\t%d\t%s\t%d/%d\t%s\n", s.Name, s.Service, s.Level, s.State, s.Passing, s.Desired, reason)
	}
	tw.Flush()
}

func appsCmd(g *globals) *cobra.Command {
	var jsonOut bool
	cmd := &cobra.Command{
		Use:     "apps",
		Example: "  micado apps\n  micado apps --json",
		Short:   "List deployed applications",
		Args:    cobra.NoArgs,
		RunE: func(cmd *cobra.Command, _ []string) error {
			c, err := newClient(g)
			if err != nil {
				return err
			}
			var as []manager.AppStatus
			if err := c.get(cmd.Context(), "/v1/apps", &as); err != nil {
				return err
			}
			if jsonOut {
				return printJSON(cmd.OutOrStdout(), as)
			}
			tw := tabwriter.NewWriter(cmd.OutOrStdout(), 0, 4, 2, ' ', 0)
			fmt.Fprintln(tw, "APPLICATION\tFILE\tSTATE\tSERVICES")
			for _, a := range as {
				fmt.Fprintf(tw, "%s\t%s\t%s\t%s\n", a.Name, a.File, a.State, strings.TrimPrefix(summary(a), string(a.State)+" "))
			}
			return tw.Flush()
		},
	}
	cmd.Flags().BoolVar(&jsonOut, "json", false, "print JSON")
	return cmd
}

func statusCmd(g *globals) *cobra.Command {
	var jsonOut bool
	cmd := &cobra.Command{
		Use:               "status APP",
		Example:           "  micado status webshop\n  micado status webshop --json",
		ValidArgsFunction: completeApps(g),
		Short:             "Show an application's services: running, pending and why",
		Args: func(cmd *cobra.Command, args []string) error {
			if len(args) != 1 {
				return userErr("status needs exactly one APP (see `micado apps`)")
			}
			return nil
		},
		RunE: func(cmd *cobra.Command, args []string) error {
			c, err := newClient(g)
			if err != nil {
				return err
			}
			var st manager.AppStatus
			if err := c.get(cmd.Context(), "/v1/apps/"+url.PathEscape(args[0]), &st); err != nil {
				return err
			}
			if jsonOut {
				return printJSON(cmd.OutOrStdout(), st)
			}
			printAppStatus(cmd.OutOrStdout(), st)
			return nil
		},
	}
	cmd.Flags().BoolVar(&jsonOut, "json", false, "print JSON")
	return cmd
}

func undeployCmd(g *globals) *cobra.Command {
	return &cobra.Command{
		Use:               "undeploy APP",
		Example:           "  micado undeploy webshop",
		ValidArgsFunction: completeApps(g),
		Short:             "Stop every container of an application and forget it",
		Args: func(cmd *cobra.Command, args []string) error {
			if len(args) != 1 {
				return userErr("undeploy needs exactly one APP (see `micado apps`)")
			}
			return nil
		},
		RunE: func(cmd *cobra.Command, args []string) error {
			c, err := newClient(g)
			if err != nil {
				return err
			}
			c.http.Timeout = 10 * time.Minute
			if err := c.do(cmd.Context(), http.MethodDelete, "/v1/apps/"+url.PathEscape(args[0]), nil, nil); err != nil {
				return err
			}
			fmt.Fprintf(cmd.OutOrStdout(), "undeployed %s\n", args[0])
			return nil
		},
	}
}
