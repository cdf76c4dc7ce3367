package server

import (
	"net/http"
	"slices"

	connectcors "connectrpc.com/cors"
	"github.com/rs/cors"
)

// withCORS wraps h so that browser pages of origins may call it: preflights
// are answered for the methods and headers of the Connect, gRPC-Web and
// streaming protocols, and answers expose the headers those clients read.
// No origins: h as it is.
func withCORS(h http.Handler, origins []string) http.Handler {
	if len(origins) == 0 {
		return h
	}
	c := cors.New(cors.Options{
		AllowedOrigins: slices.Clone(origins),
		AllowedMethods: connectcors.AllowedMethods(),
		// Authorization carries the device token or backend key; the
		// Connect streaming protocol (Watch) names its compression in
		// headers of its own.
		AllowedHeaders: append(connectcors.AllowedHeaders(), "Authorization", "Connect-Content-Encoding", "Connect-Accept-Encoding"),
		ExposedHeaders: connectcors.ExposedHeaders(),
		// Browsers may cache a preflight this long (seconds), so a page's
		// requests do not each cost a round trip more.
		MaxAge: 7200,
	})
	return c.Handler(h)
}
