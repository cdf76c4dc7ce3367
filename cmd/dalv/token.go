package main

import (
	"errors"
	"fmt"
	"os"
	"time"

	"github.com/spf13/cobra"

	"github.com/dalvdb/dalv/auth"
)

func newTokenCmd() *cobra.Command {
	var (
		user, data string
		ttl        time.Duration
	)
	cmd := &cobra.Command{
		Use:   "token --user USER [--ttl 1h]",
		Short: "Print a development device token signed with DALV_JWT_SECRET",
		Long: `Print a development device token signed with DALV_JWT_SECRET, or, when
that is unset, with the secret a ` + "`dalv serve --dev`" + ` keeps in --data.`,
		Args: cobra.NoArgs,
		RunE: func(cmd *cobra.Command, _ []string) error {
			secret := os.Getenv("DALV_JWT_SECRET")
			if secret == "" {
				var err error
				if secret, err = devJWTSecret(data); err != nil {
					return err
				}
			}
			if user == "" {
				return errors.New("--user is required: the user id the token is for")
			}
			if ttl <= 0 {
				return fmt.Errorf("--ttl %v must be positive", ttl)
			}
			tok, err := auth.Mint([]byte(secret), user, ttl, time.Now())
			if err != nil {
				return fmt.Errorf("DALV_JWT_SECRET: %w", err)
			}
			fmt.Fprintln(cmd.OutOrStdout(), tok)
			return nil
		},
	}
	cmd.Flags().StringVar(&user, "user", "", "user id (the token's sub claim)")
	cmd.Flags().DurationVar(&ttl, "ttl", time.Hour, "how long the token is valid")
	dataFlag(cmd, &data)
	return cmd
}
