package lmtp

import (
	"bufio"
	"bytes"
	"errors"
	"io"
	"os"
)

// memSpool is how much of a message is kept in memory; a larger message
// goes to a temporary file (see spool).
const memSpool = 4 << 20

// readData reads a message after DATA's 354 from r: dot-stuffed lines up
// to a line holding only "." (CRLF, or a bare LF as many servers
// tolerate). It writes the message to dst unstuffed and otherwise byte
// for byte (line endings are not rewritten, long lines are fine: it
// reads chunks, not lines). At most max bytes are written; past that
// the rest is read and discarded, so the session stays in step with the
// client, and tooBig is set. n counts every message byte, kept or not.
// progress is called before each read (to push the idle deadline).
func readData(r *bufio.Reader, dst io.Writer, max int64, progress func()) (n int64, tooBig bool, err error) {
	bol := true // at the beginning of a line
	for {
		if progress != nil {
			progress()
		}
		chunk, err := r.ReadSlice('\n')
		full := err == nil
		if err != nil && !errors.Is(err, bufio.ErrBufferFull) {
			if errors.Is(err, io.EOF) {
				err = io.ErrUnexpectedEOF
			}
			return n, tooBig, err
		}
		if bol && full && (string(chunk) == ".\r\n" || string(chunk) == ".\n") {
			return n, tooBig, nil
		}
		if bol && len(chunk) > 0 && chunk[0] == '.' {
			chunk = chunk[1:]
		}
		bol = full
		n += int64(len(chunk))
		if tooBig {
			continue
		}
		if n > max {
			tooBig = true
			continue
		}
		if _, err := dst.Write(chunk); err != nil {
			return n, tooBig, err
		}
	}
}

// spool holds one message: in memory up to memSpool bytes, then in a
// temporary file (os.TempDir(), i.e. $TMPDIR) that is unlinked as soon as
// it is created, so nothing is left behind whatever happens to the
// process. Its content is read concurrently (one reader per island)
// through ReaderAt.
type spool struct {
	mem bytes.Buffer
	f   *os.File
	n   int64
}

func (s *spool) Write(p []byte) (int, error) {
	if s.f == nil && int64(s.mem.Len()+len(p)) > memSpool {
		f, err := os.CreateTemp("", "atoll-lmtp-*")
		if err != nil {
			return 0, err
		}
		os.Remove(f.Name())
		if _, err := f.Write(s.mem.Bytes()); err != nil {
			f.Close()
			return 0, err
		}
		s.f = f
		s.mem = bytes.Buffer{}
	}
	var m int
	var err error
	if s.f != nil {
		m, err = s.f.Write(p)
	} else {
		m, err = s.mem.Write(p)
	}
	s.n += int64(m)
	return m, err
}

// Size is the number of bytes spooled.
func (s *spool) Size() int64 { return s.n }

// onDisk reports whether the message went to a temporary file.
func (s *spool) onDisk() bool { return s.f != nil }

// Reader returns a new reader of the whole message, independent of the
// others (safe to use concurrently).
func (s *spool) Reader() io.Reader {
	if s.f != nil {
		return io.NewSectionReader(s.f, 0, s.n)
	}
	return bytes.NewReader(s.mem.Bytes())
}

// Close frees the spool.
func (s *spool) Close() {
	if s.f != nil {
		s.f.Close()
		s.f = nil
	}
	s.mem = bytes.Buffer{}
	s.n = 0
}
