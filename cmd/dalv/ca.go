package main

import (
	"crypto/tls"
	"crypto/x509"
	"fmt"
	"net/http"
	"os"
)

// caFileHelp is the help of --ca-file, shared by the commands that talk to
// a server.
const caFileHelp = "trust only the CA certificates in this PEM `FILE` for an https:// server (default $DALV_CA_FILE, else the system's roots)"

// clientTLS returns the TLS configuration for reaching a server whose
// certificate is signed by the CAs in caFile (or $DALV_CA_FILE when caFile
// is empty): those CAs alone are trusted, as with curl --cacert. It is nil
// when neither names a file, leaving the system's roots.
func clientTLS(caFile string) (*tls.Config, error) {
	if caFile == "" {
		caFile = os.Getenv("DALV_CA_FILE")
	}
	if caFile == "" {
		return nil, nil
	}
	b, err := os.ReadFile(caFile)
	if err != nil {
		return nil, fmt.Errorf("--ca-file: %w", err)
	}
	pool := x509.NewCertPool()
	if !pool.AppendCertsFromPEM(b) {
		return nil, fmt.Errorf("--ca-file %s: no PEM certificate in it", caFile)
	}
	return &tls.Config{RootCAs: pool}, nil
}

// httpClient is the HTTP client for a server: http.DefaultClient, or one
// trusting the CAs of caFile (see clientTLS). Both speak HTTP/2 to an
// https:// server that offers it.
func httpClient(caFile string) (*http.Client, error) {
	conf, err := clientTLS(caFile)
	if err != nil || conf == nil {
		return http.DefaultClient, err
	}
	tr := http.DefaultTransport.(*http.Transport).Clone() // keeps ForceAttemptHTTP2
	tr.TLSClientConfig = conf
	return &http.Client{Transport: tr}, nil
}
