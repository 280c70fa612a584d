// Command micado is one binary for micado's daemons (manager, worker) and
// its client verbs (up, down, launch, ps, nodes, stop, version), like
// consul and nomad.
package main

import (
	"errors"
	"fmt"
	"os"
	"strings"

	"github.com/spf13/cobra"
)

// version is set at build time with -ldflags "-X main.version=...".
var version = "dev"

// exitError carries a message already phrased for the user.
type exitError struct{ msg string }

func (e *exitError) Error() string { return e.msg }

func userErr(format string, a ...any) error { return &exitError{fmt.Sprintf(format, a...)} }

func main() {
	root := newRoot()
	if err := root.Execute(); err != nil {
		msg := err.Error()
		var ee *exitError
		if !errors.As(err, &ee) {
			msg = strings.TrimSpace(msg)
		}
		fmt.Fprintln(os.Stderr, "micado: "+msg)
		os.Exit(1)
	}
}

type globals struct {
	cluster string
	home    string
	caCert  string // CA that verifies an https manager
}

func newRoot() *cobra.Command {
	g := &globals{}
	root := &cobra.Command{
		Use:   "micado",
		Short: "micado places containers on cloud instances by role and free memory, and scales them",
		Long: `micado is an autoscaling orchestrator for containers on cloud instances.

A manager places containers on worker instances by their tags (roles such as
proxy, app, db) and their free memory, and registers every running container
in Consul so services find each other.`,
		Example: `  micado up                       # a local cluster: Consul, a manager, two workers
  micado launch micado/demo-web --role proxy --memory 64MiB --port 8080
  micado ps
  micado nodes
  micado stop demo-web
  micado down`,
		SilenceUsage:  true,
		SilenceErrors: true,
	}
	root.PersistentFlags().StringVar(&g.cluster, "cluster", envOr("MICADO_CLUSTER", "micado"), "cluster name (env MICADO_CLUSTER)")
	root.PersistentFlags().StringVar(&g.home, "home", envOr("MICADO_HOME", defaultHome()), "`DIR` where micado up keeps cluster state (env MICADO_HOME)")
	root.PersistentFlags().StringVar(&g.caCert, "ca-cert", os.Getenv("MICADO_CA_CERT"), "PEM `FILE` of the CA that signed the manager's TLS certificate (env MICADO_CA_CERT; default: what micado up saved, else the system's roots)")
	root.AddCommand(
		upCmd(g), downCmd(g), launchCmd(g), psCmd(g), nodesCmd(g), stopCmd(g), consolidateCmd(g),
		deployCmd(g), appsCmd(g), statusCmd(g), undeployCmd(g), validateCmd(), convertCmd(), versionCmd(g),
		eventsCmd(g), explainCmd(g), dashboardCmd(g), scaleCmd(g), autoscaleCmd(g),
		managerCmd(), workerCmd(),
	)
	root.SetFlagErrorFunc(func(c *cobra.Command, err error) error {
		return userErr("%v (see `%s --help`)", err, c.CommandPath())
	})
	return root
}

func envOr(k, def string) string {
	if v := os.Getenv(k); v != "" {
		return v
	}
	return def
}

func defaultHome() string {
	h, err := os.UserHomeDir()
	if err != nil {
		return ".micado"
	}
	return h + "/.micado"
}

func versionCmd(g *globals) *cobra.Command {
	return &cobra.Command{
		Use:     "version",
		Example: "  micado version",
		Short:   "Print the micado version (and the manager's, if reachable)",
		Args:    cobra.NoArgs,
		RunE: func(cmd *cobra.Command, _ []string) error {
			fmt.Fprintf(cmd.OutOrStdout(), "micado %s\n", version)
			if c, err := newClient(g); err == nil {
				var st struct {
					Version string `json:"version"`
					Cluster string `json:"cluster"`
				}
				if c.get(cmd.Context(), "/v1/status", &st) == nil {
					fmt.Fprintf(cmd.OutOrStdout(), "manager %s (cluster %s at %s)\n", st.Version, st.Cluster, c.base)
				}
			}
			return nil
		},
	}
}
