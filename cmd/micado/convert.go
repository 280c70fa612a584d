package main

import (
	"fmt"
	"io"
	"os"
	"path/filepath"

	"github.com/micado-scale/micado/definitions"
	"github.com/spf13/cobra"
)

// loadDefinition reads a definition file in either format. A Compose file
// (a top level with services but no application) is interpolated with the
// environment over a .env file next to it, as docker compose does, and its
// warnings go to warn. It returns the application and the text to send to
// the manager: the file itself, or for a Compose file the application in
// micado's format, so that the manager keeps one format.
func loadDefinition(path string, warn io.Writer) (*definitions.App, []byte, bool, error) {
	data, err := os.ReadFile(path)
	if err != nil {
		return nil, nil, false, userErr("cannot read %s: %v", path, rootCause(err))
	}
	if !definitions.IsCompose(data) {
		app, err := definitions.Parse(path, data)
		return app, data, false, err
	}
	env, err := definitions.ComposeEnv(path)
	if err != nil {
		return nil, nil, true, userErr("%v", err)
	}
	app, warns, err := definitions.ParseCompose(path, data, env)
	for _, w := range warns {
		fmt.Fprintf(warn, "warning: %s\n", w)
	}
	if err != nil {
		return nil, nil, true, err
	}
	return app, definitions.Marshal(app), true, nil
}

func convertCmd() *cobra.Command {
	var to string
	cmd := &cobra.Command{
		Use:   "convert FILE",
		Short: "Print a Compose file as a micado definition, or a micado definition as a Compose file",
		Long: `Convert reads a definition file and prints it in the other format: a Compose
file (a top level with services but no application) as micado's definition
format, a micado definition as a Compose file with the x-micado extension.
--to picks the format printed. What micado cannot honour of a Compose file is
refused, each problem with its line; what it ignores is warned of on stderr.`,
		Example: "  micado convert compose.yaml > app.yaml\n  micado convert definitions/webshop.yaml --to compose",
		Args: func(cmd *cobra.Command, args []string) error {
			if len(args) != 1 {
				return userErr("convert needs exactly one FILE")
			}
			return nil
		},
		RunE: func(cmd *cobra.Command, args []string) error {
			app, _, compose, err := loadDefinition(args[0], cmd.ErrOrStderr())
			if err != nil {
				if _, ok := err.(*exitError); ok {
					return err
				}
				return userErr("%s is not valid:\n%v", args[0], err)
			}
			switch to {
			case "":
				if compose {
					to = "micado"
				} else {
					to = "compose"
				}
			case "micado", "compose":
			default:
				return userErr("--to %s: use micado or compose", to)
			}
			out := definitions.Marshal(app)
			if to == "compose" {
				out = definitions.MarshalCompose(app)
			}
			fmt.Fprintf(cmd.OutOrStdout(), "# %s converted by micado convert\n", filepath.Base(args[0]))
			_, err = cmd.OutOrStdout().Write(out)
			return err
		},
	}
	cmd.Flags().StringVar(&to, "to", "", "the format to print: micado or compose (default: the other one)")
	return cmd
}
