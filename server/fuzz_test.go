package server

import (
	"bytes"
	"compress/gzip"
	"context"
	"encoding/json"
	"net/http"
	"net/http/httptest"
	"slices"
	"testing"

	"connectrpc.com/connect"

	dalvv1 "github.com/dalvdb/dalv/gen/dalv/v1"
	"github.com/dalvdb/dalv/gen/dalv/v1/dalvv1connect"
)

// fuzzContentTypes are the Content-Types FuzzHandler sends a body as.
var fuzzContentTypes = []string{"application/json", "application/proto", "application/json; charset=utf-8"}

// unaryProcedures lists the paths of the unary procedures of the two
// services, in a stable order.
func unaryProcedures() []string {
	var procs []string
	services := dalvv1.File_dalv_v1_dalv_proto.Services()
	for i := range services.Len() {
		sd := services.Get(i)
		for j := range sd.Methods().Len() {
			if md := sd.Methods().Get(j); !md.IsStreamingServer() && !md.IsStreamingClient() {
				procs = append(procs, "/"+string(sd.FullName())+"/"+string(md.Name()))
			}
		}
	}
	slices.Sort(procs)
	return procs
}

// FuzzHandler sends arbitrary bytes as the body of each unary procedure,
// through the server's whole handler (authentication, size and gzip
// limits, the codecs, the engine) in this process, with ServeHTTP called
// directly so that a panic fails the fuzz run rather than being recovered
// by net/http. Every answer is a success, or a Connect error with a code
// that names bad input (never internal or unknown) and a message; an error
// commits nothing. The seeds in testdata/fuzz/FuzzHandler are a valid
// request of each procedure. Run it with
//
//	go test -run '^$' -fuzz '^FuzzHandler$' -fuzztime 60s ./server/
func FuzzHandler(f *testing.F) {
	cfg := testConfig(f)
	cfg.RateLimit = -1
	cfg.Shared = []SharedPartition{{Name: "catalog"}}
	s, err := New(cfg)
	if err != nil {
		f.Fatal(err)
	}
	h := s.Handler()
	procs := unaryProcedures()
	deviceAuth := "Bearer " + token(f, "fuzz")
	f.Add(uint8(0), uint8(0), false, []byte(`{}`))
	f.Fuzz(func(t *testing.T, proc, ct uint8, gz bool, body []byte) {
		path := procs[int(proc)%len(procs)]
		_, last, err := cfg.Store.FeedBounds(context.Background())
		if err != nil {
			t.Fatal(err)
		}
		req := httptest.NewRequest(http.MethodPost, path, bytes.NewReader(body))
		req.Header.Set("Content-Type", fuzzContentTypes[int(ct)%len(fuzzContentTypes)])
		if gz {
			var b bytes.Buffer
			zw := gzip.NewWriter(&b)
			_, _ = zw.Write(body)
			_ = zw.Close()
			req = httptest.NewRequest(http.MethodPost, path, &b)
			req.Header.Set("Content-Type", fuzzContentTypes[int(ct)%len(fuzzContentTypes)])
			req.Header.Set("Content-Encoding", "gzip")
		}
		if bytes.HasPrefix([]byte(path), []byte("/"+dalvv1connect.ClientServiceName+"/")) {
			req.Header.Set("Authorization", deviceAuth)
		} else {
			req.Header.Set("Authorization", "Bearer "+testKey)
		}
		rec := httptest.NewRecorder()
		h.ServeHTTP(rec, req)
		if rec.Code == http.StatusOK {
			return
		}
		var answer struct{ Code, Message string }
		if err := json.Unmarshal(rec.Body.Bytes(), &answer); err != nil {
			t.Fatalf("%s answered %d with a body that is not a Connect error: %q", path, rec.Code, rec.Body.Bytes())
		}
		var code connect.Code
		if err := code.UnmarshalText([]byte(answer.Code)); err != nil || code == connect.CodeInternal || code == connect.CodeUnknown || answer.Message == "" {
			t.Fatalf("%s answered %d %s %q for body %q", path, rec.Code, answer.Code, answer.Message, body)
		}
		_, after, err := cfg.Store.FeedBounds(context.Background())
		if err != nil {
			t.Fatal(err)
		}
		if after != last {
			t.Fatalf("%s answered %s %q but committed (feed %x -> %x)", path, answer.Code, answer.Message, last, after)
		}
	})
}
