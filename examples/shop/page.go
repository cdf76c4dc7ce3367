package main

import (
	_ "embed"
	"errors"
	"fmt"
	"net/http"
	"net/http/httputil"
	"net/url"
	"os"
	"path/filepath"
	"regexp"
	"time"

	"github.com/dalvdb/dalv/auth"
)

//go:embed web/index.html
var indexHTML []byte

// userID is what a sign-in link may name: the demo mints a token for any
// such user, which a real shop would do only after its own sign-in.
var userID = regexp.MustCompile(`^[a-z][a-z0-9_-]{0,31}$`)

// pageHandler serves the shop's page (index.html and shop.js, built from
// web/shop.ts into dist), a development token for ?user=, and the devices'
// API of the DalvDB server at server, proxied so that the page calls its
// own origin. Streams pass through as they are written.
func pageHandler(server *url.URL, dist string, secret []byte) (http.Handler, error) {
	if len(secret) < 32 {
		return nil, errors.New("no token secret: set DALV_JWT_SECRET (32 bytes or more) or name the data directory of a development server with -data")
	}
	js := filepath.Join(dist, "shop.js")
	if _, err := os.Stat(js); err != nil {
		return nil, fmt.Errorf("%w: build the page first with `npm ci --prefix web && npm run --prefix web build`", err)
	}
	proxy := httputil.NewSingleHostReverseProxy(server)
	proxy.FlushInterval = -1
	mux := http.NewServeMux()
	mux.HandleFunc("GET /{$}", func(w http.ResponseWriter, _ *http.Request) {
		w.Header().Set("Content-Type", "text/html; charset=utf-8")
		w.Header().Set("Cache-Control", "no-store")
		_, _ = w.Write(indexHTML)
	})
	mux.HandleFunc("GET /shop.js", func(w http.ResponseWriter, r *http.Request) {
		w.Header().Set("Cache-Control", "no-store")
		http.ServeFile(w, r, js)
	})
	mux.HandleFunc("GET /token", func(w http.ResponseWriter, r *http.Request) {
		user := r.URL.Query().Get("user")
		if !userID.MatchString(user) {
			http.Error(w, "user: 1 to 32 of a-z, 0-9, _ and -, starting with a letter", http.StatusBadRequest)
			return
		}
		tok, err := auth.Mint(secret, user, time.Hour, time.Now())
		if err != nil {
			http.Error(w, err.Error(), http.StatusInternalServerError)
			return
		}
		w.Header().Set("Content-Type", "text/plain; charset=utf-8")
		w.Header().Set("Cache-Control", "no-store")
		_, _ = w.Write([]byte(tok))
	})
	mux.Handle("/dalv.v1.ClientService/", proxy)
	return mux, nil
}
