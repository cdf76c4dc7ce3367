// Command shop is a small shop on DalvDB that shows each kind of data
// DalvDB is for: preferences, a cart, a profile, saved products, search
// history and a following list that each user's devices own and change
// offline; orders, followers and a timeline that a backend writes; and a
// product catalog shared by all users.
//
// From the repository's root:
//
//	go run ./examples/shop
//
// builds the page with the browser SDK when it is not built yet (npm ci and
// npm run build in web/, which need Node.js and npm), then starts a DalvDB
// server on the embedded store (in ./shop-data), the shop's backend and its
// page, seeds the catalog, and prints two demo users' sign-in links. The parts also run apart, against a server of their own:
//
//	shop backend -server URL   # the backend: DALV_BACKEND_KEY or -data
//	shop page -server URL      # the page: DALV_JWT_SECRET or -data
package main

import (
	"context"
	"errors"
	"flag"
	"fmt"
	"io"
	"log/slog"
	"net"
	"net/http"
	"net/url"
	"os"
	"os/exec"
	"os/signal"
	"path/filepath"
	"strings"
	"syscall"
	"time"

	"github.com/dalvdb/dalv/auth"
	"github.com/dalvdb/dalv/gen/dalv/v1/dalvv1connect"
	"github.com/dalvdb/dalv/internal/devsecret"
	"github.com/dalvdb/dalv/server"
	"github.com/dalvdb/dalv/store/pebble"
)

func main() {
	ctx, stop := signal.NotifyContext(context.Background(), os.Interrupt, syscall.SIGTERM)
	defer stop()
	if err := run(ctx, os.Args[1:], os.Stdout); err != nil && !errors.Is(err, context.Canceled) {
		fmt.Fprintln(os.Stderr, "shop:", err)
		os.Exit(1)
	}
}

// run is the program with its arguments and output passed in.
func run(ctx context.Context, args []string, out io.Writer) error {
	mode := "all"
	if len(args) > 0 && !strings.HasPrefix(args[0], "-") {
		mode, args = args[0], args[1:]
	}
	fs := flag.NewFlagSet("shop "+mode, flag.ContinueOnError)
	fs.SetOutput(out)
	addr := fs.String("addr", "127.0.0.1:8090", "the address to serve the page on")
	data := fs.String("data", "./shop-data", "the data directory: the embedded store and development secrets (all), or where a development server keeps its secrets (backend, page)")
	dist := fs.String("dist", "examples/shop/web/dist", "the built page script (npm run --prefix web build)")
	serverURL := fs.String("server", "", "the DalvDB server (backend, page)")
	cursor := fs.String("cursor", "", "the file that keeps the backend's feed cursor (default DATA/backend.cursor)")
	if err := fs.Parse(args); err != nil {
		return err
	}
	if *cursor == "" {
		*cursor = filepath.Join(*data, "backend.cursor")
	}
	log := slog.New(slog.NewTextHandler(os.Stderr, &slog.HandlerOptions{Level: slog.LevelInfo}))
	switch mode {
	case "all":
		return runAll(ctx, out, log, *addr, *data, *dist, *cursor)
	case "backend":
		key, err := secret("DALV_BACKEND_KEY", *data, func(s devsecret.Secrets) string { return s.BackendKeys[0] })
		if err != nil {
			return err
		}
		if *serverURL == "" {
			return errors.New("backend: -server is required")
		}
		if err := os.MkdirAll(filepath.Dir(*cursor), 0o700); err != nil {
			return err
		}
		return newBackend(*serverURL, key, *cursor, log).Run(ctx)
	case "page":
		jwt, err := secret("DALV_JWT_SECRET", *data, func(s devsecret.Secrets) string { return s.JWTSecret })
		if err != nil {
			return err
		}
		u, err := url.Parse(*serverURL)
		if err != nil || u.Host == "" {
			return fmt.Errorf("page: -server %q is not a URL", *serverURL)
		}
		if err := buildPage(out, *dist); err != nil {
			return err
		}
		h, err := pageHandler(u, *dist, []byte(jwt))
		if err != nil {
			return err
		}
		return servePage(ctx, out, *addr, h)
	default:
		return fmt.Errorf("unknown mode %q: run shop, shop backend or shop page", mode)
	}
}

