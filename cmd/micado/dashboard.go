package main

import (
	"cmp"
	"fmt"
	"net/url"
	"os"
	"strings"

	"github.com/micado-scale/micado/manager"
	"github.com/spf13/cobra"
)

func dashboardCmd(g *globals) *cobra.Command {
	var printOnly bool
	cmd := &cobra.Command{
		Use:   "dashboard",
		Short: "Print the URL of the manager's web dashboard, with the API token in its fragment",
		Long: `Dashboard prints the URL of the web page the manager serves at /ui/: workers
grouped by role with their memory (capacity, reserved, used) and containers,
pending requests and why they wait, and the recent events, refreshed every
1.5 s. Open the URL in a browser; micado starts no browser itself.

The API token travels in the URL's fragment (#token=...), which a browser
never sends to the server: the page keeps it in the tab's session storage and
removes it from the address bar. Treat the URL like the token itself.

The cluster is found like every client verb does: MICADO_ADDR and
MICADO_TOKEN if set, otherwise what micado up saved for --cluster.`,
		Example: `  micado dashboard
  chromium "$(micado dashboard --print)"
  micado dashboard --cluster prod`,
		Args: cobra.NoArgs,
		RunE: func(cmd *cobra.Command, _ []string) error {
			c, err := newClient(g)
			if err != nil {
				return err
			}
			u := dashboardURL(c.base, c.token)
			fmt.Fprintln(cmd.OutOrStdout(), u)
			if printOnly {
				return nil
			}
			w := cmd.ErrOrStderr()
			fmt.Fprintln(w, "Open this URL in a browser. It carries the API token after the #: keep it private.")
			if c.token == "" {
				fmt.Fprintln(w, "No API token is known: if the manager requires one, set MICADO_TOKEN.")
			}
			if strings.HasPrefix(c.base, "https://") {
				if ca := cmp.Or(g.caCert, os.Getenv("MICADO_CA_CERT")); ca != "" {
					fmt.Fprintf(w, "The manager serves HTTPS: your browser must trust the CA in %s.\n", ca)
				} else if st, err := loadState(g); err == nil && st.CAFile != "" && os.Getenv("MICADO_ADDR") == "" {
					fmt.Fprintf(w, "The manager serves HTTPS: your browser must trust the CA in %s.\n", st.CAFile)
				}
			}
			return nil
		},
	}
	cmd.Flags().BoolVar(&printOnly, "print", false, "print only the URL (for scripts)")
	return cmd
}

// dashboardURL is the manager's dashboard with the token in the fragment.
func dashboardURL(base, token string) string {
	u := strings.TrimRight(base, "/") + manager.UIPath
	if token != "" {
		u += "#token=" + url.QueryEscape(token)
	}
	return u
}
