package server

import (
	"bytes"
	"compress/gzip"
	"context"
	"encoding/binary"
	"encoding/json"
	"net/http"
	"net/http/httptest"
	"slices"
	"strings"
	"testing"
	"time"

	"connectrpc.com/connect"

	dalvv1 "github.com/dalvdb/dalv/gen/dalv/v1"
	"github.com/dalvdb/dalv/gen/dalv/v1/dalvv1connect"
)

// fuzzContentTypes are the Content-Types FuzzHandler sends a body as.
var fuzzContentTypes = []string{"application/json", "application/proto", "application/json; charset=utf-8"}

// procedures lists the paths of the unary procedures of the two services,
// or with streaming their server-streaming ones, in a stable order.
func procedures(streaming bool) []string {
	var procs []string
	services := dalvv1.File_dalv_v1_dalv_proto.Services()
	for i := range services.Len() {
		sd := services.Get(i)
		for j := range sd.Methods().Len() {
			if md := sd.Methods().Get(j); md.IsStreamingServer() == streaming && !md.IsStreamingClient() {
				procs = append(procs, "/"+string(sd.FullName())+"/"+string(md.Name()))
			}
		}
	}
	slices.Sort(procs)
	return procs
}

// fuzzServer is the server the fuzz targets call, unlimited in rate, with
// its config, its whole handler and a device's Authorization header.
func fuzzServer(f *testing.F) (Config, http.Handler, string) {
	cfg := testConfig(f)
	cfg.RateLimit = -1
	cfg.Shared = []SharedPartition{{Name: "catalog"}}
	s, err := New(cfg)
	if err != nil {
		f.Fatal(err)
	}
	return cfg, s.Handler(), "Bearer " + token(f, "fuzz")
}

// authorize sets the Authorization header a request to path needs: a
// device token for the client service, the backend key otherwise.
func authorize(req *http.Request, path, deviceAuth string) {
	if strings.HasPrefix(path, "/"+dalvv1connect.ClientServiceName+"/") {
		req.Header.Set("Authorization", deviceAuth)
	} else {
		req.Header.Set("Authorization", "Bearer "+testKey)
	}
}

// badInputAnswer fails t unless code and message are a Connect error that
// names bad input: a known code other than internal or unknown, and a
// message.
func badInputAnswer(t *testing.T, path, code, message string, body []byte) {
	t.Helper()
	var c connect.Code
	if err := c.UnmarshalText([]byte(code)); err != nil || c == connect.CodeInternal || c == connect.CodeUnknown || message == "" {
		t.Fatalf("%s answered %s %q for body %q", path, code, message, body)
	}
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
	cfg, h, deviceAuth := fuzzServer(f)
	procs := procedures(false)
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
		authorize(req, path, deviceAuth)
		rec := httptest.NewRecorder()
		h.ServeHTTP(rec, req)
		if rec.Code == http.StatusOK {
			return
		}
		var answer struct{ Code, Message string }
		if err := json.Unmarshal(rec.Body.Bytes(), &answer); err != nil {
			t.Fatalf("%s answered %d with a body that is not a Connect error: %q", path, rec.Code, rec.Body.Bytes())
		}
		badInputAnswer(t, path, answer.Code, answer.Message, body)
		_, after, err := cfg.Store.FeedBounds(context.Background())
		if err != nil {
			t.Fatal(err)
		}
		if after != last {
			t.Fatalf("%s answered %s %q but committed (feed %x -> %x)", path, answer.Code, answer.Message, last, after)
		}
	})
}