// runAll runs the server on the embedded store, the backend and the page in
// this process.
func runAll(ctx context.Context, out io.Writer, log *slog.Logger, addr, data, dist, cursor string) error {
	if err := buildPage(out, dist); err != nil {
		return err
	}
	sec, _, err := devsecret.LoadOrCreate(data)
	if err != nil {
		return err
	}
	st, err := pebble.Open(filepath.Join(data, "store"), pebble.Options{})
	if err != nil {
		return err
	}
	defer st.Close()
	verifier, err := auth.NewHS256([]byte(sec.JWTSecret), auth.HS256Options{})
	if err != nil {
		return err
	}
	keys, err := auth.NewKeySet(sec.BackendKeys)
	if err != nil {
		return err
	}
	srv, err := server.New(server.Config{
		Store:       st,
		Verifier:    verifier,
		BackendKeys: keys,
		Shared:      []server.SharedPartition{{Name: catalog}},
		Logger:      log.With("part", "server"),
	})
	if err != nil {
		return err
	}
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		return err
	}
	dalvURL := "http://" + ln.Addr().String()
	ctx, cancel := context.WithCancel(ctx)
	defer cancel()
	served := make(chan error, 1)
	go func() { served <- srv.Serve(ctx, ln) }()
	backendDone := make(chan error, 1)
	go func() {
		backendDone <- newBackend(dalvURL, sec.BackendKeys[0], cursor, log.With("part", "backend")).Run(ctx)
	}()
	u, _ := url.Parse(dalvURL)
	h, err := pageHandler(u, dist, []byte(sec.JWTSecret))
	if err != nil {
		return err
	}
	fmt.Fprintf(out, "DalvDB server on %s (backend key and token secret in %s)\n", dalvURL, devsecret.Path(data))
	err = servePage(ctx, out, addr, h)
	cancel()
	<-backendDone
	if serr := <-served; err == nil {
		err = serr
	}
	return err
}

// buildPage builds the page script into dist with the web package's build
// when it is missing and dist is where that build puts it.
func buildPage(out io.Writer, dist string) error {
	if _, err := os.Stat(filepath.Join(dist, "shop.js")); err == nil || filepath.Clean(dist) != filepath.Join("examples", "shop", "web", "dist") {
		return nil
	}
	fmt.Fprintln(out, "building the page with the browser SDK (npm ci and npm run build in web/; once)")
	for _, args := range [][]string{{"ci", "--prefix", "web"}, {"run", "--prefix", "web", "build"}} {
		cmd := exec.Command("npm", args...)
		cmd.Stdout, cmd.Stderr = out, os.Stderr
		if err := cmd.Run(); err != nil {
			return fmt.Errorf("npm %s: %w (build it by hand with `npm ci --prefix web && npm run --prefix web build`)", strings.Join(args, " "), err)
		}
	}
	return nil
}

// servePage serves the page on addr until ctx ends, printing the sign-in
// links once it listens.
func servePage(ctx context.Context, out io.Writer, addr string, h http.Handler) error {
	ln, err := net.Listen("tcp", addr)
	if err != nil {
		return err
	}
	base := "http://" + ln.Addr().String()
	fmt.Fprintf(out, "shop on %s\n  alice: %s/?user=alice\n  bob:   %s/?user=bob\n", base, base, base)
	hs := &http.Server{Handler: h, ReadHeaderTimeout: 10 * time.Second}
	go func() {
		<-ctx.Done()
		sctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
		defer cancel()
		_ = hs.Shutdown(sctx)
	}()
	if err := hs.Serve(ln); !errors.Is(err, http.ErrServerClosed) {
		return err
	}
	return ctx.Err()
}

// newBackend makes the backend, speaking to serverURL with key.
func newBackend(serverURL, key, cursor string, log *slog.Logger) *Backend {
	hc := &http.Client{Transport: auth.Bearer(key, nil)}
	return &Backend{
		Client:     dalvv1connect.NewBackendServiceClient(hc, strings.TrimRight(serverURL, "/")),
		CursorFile: cursor,
		Log:        log,
	}
}

// secret returns the environment variable env, or else the field pick of
// the development secrets kept in data.
func secret(env, data string, pick func(devsecret.Secrets) string) (string, error) {
	if v := os.Getenv(env); v != "" {
		return v, nil
	}
	s, err := devsecret.Load(data)
	if err != nil {
		return "", fmt.Errorf("set %s, or name the data directory of a development server with -data: %w", env, err)
	}
	return pick(s), nil
}
