package main

import (
	"bufio"
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"os"
	"time"

	"connectrpc.com/connect"
	"github.com/spf13/cobra"
	"golang.org/x/term"

	dalvv1 "github.com/dalvdb/dalv/gen/dalv/v1"
	"github.com/dalvdb/dalv/gen/dalv/v1/dalvv1connect"
	"github.com/dalvdb/dalv/value"
)

// The export format of `dalv export` and `dalv import`: JSON lines, UTF-8.
//
// The first line is the header, exportHeader:
//
//	{"dalvExport":1,"user":"alice","version":12}
//
// ("shared":"NAME" instead of "user" for a shared partition; version is the
// partition's version the export read). Then one line per key, in key order,
// exportLine: the key and exactly one of
//
//	"json":   the scalar value, when its bytes are compact JSON in UTF-8
//	          (written as they are, so they read back byte for byte)
//	"base64": the scalar value's bytes otherwise, in standard base64
//	"list":   a list value, an array of its items in order, each an object
//	          with exactly one of "json" and "base64", as for a scalar
//
// for example {"key":"prefs/theme","json":"dark"},
// {"key":"avatar","base64":"iVBORw0KGgo="} and
// {"key":"cart/items","list":[{"json":"milk"},{"base64":"AAE="}]}.
// The last line is the trailer, {"end":true,"keys":N}, with the number of
// key lines: a file without it was cut short, and import refuses it.
const exportFormat = 1

// exportHeader is the first line of an export.
type exportHeader struct {
	DalvExport int    `json:"dalvExport"`
	User       string `json:"user,omitempty"`
	Shared     string `json:"shared,omitempty"`
	Version    uint64 `json:"version"`
}

// exportLine is one key of an export, or the trailer (End set). The
// value's fields are those of the commands' --json values.
type exportLine struct {
	Key string `json:"key,omitempty"`
	jsonValue
	End  bool   `json:"end,omitempty"`
	Keys *int64 `json:"keys,omitempty"`
}

// toLine renders a change as an export line, byte for byte.
func toLine(c *dalvv1.Change) exportLine {
	return exportLine{Key: c.GetKey(), jsonValue: encodeValue(c.GetValue(), true)}
}

// exportAttempts bounds the tries of an export whose partition keeps
// changing under it.
const exportAttempts = 5

func newExportCmd() *cobra.Command {
	var o opsFlags
	cmd := &cobra.Command{
		Use:   "export USER | export --shared NAME",
		Short: "Write every key and value of a partition, at one version, as JSON lines on stdout",
		Long: "Write every key and value of a partition, at one version, as JSON lines on stdout:\n" +
			"a header with the version, one line per key (JSON values as JSON, other bytes as\n" +
			"base64), and a trailer. `dalv import` reads it back. A partition that changes during\n" +
			"the export is exported again when stdout is a file, and is an error on a pipe.",
		RunE: func(cmd *cobra.Command, args []string) error {
			user, shared, rest, err := o.partition(args)
			if err != nil {
				return err
			}
			if len(rest) > 0 {
				return fmt.Errorf("too many arguments: %q", rest)
			}
			c, err := o.client()
			if err != nil {
				return err
			}
			out := cmd.OutOrStdout()
			prog := newProgress(cmd.ErrOrStderr(), "exported", 0)
			for attempt := 1; ; attempt++ {
				err := export(cmd.Context(), c, user, shared, out, prog)
				if connect.CodeOf(err) != connect.CodeAborted || attempt == exportAttempts {
					prog.done(err == nil)
					return err
				}
				f, ok := out.(*os.File)
				if !ok || !rewind(f) {
					prog.done(false)
					return fmt.Errorf("%w (stdout is not a file, so the export cannot start over: write it to a file, or try again when the partition is quiet)", err)
				}
				prog.reset()
			}
		},
	}
	o.register(cmd, true)
	return cmd
}

// rewind empties f for a new try, when f is a regular file.
func rewind(f *os.File) bool {
	st, err := f.Stat()
	if err != nil || !st.Mode().IsRegular() {
		return false
	}
	if err := f.Truncate(0); err != nil {
		return false
	}
	_, err = f.Seek(0, io.SeekStart)
	return err == nil
}

