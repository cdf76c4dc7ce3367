package main

import (
	"fmt"
	"runtime/debug"

	"github.com/spf13/cobra"
)

// versionString says which build this binary is: the module version
// ("(devel)" when built from a checkout), the VCS commit it was built from
// and whether the tree had changes, and the Go version. Builds without VCS
// information (go build -buildvcs=false, as CI does) say so.
func versionString() string {
	bi, ok := debug.ReadBuildInfo()
	if !ok {
		return "dalv (unknown version: the binary has no build information)"
	}
	version := bi.Main.Version
	if version == "" {
		version = "(devel)"
	}
	var rev, modified, when string
	for _, s := range bi.Settings {
		switch s.Key {
		case "vcs.revision":
			rev = s.Value
		case "vcs.modified":
			modified = s.Value
		case "vcs.time":
			when = s.Value
		}
	}
	commit := "commit unknown (built without VCS information)"
	if rev != "" {
		commit = "commit " + rev
		if when != "" {
			commit += " of " + when
		}
		if modified == "true" {
			commit += ", with uncommitted changes"
		}
	}
	return fmt.Sprintf("dalv %s, %s, %s", version, commit, bi.GoVersion)
}

func newVersionCmd() *cobra.Command {
	return &cobra.Command{
		Use:   "version",
		Short: "Print the version and the commit this binary was built from",
		Args:  cobra.NoArgs,
		RunE: func(cmd *cobra.Command, _ []string) error {
			_, err := fmt.Fprintln(cmd.OutOrStdout(), versionString())
			return err
		},
	}
}
