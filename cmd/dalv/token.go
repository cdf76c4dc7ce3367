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
		user string
		ttl  time.Duration
	)
	cmd := &cobra.Command{
		Use:   "token --user USER [--ttl 1h]",
		Short: "Print a development device token signed with DALV_JWT_SECRET",
		Args:  cobra.NoArgs,
		RunE: func(cmd *cobra.Command, _ []string) error {
			secret := os.Getenv("DALV_JWT_SECRET")
			if secret == "" {
				return errors.New("DALV_JWT_SECRET is not set: export the secret the server uses (dalv serve --dev prints one)")
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
	return cmd
}