// export writes one export of the partition to out. The stream gets no
// overall deadline: it runs as long as the partition takes.
func export(ctx context.Context, c dalvv1connect.BackendServiceClient, user, shared string, out io.Writer, prog *progress) error {
	ctx, cancel := context.WithCancel(ctx)
	defer cancel()
	stream, err := c.Export(ctx, connect.NewRequest(&dalvv1.ExportRequest{User: user, Shared: shared}))
	if err != nil {
		return err
	}
	defer stream.Close()
	w := bufio.NewWriterSize(out, 64<<10)
	enc := json.NewEncoder(w)
	enc.SetEscapeHTML(false) // JSON values go out byte for byte
	var keys int64
	header := false
	for stream.Receive() {
		m := stream.Msg()
		if !header {
			if err := enc.Encode(exportHeader{DalvExport: exportFormat, User: user, Shared: shared, Version: m.GetVersion()}); err != nil {
				return err
			}
			header = true
		}
		for _, ch := range m.GetItems() {
			if err := enc.Encode(toLine(ch)); err != nil {
				return err
			}
			keys++
			prog.add(1, int64(len(ch.GetKey())+value.Size(ch.GetValue())))
		}
	}
	if err := stream.Err(); err != nil {
		return err
	}
	if !header {
		return errors.New("the server ended the export without a page")
	}
	if err := enc.Encode(exportLine{End: true, Keys: &keys}); err != nil {
		return err
	}
	return w.Flush()
}

func newImportCmd() *cobra.Command {
	var (
		o               opsFlags
		maxOps, maxSize int
	)
	cmd := &cobra.Command{
		Use:   "import FILE [USER] | import FILE --shared NAME",
		Short: "Write an export's keys and values into a partition, in atomic commits",
		Long: "Write the keys and values of a `dalv export` file (FILE, or - for stdin) into a\n" +
			"partition: USER, --shared NAME, or else the one the file was exported from. Each\n" +
			"commit is atomic and holds at most --max-ops keys; the import as a whole is not.\n" +
			"Each commit goes under its own idempotency key, so a retried commit applies once.\n" +
			"Keys of the partition that the file does not hold are left as they are.",
		RunE: func(cmd *cobra.Command, args []string) error {
			if len(args) == 0 || len(args) > 2 {
				return errors.New("want FILE and, optionally, USER")
			}
			if len(args) == 2 && o.shared != "" {
				return errors.New("give USER or --shared NAME, not both")
			}
			if maxOps < 1 {
				return fmt.Errorf("--max-ops %d must be at least 1", maxOps)
			}
			var in io.Reader = cmd.InOrStdin()
			var total int64
			if args[0] != "-" {
				f, err := os.Open(args[0])
				if err != nil {
					return err
				}
				defer f.Close()
				if st, err := f.Stat(); err == nil && st.Mode().IsRegular() {
					total = st.Size()
				}
				in = f
			}
			c, err := o.client()
			if err != nil {
				return err
			}
			user, shared := "", o.shared
			if len(args) == 2 {
				user = args[1]
			}
			prog := newProgress(cmd.ErrOrStderr(), "imported", total)
			n, commits, err := importFile(cmd.Context(), c, &o, in, user, shared, maxOps, maxSize, prog)
			prog.done(err == nil)
			if err != nil {
				return err
			}
			if o.json {
				_, err = fmt.Fprintf(cmd.OutOrStdout(), "{\"keys\":%d,\"commits\":%d}\n", n, commits)
				return err
			}
			_, err = fmt.Fprintf(cmd.OutOrStdout(), "imported %d keys in %d commits\n", n, commits)
			return err
		},
	}
	o.register(cmd, true)
	fl := cmd.Flags()
	fl.IntVar(&maxOps, "max-ops", 500, "keys per commit (at most the server's --max-ops)")
	fl.IntVar(&maxSize, "max-bytes", 2<<20, "about the bytes of keys and values per commit (below the server's --max-request-bytes and --max-response-bytes)")
	return cmd
}

// maxLineBytes bounds one line of an export: a key and a value at the
// server's largest limits, in base64, with room to spare.
const maxLineBytes = 64 << 20

