// Package devsecret keeps the development secrets that `dalv serve --dev`
// generates in a file of the data directory, so that a restart of the server
// reuses them (devices keep their tokens) and the commands and examples run
// beside it (`dalv token`, the operator commands, examples/cart) find them
// without anyone copying a secret between terminals.
//
// The file holds secrets: it is written with mode 0600, atomically (a
// temporary file, fsync, rename), and read only where the caller asked for
// development mode or named the data directory. Production secrets never
// come from here: they come from the environment.
//
// With `--tls-self-signed` it also keeps a self-signed certificate for
// localhost and its key (mode 0600) beside them ([LoadOrCreateCert]).
package devsecret

import (
	"bufio"
	"bytes"
	"errors"
	"fmt"
	"os"
	"path/filepath"
	"strings"

	"github.com/dalvdb/dalv/auth"
)

// FileName is the name of the secrets file inside the data directory.
const FileName = "dev-secrets.env"

// Secrets are a development server's secrets.
type Secrets struct {
	// JWTSecret is the HS256 key device tokens are signed with.
	JWTSecret string
	// BackendKeys are the accepted backend API keys; the first is the one
	// commands use.
	BackendKeys []string
}

// Path returns the secrets file's path in dataDir.
func Path(dataDir string) string { return filepath.Join(dataDir, FileName) }

// Load reads the secrets kept in dataDir. When there are none, the error
// matches [os.ErrNotExist].
func Load(dataDir string) (Secrets, error) {
	path := Path(dataDir)
	b, err := os.ReadFile(path)
	if err != nil {
		return Secrets{}, fmt.Errorf("read development secrets: %w", err)
	}
	var s Secrets
	sc := bufio.NewScanner(bytes.NewReader(b))
	for sc.Scan() {
		line := strings.TrimSpace(sc.Text())
		if line == "" || strings.HasPrefix(line, "#") {
			continue
		}
		name, val, ok := strings.Cut(line, "=")
		if !ok {
			return Secrets{}, fmt.Errorf("%s: malformed line %q: want NAME=VALUE", path, line)
		}
		switch name {
		case "DALV_JWT_SECRET":
			s.JWTSecret = val
		case "DALV_BACKEND_KEYS":
			s.BackendKeys = SplitKeys(val)
		}
	}
	if s.JWTSecret == "" || len(s.BackendKeys) == 0 {
		return Secrets{}, fmt.Errorf("%s: want both DALV_JWT_SECRET and DALV_BACKEND_KEYS; delete the file to have `dalv serve --dev` generate new ones", path)
	}
	return s, nil
}

// LoadOrCreate returns the secrets kept in dataDir, generating and keeping
// new ones (creating dataDir if needed) when there are none. created says
// whether they are new.
func LoadOrCreate(dataDir string) (s Secrets, created bool, err error) {
	s, err = Load(dataDir)
	if err == nil || !errors.Is(err, os.ErrNotExist) {
		return s, false, err
	}
	if s.JWTSecret, err = auth.GenerateSecret(auth.MinSecretBytes); err != nil {
		return Secrets{}, false, err
	}
	key, err := auth.GenerateSecret(24)
	if err != nil {
		return Secrets{}, false, err
	}
	s.BackendKeys = []string{key}
	if err := write(dataDir, s); err != nil {
		return Secrets{}, false, err
	}
	return s, true, nil
}

// SplitKeys splits a comma-separated list of backend keys, dropping blanks.
func SplitKeys(list string) []string {
	var keys []string
	for _, k := range strings.Split(list, ",") {
		if k = strings.TrimSpace(k); k != "" {
			keys = append(keys, k)
		}
	}
	return keys
}

func write(dataDir string, s Secrets) error {
	content := "# Development secrets of `dalv serve --dev`; delete this file for new ones.\n" +
		"DALV_JWT_SECRET=" + s.JWTSecret + "\n" +
		"DALV_BACKEND_KEYS=" + strings.Join(s.BackendKeys, ",") + "\n"
	if err := WriteFile(dataDir, FileName, []byte(content)); err != nil {
		return fmt.Errorf("keep development secrets: %w", err)
	}
	return nil
}

// WriteFile writes name in dataDir (created if needed) with mode 0600, at
// once and durably: a temporary file, fsync'd, renamed over it, and the
// directory fsync'd, so that after a crash the file holds the old content
// or the new, and the new once WriteFile returns.
func WriteFile(dataDir, name string, content []byte) error {
	if err := os.MkdirAll(dataDir, 0o700); err != nil {
		return err
	}
	f, err := os.CreateTemp(dataDir, name+".tmp*")
	if err != nil {
		return err
	}
	defer os.Remove(f.Name()) // a no-op once renamed
	if err := f.Chmod(0o600); err != nil {
		f.Close()
		return err
	}
	if _, err := f.Write(content); err != nil {
		f.Close()
		return err
	}
	if err := f.Sync(); err != nil {
		f.Close()
		return err
	}
	if err := f.Close(); err != nil {
		return err
	}
	if err := os.Rename(f.Name(), filepath.Join(dataDir, name)); err != nil {
		return err
	}
	dir, err := os.Open(dataDir)
	if err != nil {
		return err
	}
	defer dir.Close()
	return dir.Sync()
}