// FuzzStream sends arbitrary bytes to each server-streaming procedure (the
// device and backend watches) through the server's whole handler, as one
// Connect envelope or, with raw, as the body itself. Each stream is given a
// few milliseconds and then cancelled, as a client that goes away. Every
// stream ends with an end-of-stream message; its error, when it has one, is
// the cancellation or names bad input (never internal or unknown) with a
// message. Run it with
//
//	go test -run '^$' -fuzz '^FuzzStream$' -fuzztime 60s ./server/
func FuzzStream(f *testing.F) {
	_, h, deviceAuth := fuzzServer(f)
	procs := procedures(true)
	for i := range procs {
		f.Add(uint8(i), false, false, []byte(`{}`))
		f.Add(uint8(i), false, false, []byte(`{"deviceId":"d","fromVersion":"1","prefixes":["a/"]}`))
		f.Add(uint8(i), true, false, []byte(`{"cursor":"start","prefixes":["a/"]}`))
		f.Add(uint8(i), false, true, []byte{0, 0, 0, 0, 1})
	}
	f.Fuzz(func(t *testing.T, proc uint8, asProto, raw bool, body []byte) {
		path := procs[int(proc)%len(procs)]
		ct := "application/connect+json"
		if asProto {
			ct = "application/connect+proto"
		}
		in := body
		if !raw {
			in = binary.BigEndian.AppendUint32([]byte{0}, uint32(len(body)))
			in = append(in, body...)
		}
		code, message := streamEnd(t, h, path, ct, deviceAuth, in)
		if code != "" && code != "canceled" && code != "deadline_exceeded" {
			badInputAnswer(t, path, code, message, body)
		}
	})
}

// streamEnd sends in as the body of a call of the streaming procedure path,
// cancelled after 20 ms as a client that goes away, and returns the error
// the stream ended with (an empty code for none). It fails t unless the
// answer is a Connect stream that ends with an end-of-stream message.
func streamEnd(t *testing.T, h http.Handler, path, contentType, deviceAuth string, in []byte) (code, message string) {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), 20*time.Millisecond)
	defer cancel()
	req := httptest.NewRequestWithContext(ctx, http.MethodPost, path, bytes.NewReader(in))
	req.Header.Set("Content-Type", contentType)
	authorize(req, path, deviceAuth)
	rec := httptest.NewRecorder()
	h.ServeHTTP(rec, req)
	if rec.Code != http.StatusOK {
		t.Fatalf("%s answered HTTP %d for body %q: a Connect stream answers 200 and ends with its error", path, rec.Code, in)
	}
	out := rec.Body.Bytes()
	for len(out) >= 5 {
		flags, n := out[0], binary.BigEndian.Uint32(out[1:5])
		if uint32(len(out)-5) < n {
			break
		}
		msg := out[5 : 5+n]
		out = out[5+n:]
		if flags&2 == 0 {
			continue
		}
		var end struct {
			Error *struct{ Code, Message string }
		}
		if err := json.Unmarshal(msg, &end); err != nil {
			t.Fatalf("%s ended its stream with %q, not a Connect end-of-stream message", path, msg)
		}
		if len(out) != 0 {
			t.Fatalf("%s sent %d bytes after its end-of-stream message", path, len(out))
		}
		if end.Error == nil {
			return "", ""
		}
		return end.Error.Code, end.Error.Message
	}
	t.Fatalf("%s's stream for body %q has no end-of-stream message (it left %q)", path, in, out)
	return "", ""
}

// TestWatchUnreadableRequest: a watch whose request cannot be read, cut
// inside its envelope or flagged compressed with no encoding, is refused
// with invalid_argument (connect-go's own answer is internal). Both were
// found by FuzzStream.
func TestWatchUnreadableRequest(t *testing.T) {
	t.Parallel()
	s, err := New(testConfig(t))
	if err != nil {
		t.Fatal(err)
	}
	deviceAuth := "Bearer " + token(t, "fuzz")
	for _, path := range procedures(true) {
		for name, in := range map[string][]byte{
			"cut inside its envelope":     {0, 0, 0, 0, 9, '{'},
			"compressed with no encoding": {1, 0, 0, 0, 2, '{', '}'},
		} {
			code, message := streamEnd(t, s.Handler(), path, "application/connect+json", deviceAuth, in)
			if code != "invalid_argument" || message == "" {
				t.Errorf("%s, a request %s: answered %s %q, want invalid_argument with a message", path, name, code, message)
			}
		}
	}
}
