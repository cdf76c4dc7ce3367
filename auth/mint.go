package auth

import (
	"crypto"
	"crypto/ecdsa"
	"crypto/ed25519"
	"crypto/elliptic"
	"crypto/rsa"
	"crypto/x509"
	"encoding/pem"
	"errors"
	"fmt"
	"time"

	"github.com/golang-jwt/jwt/v5"

	"github.com/dalvdb/dalv/value"
)

// MintOptions describes a token for [MintWithKey].
type MintOptions struct {
	// Subject is the user id, put in UserClaim (default sub).
	Subject   string
	UserClaim string
	// Audience and Issuer, when set, become aud and iss.
	Audience, Issuer string
	// KID, when set, is the header's kid.
	KID string
	// Alg is the algorithm; empty picks the key's usual one (RS256,
	// ES256/ES384/ES512 by curve, EdDSA).
	Alg string
	// TTL is how long the token is valid; Now is when it is issued.
	TTL time.Duration
	Now time.Time
}

// ParsePrivateKeyPEM reads the first private key of a PEM document:
// PKCS #8, PKCS #1 (RSA) or SEC 1 (EC).
func ParsePrivateKeyPEM(data []byte) (crypto.Signer, error) {
	for rest := data; ; {
		var block *pem.Block
		block, rest = pem.Decode(rest)
		if block == nil {
			return nil, errors.New("no PEM private key found (want PRIVATE KEY, RSA PRIVATE KEY or EC PRIVATE KEY)")
		}
		var (
			key any
			err error
		)
		switch block.Type {
		case "PRIVATE KEY":
			key, err = x509.ParsePKCS8PrivateKey(block.Bytes)
		case "RSA PRIVATE KEY":
			key, err = x509.ParsePKCS1PrivateKey(block.Bytes)
		case "EC PRIVATE KEY":
			key, err = x509.ParseECPrivateKey(block.Bytes)
		default:
			continue
		}
		if err != nil {
			return nil, fmt.Errorf("%s: %w", block.Type, err)
		}
		signer, ok := key.(crypto.Signer)
		if !ok {
			return nil, fmt.Errorf("a %T cannot sign tokens", key)
		}
		return signer, nil
	}
}

// MintWithKey signs a test token with a private key, as an identity
// provider would: it is what `dalv token --key` prints, so public-key mode
// can be tried without one.
func MintWithKey(key crypto.Signer, o MintOptions) (string, error) {
	if o.Subject == "" {
		return "", fmt.Errorf("mint: %w", ErrMissingSubject)
	}
	if err := value.ValidatePartitionName(o.Subject); err != nil {
		return "", fmt.Errorf("mint: %w: %s", ErrUserID, err.Error())
	}
	if o.TTL <= 0 {
		return "", fmt.Errorf("mint: ttl must be positive, got %s", o.TTL)
	}
	if o.Alg == "" {
		o.Alg = defaultAlg(key.Public())
	}
	if !isPublicKeyAlg(o.Alg) || !keyFitsAlg(key.Public(), o.Alg) {
		return "", fmt.Errorf("mint: %w: %s does not fit a %s key", ErrAlgorithm, quote(o.Alg), keyKind(key.Public()))
	}
	if o.UserClaim == "" {
		o.UserClaim = DefaultUserClaim
	}
	claims := jwt.MapClaims{
		o.UserClaim: o.Subject,
		"iat":       o.Now.Unix(),
		"exp":       o.Now.Add(o.TTL).Unix(),
	}
	if o.Audience != "" {
		claims["aud"] = o.Audience
	}
	if o.Issuer != "" {
		claims["iss"] = o.Issuer
	}
	t := jwt.NewWithClaims(jwt.GetSigningMethod(o.Alg), claims)
	if o.KID != "" {
		t.Header["kid"] = o.KID
	}
	return t.SignedString(key)
}

func defaultAlg(pub crypto.PublicKey) string {
	switch k := pub.(type) {
	case *rsa.PublicKey:
		return "RS256"
	case *ecdsa.PublicKey:
		switch k.Curve {
		case elliptic.P384():
			return "ES384"
		case elliptic.P521():
			return "ES512"
		}
		return "ES256"
	case ed25519.PublicKey:
		return "EdDSA"
	}
	return ""
}
