package kv

import (
	"bytes"
	"fmt"
	"testing"
)

// FuzzHandle sends arbitrary request lines, as serveConn splits them, to
// Handle over an in-memory store and checks every answer against a model
// of the protocol: exactly one line, the reply its command calls for (the
// value last PUT under a key, the sequence number one past the last), and
// ERR for everything else.
func FuzzHandle(f *testing.F) {
	f.Add([]byte("PUT k v\nGET k\nECHO hi there\nSTATS\nGET missing\n"))
	f.Add([]byte("PUT k  spaced  value \nPUT k\nPUT  v\nGET k\nGET a b\nGET \nGET\n"))
	f.Add([]byte("ECHO\nECHO \nBOGUS\nput k v\nSTATS extra\n\n"))
	f.Add([]byte("PUT k \x00\xff\r\nGET k\r\nGET k\n"))
	f.Fuzz(func(t *testing.T, script []byte) {
		s := NewServer(OpenMemory())
		model := map[string]string{}
		var seq uint64
		for line := range bytes.SplitSeq(script, []byte{'\n'}) {
			if len(line) >= MaxLine {
				continue // serveConn refuses it before Handle
			}
			var out bytes.Buffer
			s.Handle(&out, line)
			got := out.String()
			if bytes.Count(out.Bytes(), []byte{'\n'}) != 1 || got[len(got)-1] != '\n' {
				t.Fatalf("request %q: answer %q is not one line", line, got)
			}
			got = got[:len(got)-1]
			want, prefix := answer(line, model, &seq)
			if prefix && !bytes.HasPrefix([]byte(got), []byte(want)) || !prefix && got != want {
				t.Fatalf("request %q: answer %q, want %q", line, got, want)
			}
		}
	})
}

// answer is the model: what Handle must say to line (prefix: the answer
// only starts so), updating the model store as a PUT does.
func answer(line []byte, model map[string]string, seq *uint64) (want string, prefix bool) {
	cmd, arg, hasArg := bytes.Cut(line, []byte{' '})
	switch string(cmd) {
	case "PUT":
		key, value, ok := bytes.Cut(arg, []byte{' '})
		if !hasArg || !ok || len(key) == 0 {
			return "ERR usage: PUT", true
		}
		if len(key)+len(value) > MaxPayload-minPayload {
			return "ERR put: ", true
		}
		*seq++
		model[string(key)] = string(value)
		return fmt.Sprintf("OK %d", *seq), false
	case "GET":
		if !hasArg || len(arg) == 0 || bytes.IndexByte(arg, ' ') >= 0 {
			return "ERR usage: GET", true
		}
		if v, ok := model[string(arg)]; ok {
			return "VALUE " + v, false
		}
		return "NOTFOUND", false
	case "ECHO":
		return string(arg), false
	case "STATS":
		return fmt.Sprintf("STATS keys=%d seq=%d log_bytes=0 store=memory conns=0 requests=", len(model), *seq), true
	}
	return "ERR unknown command", true
}
