package auth

import (
	"crypto/rand"
	"encoding/base64"
	"fmt"
)

// GenerateSecret returns n random bytes from crypto/rand, encoded as
// unpadded URL-safe base64 (so the string is about 4n/3 characters). n must
// be at least [MinAPIKeyBytes]; use [MinSecretBytes] or more for an HS256
// secret, as `serve --dev` does.
func GenerateSecret(n int) (string, error) {
	if n < MinAPIKeyBytes {
		return "", fmt.Errorf("%w: asked for a %d-byte secret, need at least %d", ErrWeakKey, n, MinAPIKeyBytes)
	}
	b := make([]byte, n)
	if _, err := rand.Read(b); err != nil {
		return "", fmt.Errorf("generate secret: %w", err)
	}
	return base64.RawURLEncoding.EncodeToString(b), nil
}
