// Command web serves the browser SDK's example page: preferences and a cart
// that work offline and in several tabs at once. It serves the page, the
// built SDK (web/dist, from `npm run --prefix web build`) and, for
// development only, a device token for -user signed with DALV_JWT_SECRET, or,
// when that is unset, with the secret `dalv serve --dev` keeps in -data.
//
//	go run ./cmd/dalv serve --dev --cors-origin http://127.0.0.1:8080
//	go run ./examples/web -user alice   # in the same directory; open http://127.0.0.1:8080
package main

import (
	"encoding/json"
	"errors"
	"flag"
	"fmt"
	"log"
	"net/http"
	"os"
	"path/filepath"
	"time"

	"github.com/dalvdb/dalv/auth"
	"github.com/dalvdb/dalv/internal/devsecret"
)

func main() {
	addr := flag.String("addr", "127.0.0.1:8080", "address to serve the page on")
	server := flag.String("server", "http://127.0.0.1:7070", "the DalvDB server the page syncs with (started with --cors-origin http://ADDR)")
	user := flag.String("user", "alice", "the user the page's device token is for")
	dist := flag.String("dist", "web/dist", "the built browser SDK")
	data := flag.String("data", "./dalv-data", "the data directory of a `dalv serve --dev` whose kept secrets sign the token when DALV_JWT_SECRET is unset")
	flag.Parse()
	secret := os.Getenv("DALV_JWT_SECRET")
	if secret == "" {
		if dev, err := devsecret.Load(*data); err == nil {
			secret = dev.JWTSecret
		}
	}
	h, err := handler(*dist, *server, *user, []byte(secret))
	if err != nil {
		log.Fatal(err)
	}
	fmt.Printf("example page on http://%s (user %s, server %s)\n", *addr, *user, *server)
	log.Fatal(http.ListenAndServe(*addr, h))
}

// handler serves the page, the SDK bundle and the page's config with a
// fresh development token.
func handler(dist, server, user string, secret []byte) (http.Handler, error) {
	if len(secret) < 32 {
		return nil, errors.New("no token secret: run beside `dalv serve --dev` (or name its directory with -data), or set DALV_JWT_SECRET (32 bytes or more)")
	}
	if _, err := os.Stat(filepath.Join(dist, "dalv.bundle.js")); err != nil {
		return nil, fmt.Errorf("%w: build the SDK first with `npm ci --prefix web && npm run --prefix web build`", err)
	}
	mux := http.NewServeMux()
	mux.HandleFunc("GET /{$}", func(w http.ResponseWriter, _ *http.Request) {
		w.Header().Set("Content-Type", "text/html; charset=utf-8")
		_, _ = w.Write(page)
	})
	mux.Handle("GET /dist/", http.StripPrefix("/dist/", http.FileServer(http.Dir(dist))))
	mux.HandleFunc("GET /config", func(w http.ResponseWriter, _ *http.Request) {
		tok, err := auth.Mint(secret, user, time.Hour, time.Now())
		if err != nil {
			http.Error(w, err.Error(), http.StatusInternalServerError)
			return
		}
		w.Header().Set("Content-Type", "application/json")
		_ = json.NewEncoder(w).Encode(map[string]string{"server": server, "user": user, "token": tok})
	})
	return mux, nil
}
