package main

import (
	"errors"
	"fmt"
	"os"

	"github.com/spf13/cobra"

	"github.com/dalvdb/dalv/internal/devsecret"
)

// defaultData is serve's --data default, which the commands that read the
// development secrets share, so that they find them when run beside
// `dalv serve --dev` in the same directory.
const defaultData = "./dalv-data"

// dataFlag registers --data on a command that reads the development
// secrets when the environment has none.
func dataFlag(cmd *cobra.Command, data *string) {
	cmd.Flags().StringVar(data, "data", defaultData, "the data `DIR` of the dalv serve --dev whose development secrets to use when the environment has none")
}

// devSecrets reads the secrets `dalv serve --dev` keeps in dataDir. When
// there are none, the error starts with missing and says how to provide
// them: how, or the data directory of a development server.
func devSecrets(dataDir, missing, how string) (devsecret.Secrets, error) {
	s, err := devsecret.Load(dataDir)
	if errors.Is(err, os.ErrNotExist) {
		return devsecret.Secrets{}, fmt.Errorf("%s: %s; or run this beside a `dalv serve --dev`, which keeps its secrets in its data directory (there are none in %s; pass --data DIR to name another)",
			missing, how, devsecret.Path(dataDir))
	}
	return s, err
}

// devBackendKey is the backend key of a `dalv serve --dev` in dataDir.
func devBackendKey(dataDir string) (string, error) {
	s, err := devSecrets(dataDir, "no backend API key", "pass --key or set DALV_BACKEND_KEY (one of the server's DALV_BACKEND_KEYS)")
	if err != nil {
		return "", err
	}
	return s.BackendKeys[0], nil
}

// devJWTSecret is the token secret of a `dalv serve --dev` in dataDir.
func devJWTSecret(dataDir string) (string, error) {
	s, err := devSecrets(dataDir, "DALV_JWT_SECRET is not set", "export the secret the server uses")
	if err != nil {
		return "", err
	}
	return s.JWTSecret, nil
}
