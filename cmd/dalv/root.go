package main

import (
	"github.com/spf13/cobra"
)

func newRootCmd() *cobra.Command {
	root := &cobra.Command{
		Use:           "dalv",
		Short:         "DalvDB: a sync database for user-owned data",
		SilenceUsage:  true,
		SilenceErrors: true,
		Version:       versionString(),
	}
	root.SetVersionTemplate("{{.Version}}\n")
	root.AddCommand(newServeCmd(), newTokenCmd(), newBenchCmd(),
		newGetCmd(), newListCmd(), newPutCmd(), newEraseCmd(), newWatchCmd(),
		newExportCmd(), newImportCmd(), newRulesCmd(), newVersionCmd())
	return root
}
