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
		key        string
		mint       auth.MintOptions
	)
	cmd := &cobra.Command{
		Use:   "token --user USER [--ttl 1h] [--key FILE [--aud AUD --iss ISS --kid KID]]",
		Short: "Print a development device token signed with DALV_JWT_SECRET, or with a private key (--key)",
		Long: `Print a device token for USER. By default it is an HS256 token signed with
DALV_JWT_SECRET, or, when that is unset, with the secret a ` + "`dalv serve --dev`" + ` keeps
in --data. With --key FILE (a PEM private key: RSA, ECDSA or Ed25519)
it is signed as an identity provider would (RS256, ES256/384/512 by curve,
or EdDSA; --alg picks another, such as PS256), so public-key mode can be
tried locally: serve with --jwt-public-key set to the public half.`,
		Args: cobra.NoArgs,
		RunE: func(cmd *cobra.Command, _ []string) error {
			if key != "" {
				return printKeyToken(cmd, key, user, ttl, mint)
			}
			if mint != (auth.MintOptions{}) {
				return errors.New("--aud, --iss, --kid and --alg need --key: HS256 development tokens carry sub, iat and exp only")
			}
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
	cmd.Flags().StringVar(&key, "key", "", "PEM private key file to sign with instead of DALV_JWT_SECRET")
	cmd.Flags().StringVar(&mint.Alg, "alg", "", "with --key: algorithm (default: RS256, ES256/ES384/ES512 or EdDSA by key)")
	cmd.Flags().StringVar(&mint.Audience, "aud", "", "with --key: the aud claim (serve's --jwt-audience)")
	cmd.Flags().StringVar(&mint.Issuer, "iss", "", "with --key: the iss claim (serve's --jwt-issuer)")
	cmd.Flags().StringVar(&mint.KID, "kid", "", "with --key: the kid header (the key's id in a JWKS)")
	return cmd
}

// printKeyToken prints a token for user signed with the private key in
// path, as an identity provider would sign it.
func printKeyToken(cmd *cobra.Command, path, user string, ttl time.Duration, o auth.MintOptions) error {
	if user == "" {
		return errors.New("--user is required: the user id the token is for")
	}
	if ttl <= 0 {
		return fmt.Errorf("--ttl %v must be positive", ttl)
	}
	data, err := os.ReadFile(path)
	if err != nil {
		return fmt.Errorf("--key: %w", err)
	}
	signer, err := auth.ParsePrivateKeyPEM(data)
	if err != nil {
		return fmt.Errorf("--key %s: %w", path, err)
	}
	o.Subject, o.TTL, o.Now = user, ttl, time.Now()
	tok, err := auth.MintWithKey(signer, o)
	if err != nil {
		return fmt.Errorf("--key %s: %w", path, err)
	}
	fmt.Fprintln(cmd.OutOrStdout(), tok)
	return nil
}