// importFile reads an export from in and commits its keys to the partition
// (user or shared; the header's when both are empty). It returns the keys
// and commits it wrote.
func importFile(ctx context.Context, c dalvv1connect.BackendServiceClient, o *opsFlags, in io.Reader, user, shared string,
	maxOps, maxSize int, prog *progress) (keys int64, commits int, err error) {
	sc := bufio.NewScanner(in)
	sc.Buffer(make([]byte, 0, 64<<10), maxLineBytes)
	lineNo := 0
	next := func() ([]byte, bool) {
		if !sc.Scan() {
			return nil, false
		}
		lineNo++
		prog.add(0, int64(len(sc.Bytes())+1))
		return sc.Bytes(), true
	}
	first, ok := next()
	if !ok {
		if err := sc.Err(); err != nil {
			return 0, 0, err
		}
		return 0, 0, errors.New("the file is empty: not a dalv export")
	}
	var h exportHeader
	if err := json.Unmarshal(first, &h); err != nil || h.DalvExport == 0 {
		return 0, 0, errors.New(`line 1 is not a dalv export header ({"dalvExport":1,...})`)
	}
	if h.DalvExport != exportFormat {
		return 0, 0, fmt.Errorf("line 1: export format %d; this dalv reads format %d", h.DalvExport, exportFormat)
	}
	if user == "" && shared == "" {
		user, shared = h.User, h.Shared
	}
	run := newIdempotencyKey()
	var (
		ops  []*dalvv1.Op
		size int
	)
	flush := func() error {
		if len(ops) == 0 {
			return nil
		}
		cctx, cancel := o.ctx(ctx)
		defer cancel()
		req := &dalvv1.CommitRequest{User: user, Shared: shared, Ops: ops,
			IdempotencyKey: fmt.Sprintf("import-%s-%d", run, commits+1)}
		if _, err := commitOnce(cctx, c, req); err != nil {
			return fmt.Errorf("commit %d (keys up to line %d): %w", commits+1, lineNo, err)
		}
		commits++
		keys += int64(len(ops))
		prog.add(int64(len(ops)), 0)
		ops, size = nil, 0
		return nil
	}
	ended := false
	for {
		b, ok := next()
		if !ok {
			break
		}
		if ended {
			return keys, commits, fmt.Errorf("line %d: a line after the trailer", lineNo)
		}
		var l exportLine
		if err := json.Unmarshal(b, &l); err != nil {
			return keys, commits, fmt.Errorf("line %d: %v", lineNo, err)
		}
		if l.End {
			if l.Keys == nil || *l.Keys != keys+int64(len(ops)) {
				return keys, commits, fmt.Errorf("line %d: the trailer counts %v keys, the file holds %d", lineNo, l.Keys, keys+int64(len(ops)))
			}
			ended = true
			continue
		}
		if l.Key == "" {
			return keys, commits, fmt.Errorf("line %d: no key", lineNo)
		}
		v, err := l.value()
		if err != nil {
			return keys, commits, fmt.Errorf("line %d (key %q): %w", lineNo, l.Key, err)
		}
		n := len(l.Key) + value.Size(v)
		if len(ops) > 0 && (len(ops) == maxOps || size+n > maxSize) {
			if err := flush(); err != nil {
				return keys, commits, err
			}
		}
		ops = append(ops, &dalvv1.Op{Kind: dalvv1.OpKind_OP_KIND_PUT, Key: l.Key, Value: v})
		size += n
	}
	if err := sc.Err(); err != nil {
		return keys, commits, fmt.Errorf("after line %d: %w", lineNo, err)
	}
	if !ended {
		return keys, commits, fmt.Errorf("the file ends at line %d without its trailer: it was cut short; %d keys were imported in %d commits before its end, the %d read since were not", lineNo, keys, commits, len(ops))
	}
	return keys, commits, flush()
}

// progress draws a progress line on a terminal: keys done and, with a
// total, a bar of the bytes read. It draws nothing when w is not a
// terminal, so piped output stays clean.
type progress struct {
	w             io.Writer
	on            bool
	verb          string
	total         int64 // bytes; 0 when unknown
	keys, bytes   int64
	start, drawn  time.Time
	lastLineWidth int
}

func newProgress(w io.Writer, verb string, total int64) *progress {
	p := &progress{w: w, verb: verb, total: total, start: time.Now()}
	if f, ok := w.(*os.File); ok && term.IsTerminal(int(f.Fd())) {
		p.on = true
	}
	return p
}

// add counts keys and bytes done, and redraws at most ten times a second.
func (p *progress) add(keys, bytes int64) {
	p.keys += keys
	p.bytes += bytes
	if p.on && time.Since(p.drawn) >= 100*time.Millisecond {
		p.draw()
	}
}

// reset starts the count over (an export tried again).
func (p *progress) reset() { p.keys, p.bytes = 0, 0 }

func (p *progress) draw() {
	p.drawn = time.Now()
	secs := max(time.Since(p.start).Seconds(), 0.001)
	line := fmt.Sprintf("%s %d keys (%.1f MB, %.0f keys/s)", p.verb, p.keys, float64(p.bytes)/1e6, float64(p.keys)/secs)
	if p.total > 0 {
		const width = 30
		frac := min(float64(p.bytes)/float64(p.total), 1)
		filled := int(frac * width)
		bar := make([]byte, width)
		for i := range bar {
			bar[i] = ' '
			if i < filled {
				bar[i] = '='
			}
		}
		line = fmt.Sprintf("[%s] %3.0f%% %s", bar, frac*100, line)
	}
	pad := max(p.lastLineWidth-len(line), 0)
	p.lastLineWidth = len(line)
	fmt.Fprintf(p.w, "\r%s%*s", line, pad, "")
}

// done draws the last line and ends it.
func (p *progress) done(ok bool) {
	if !p.on {
		return
	}
	if ok {
		p.draw()
	}
	fmt.Fprintln(p.w)
}
