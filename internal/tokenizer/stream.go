package tokenizer

import (
	"strings"
	"unicode/utf8"
)

// StreamDecoder turns ids arriving one at a time (during generation) into text increments
// whose concatenation equals the decoding of all the ids. It decodes only a short window of
// recent ids: the ids already printed that the new ones may depend on (for spacing) and the
// ids not yet printed. Text that ends in an incomplete UTF-8 sequence (a byte-fallback or
// byte-level token that is the first part of a character) is held back until it completes.
//
// If the Encoder has a DecodeSkipSpecial method, special tokens (BOS, EOS...) are not
// printed. A StreamDecoder is not safe for concurrent use.
type StreamDecoder struct {
	decode func([]int) string
	ids    []int
	prefix int // start of the window: ids before it are printed and no longer decoded
	read   int // ids before read are printed
}

// NewStreamDecoder returns a StreamDecoder for e.
func NewStreamDecoder(e Encoder) *StreamDecoder {
	d := &StreamDecoder{decode: e.Decode}
	if s, ok := e.(interface{ DecodeSkipSpecial([]int) string }); ok {
		d.decode = s.DecodeSkipSpecial
	}
	return d
}

// maxPending bounds how many ids may wait for a UTF-8 sequence to complete; past it the
// text is printed as it is (with U+FFFD).
const maxPending = 16

// Next adds one id and returns the text it completes ("" if the text is still incomplete).
func (d *StreamDecoder) Next(id int) string {
	d.ids = append(d.ids, id)
	before := d.decode(d.ids[d.prefix:d.read])
	after := d.decode(d.ids[d.prefix:])
	if len(after) > len(before) && strings.HasPrefix(after, before) {
		delta := after[len(before):]
		if !strings.HasSuffix(delta, "\uFFFD") || len(d.ids)-d.read >= maxPending {
			d.prefix, d.read = d.read, len(d.ids)
			d.compact()
			return delta
		}
		return ""
	}
	if len(d.ids)-d.read >= maxPending {
		// The window's text did not grow as a prefix extension (a decoder rewrote it): print
		// what differs and move on.
		delta := after[commonPrefix(before, after):]
		d.prefix, d.read = d.read, len(d.ids)
		d.compact()
		return delta
	}
	return ""
}

// Flush returns the text still held back (an incomplete character at the end), decoded
// with U+FFFD for the missing bytes, and empties the window.
func (d *StreamDecoder) Flush() string {
	if d.read == len(d.ids) {
		return ""
	}
	before := d.decode(d.ids[d.prefix:d.read])
	after := d.decode(d.ids[d.prefix:])
	d.prefix, d.read = len(d.ids), len(d.ids)
	d.compact()
	return after[commonPrefix(before, after):]
}

// compact drops the ids before the window so memory stays small.
func (d *StreamDecoder) compact() {
	if d.prefix > 1024 {
		n := copy(d.ids, d.ids[d.prefix:])
		d.ids = d.ids[:n]
		d.read -= d.prefix
		d.prefix = 0
	}
}

// commonPrefix returns the length of the longest common prefix of a and b that ends on a
// rune boundary.
func commonPrefix(a, b string) int {
	n := 0
	for n < len(a) && n < len(b) && a[n] == b[n] {
		n++
	}
	for n > 0 && n < len(b) && !utf8.RuneStart(b[n]) {
		n--
	}
	return n
}
