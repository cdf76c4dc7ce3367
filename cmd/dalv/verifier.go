package main

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"os"

	"github.com/spf13/pflag"

	"github.com/dalvdb/dalv/auth"
)

// tokenFlags say which device tokens serve accepts.
type tokenFlags struct {
	publicKeys   []string
	jwksURLs     []string
	jwksOptional bool
	audience     string
	issuer       string
	noAudience   bool
	userClaim    string
}

func (t *tokenFlags) register(fl *pflag.FlagSet) {
	fl.StringArrayVar(&t.publicKeys, "jwt-public-key", nil, "PEM file of a public key or certificate that signs device tokens (RS*, PS*, ES*, EdDSA); repeatable")
	fl.StringArrayVar(&t.jwksURLs, "jwks-url", nil, "URL of a JWKS (an identity provider's published keys) that signs device tokens; repeatable")
	fl.BoolVar(&t.jwksOptional, "jwks-optional", false, "start even when no JWKS can be read; keys are fetched again in the background")
	fl.StringVar(&t.audience, "jwt-audience", "", "aud a device token must carry (required with public keys)")
	fl.StringVar(&t.issuer, "jwt-issuer", "", "iss a device token must carry (required with public keys)")
	fl.BoolVar(&t.noAudience, "jwt-no-audience", false, "accept public-key tokens without checking aud and iss")
	fl.StringVar(&t.userClaim, "user-claim", auth.DefaultUserClaim, "claim that holds the user id")
}

// publicKeys reports whether public-key tokens are configured; then the
// HS256 secret is optional.
func (t *tokenFlags) publicKeysOn() bool {
	return len(t.publicKeys) > 0 || len(t.jwksURLs) > 0
}

// deviceVerifier builds the verifier of device tokens: HS256 when secret is
// set, public keys when configured, both routed by the token's alg, behind
// a cache. Background JWKS refreshes end with ctx.
func deviceVerifier(ctx context.Context, t tokenFlags, secret string, log *slog.Logger) (auth.Verifier, error) {
	if t.userClaim == "" {
		return nil, errors.New("--user-claim is empty: name the claim that holds the user id (sub by default)")
	}
	var hs, pk auth.Verifier
	if secret != "" {
		v, err := auth.NewHS256([]byte(secret), auth.HS256Options{Audience: t.audience, Issuer: t.issuer, UserClaim: t.userClaim})
		if err != nil {
			return nil, fmt.Errorf("DALV_JWT_SECRET: %w", err)
		}
		hs = v
	}
	if t.publicKeysOn() {
		opts := auth.PublicKeyOptions{
			JWKSURLs: t.jwksURLs, JWKSOptional: t.jwksOptional,
			Audience: t.audience, Issuer: t.issuer, NoAudience: t.noAudience,
			UserClaim: t.userClaim, Logger: log,
		}
		for _, path := range t.publicKeys {
			data, err := os.ReadFile(path)
			if err != nil {
				return nil, fmt.Errorf("--jwt-public-key: %w", err)
			}
			opts.PEM = append(opts.PEM, auth.PEMFile{Name: path, Data: data})
		}
		v, err := auth.NewPublicKey(ctx, opts)
		if err != nil {
			return nil, fmt.Errorf("public-key tokens: %w", err)
		}
		pk = v
	} else if t.jwksOptional || t.noAudience {
		return nil, errors.New("--jwks-optional and --jwt-no-audience apply to public-key tokens: add --jwt-public-key or --jwks-url")
	}
	// A device sends its token with every request: check each token once.
	return auth.Cached(auth.ByAlgorithm(hs, pk), 0, nil), nil
}
