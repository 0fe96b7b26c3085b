package sentencepiece

import (
	"encoding/binary"
	"math"
	"os"
	"path/filepath"
	"slices"
	"strings"
	"testing"

	"github.com/loractl/loractl/internal/refdata"
)

// referenceFiles pairs each sentencepiece model with the ids Python
// sentencepiece 0.1.97 produced for it.
var referenceFiles = []struct {
	name, model, reference string
}{
	{"llama2", "tokenizers/llama2/tokenizer.model", "tokenizers/llama2/reference-sentencepiece.jsonl"},
	{"stories260K", "models/stories260K/tokenizer.model", "models/stories260K/reference/tokenizer_sentencepiece.jsonl"},
}

type referenceLine struct {
	Text       string `json:"text"`
	IDs        []int  `json:"ids"`
	AddSpecial bool   `json:"add_special_tokens"`
}

func loadReferenceModel(t testing.TB, dir, rel string) *Model {
	t.Helper()
	m, err := Load(filepath.Join(dir, rel))
	if err != nil {
		t.Fatalf("Load: %v", err)
	}
	return m
}

// TestReferenceEncode checks every line of the sentencepiece reference files.
func TestReferenceEncode(t *testing.T) {
	dir := refdata.Dir(t)
	for _, rf := range referenceFiles {
		t.Run(rf.name, func(t *testing.T) {
			m := loadReferenceModel(t, dir, rf.model)
			lines := refdata.ReadJSONL[referenceLine](t, filepath.Join(dir, rf.reference))
			mismatches := 0
			for i, l := range lines {
				got := m.Encode(l.Text, l.AddSpecial)
				if slices.Equal(got, l.IDs) {
					continue
				}
				mismatches++
				if mismatches <= 5 {
					t.Errorf("line %d %q (addSpecial=%v):\n got %v\nwant %v", i+1, l.Text, l.AddSpecial, got, l.IDs)
				}
			}
			t.Logf("%s: %d/%d lines match", rf.reference, len(lines)-mismatches, len(lines))
		})
	}
}

// TestReferenceDecode decodes the reference ids back to text. Decoding must
// give back the input up to what the normalizer changed (see normalizedText).
func TestReferenceDecode(t *testing.T) {
	dir := refdata.Dir(t)
	for _, rf := range referenceFiles {
		t.Run(rf.name, func(t *testing.T) {
			m := loadReferenceModel(t, dir, rf.model)
			bad := 0
			for i, l := range refdata.ReadJSONL[referenceLine](t, filepath.Join(dir, rf.reference)) {
				want := normalizedText(m, l.Text)
				if got := m.Decode(l.IDs); got != want {
					bad++
					if bad <= 5 {
						t.Errorf("line %d: Decode(%v)\n got %q\nwant %q", i+1, l.IDs, got, want)
					}
				}
			}
		})
	}
}

// normalizedText is what decoding the encoding of text gives for these
// identity-normalized models: a literal "▁" in the text reads back as a
// space, and with remove_extra_whitespaces spaces are collapsed.
func normalizedText(m *Model, text string) string {
	text = strings.ReplaceAll(text, "▁", " ")
	if m.norm.spec.removeExtraWhitespaces {
		return collapseSpaces(text)
	}
	return text
}

// collapseSpaces removes leading and trailing ' ' and turns runs of ' ' into
// one, the whitespace rule of remove_extra_whitespaces (other whitespace,
// such as tabs and newlines, is kept).
func collapseSpaces(s string) string {
	var b strings.Builder
	for _, f := range strings.Split(s, " ") {
		if f == "" {
			continue
		}
		if b.Len() > 0 {
			b.WriteByte(' ')
		}
		b.WriteString(f)
	}
	return b.String()
}

func TestModelInfo(t *testing.T) {
	dir := refdata.Dir(t)
	tests := []struct {
		model          string
		vocab          int
		bos, eos, unk  int
		byteFallback   bool
		removeExtraWS  bool
		piece          string // a piece and its id, read from the model
		pieceID        int
		hasPiece, hasB bool
	}{
		// Ids 0-2 and the byte pieces 3-258 are sentencepiece's layout for
		// these llama2.c-trained models; 29889 is "." in the reference ids.
		{"tokenizers/llama2/tokenizer.model", 32000, 1, 2, 0, true, false, ".", 29889, true, true},
		{"models/stories260K/tokenizer.model", 512, 1, 2, 0, true, true, "<0x0A>", 13, true, true},
	}
	for _, tt := range tests {
		t.Run(filepath.Base(filepath.Dir(tt.model)), func(t *testing.T) {
			m := loadReferenceModel(t, dir, tt.model)
			if m.VocabSize() != tt.vocab || m.BOS() != tt.bos || m.EOS() != tt.eos || m.UNK() != tt.unk {
				t.Errorf("vocab/bos/eos/unk = %d/%d/%d/%d, want %d/%d/%d/%d",
					m.VocabSize(), m.BOS(), m.EOS(), m.UNK(), tt.vocab, tt.bos, tt.eos, tt.unk)
			}
			if m.byteFallback != tt.byteFallback || m.norm.spec.removeExtraWhitespaces != tt.removeExtraWS {
				t.Errorf("byte_fallback=%v remove_extra_whitespaces=%v", m.byteFallback, m.norm.spec.removeExtraWhitespaces)
			}
			for _, special := range []struct {
				id    int
				piece string
			}{{0, "<unk>"}, {1, "<s>"}, {2, "</s>"}} {
				if p, ok := m.IDToPiece(special.id); !ok || p != special.piece {
					t.Errorf("IDToPiece(%d) = %q, %v; want %q", special.id, p, ok, special.piece)
				}
			}
			if id, ok := m.PieceToID(tt.piece); id != tt.pieceID || !ok {
				t.Errorf("PieceToID(%q) = %d, %v; want %d", tt.piece, id, ok, tt.pieceID)
			}
			if id, ok := m.PieceToID("no such piece"); id != -1 || ok {
				t.Errorf("PieceToID(unknown) = %d, %v; want -1, false", id, ok)
			}
			for _, id := range []int{-1, m.VocabSize()} {
				if p, ok := m.IDToPiece(id); ok {
					t.Errorf("IDToPiece(%d) = %q, true; want false", id, p)
				}
			}
			// Every piece maps back to its own id.
			for id := range m.VocabSize() {
				p, _ := m.IDToPiece(id)
				if got, ok := m.PieceToID(p); !ok || got != id {
					t.Fatalf("PieceToID(IDToPiece(%d)=%q) = %d, %v", id, p, got, ok)
				}
			}
		})
	}
}

// TestRoundTrip checks decode(encode(x)) == x (modulo the whitespace
// normalization) on texts outside the reference files, including text the
// model only covers through byte fallback.
func TestRoundTrip(t *testing.T) {
	dir := refdata.Dir(t)
	texts := []string{
		"",
		"Hello world",
		" leading space",
		"trailing space ",
		"two  spaces and\ttab\nnewline\r\n",
		"  ",
		"ünïcödé, 日本語のテキスト, русский, ελληνικά, עברית",
		"emoji 👩‍👩‍👧‍👦 🇫🇷 👍🏽 and math 𝔘𝔫𝔦𝔠𝔬𝔡𝔢",
		"<s> literal </s> <unk> stay text",
		"\x00control\x7f chars",
		strings.Repeat("abc ", 500),
	}
	for _, rf := range referenceFiles {
		m := loadReferenceModel(t, dir, rf.model)
		for _, text := range texts {
			for _, addSpecial := range []bool{false, true} {
				ids := m.Encode(text, addSpecial)
				want := normalizedText(m, text)
				if got := m.Decode(ids); got != want {
					t.Errorf("%s: Decode(Encode(%q, %v)) = %q", rf.name, text, addSpecial, got)
				}
				if addSpecial && (len(ids) == 0 || ids[0] != m.BOS()) {
					t.Errorf("%s: Encode(%q, true) does not start with BOS: %v", rf.name, text, ids)
				}
			}
		}
	}
}

// TestDecodeRules checks decoding details on hand-picked id sequences of
// the Llama 2 model, whose pieces are looked up by name. The expected
// strings are what Python sentencepiece 0.1.97's decode_ids returns.
func TestDecodeRules(t *testing.T) {
	dir := refdata.Dir(t)
	m := loadReferenceModel(t, dir, referenceFiles[0].model)
	id := func(p string) int {
		t.Helper()
		i, ok := m.PieceToID(p)
		if !ok {
			t.Fatalf("piece %q not in the Llama 2 vocabulary", p)
		}
		return i
	}
	tests := []struct {
		name string
		ids  []int
		want string
	}{
		{"dummy prefix dropped", []int{id("▁Hello")}, "Hello"},
		{"after BOS too", []int{m.BOS(), id("▁Hello")}, "Hello"},
		{"only one space dropped", []int{id("▁"), id("▁Hello")}, " Hello"},
		{"inner spaces kept", []int{id("▁Hello"), id("▁"), id("▁Hello")}, "Hello  Hello"},
		{"control pieces vanish", []int{m.BOS(), id("▁a"), m.EOS(), id("▁b")}, "a b"},
		{"unknown piece", []int{m.UNK()}, " \u2047 "},
		{"bytes fuse into UTF-8", []int{id("<0xE2>"), id("<0x82>"), id("<0xAC>")}, "€"},
		{"invalid bytes become U+FFFD each", []int{id("<0xE2>"), id("<0x82>"), id("▁a")}, "\uFFFD\uFFFD a"},
		{"byte 0x20 is not a dummy prefix", []int{id("<0x20>"), id("▁a")}, "  a"},
		{"out-of-range ids skipped", []int{-5, id("▁a"), 1 << 30}, "a"},
		{"empty", nil, ""},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			if got := m.Decode(tt.ids); got != tt.want {
				t.Errorf("Decode(%v) = %q, want %q", tt.ids, got, tt.want)
			}
		})
	}
}

// TestLoadErrors checks that broken files give errors naming the file.
func TestLoadErrors(t *testing.T) {
	dir := t.TempDir()
	write := func(name string, data []byte) string {
		p := filepath.Join(dir, name)
		if err := os.WriteFile(p, data, 0o644); err != nil {
			t.Fatal(err)
		}
		return p
	}
	// A valid two-piece BPE model without BOS. Python sentencepiece 0.1.97
	// encodes "aa" with it as [0 1 1] (the "▁" of the dummy prefix is
	// unknown) and has bos_id() -1.
	model := func(pieces ...[]byte) []byte { return modelBytes(modelBPE, pieces...) }
	good := model(pieceBytes("<unk>", 2, 0), pieceBytes("a", 1, 0))
	if m, err := Load(write("good.model", good)); err != nil {
		t.Fatalf("minimal model: %v", err)
	} else {
		if got := m.Encode("aa", false); !slices.Equal(got, []int{0, 1, 1}) {
			t.Errorf("minimal model: Encode(aa) = %v, want [0 1 1]", got)
		}
		if got := m.Encode("aa", true); m.BOS() != -1 || !slices.Equal(got, []int{0, 1, 1}) {
			t.Errorf("minimal model: BOS() = %d, Encode(aa, true) = %v; want -1 and no BOS added", m.BOS(), got)
		}
	}

	tests := []struct {
		name string
		data []byte
		want string
	}{
		{"empty file", nil, "no unknown piece"},
		{"truncated", good[:len(good)-3], "runs past the end"},
		{"bad length", []byte{1<<3 | wireBytes, 0x7f}, "needs 127 bytes"},
		{"field zero", []byte{0x00}, "invalid field number"},
		{"group wire type", []byte{1<<3 | 3}, "wire type"},
		{"wrong wire type", []byte{1<<3 | wireVarint, 1}, "wire type"},
		{"no unk", model(pieceBytes("a", 1, 0)), "no unknown piece"},
		{"duplicate", model(pieceBytes("<unk>", 2, 0), pieceBytes("a", 1, 0), pieceBytes("a", 1, 0)), "defined twice"},
		{"empty piece", model(pieceBytes("<unk>", 2, 0), pieceBytes("", 1, 0)), "empty"},
		{"byte piece without fallback", model(pieceBytes("<unk>", 2, 0), pieceBytes("<0x41>", 6, 0)), "byte_fallback is false"},
		{"word model", append(model(pieceBytes("<unk>", 2, 0)), appendBytesField(nil, 2, appendVarintField(nil, 3, modelWord))...), "not supported"},
		{"bad charsmap", append(good, appendBytesField(nil, 3, appendBytesField(nil, 2, []byte{9, 0, 0, 0, 1}))...), "precompiled_charsmap"},
		{"not a model", []byte("this is plain text, not a protobuf"), "sentencepiece"},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			path := write(strings.ReplaceAll(tt.name, " ", "_")+".model", tt.data)
			m, err := Load(path)
			if err == nil {
				t.Fatalf("Load succeeded (%d pieces), want error containing %q", m.VocabSize(), tt.want)
			}
			if !strings.Contains(err.Error(), tt.want) || !strings.Contains(err.Error(), path) {
				t.Errorf("error %q should contain %q and the path", err, tt.want)
			}
		})
	}
	if _, err := Load(filepath.Join(dir, "missing.model")); err == nil || !strings.Contains(err.Error(), "missing.model") {
		t.Errorf("missing file: err = %v", err)
	}
}

// pieceBytes serializes a ModelProto.SentencePiece.
func pieceBytes(text string, typ int, score float32) []byte {
	b := appendBytesField(nil, 1, []byte(text))
	b = binary.LittleEndian.AppendUint32(append(b, 2<<3|wireFixed32), math.Float32bits(score))
	return appendVarintField(b, 3, uint64(typ))
}

// modelBytes serializes a ModelProto with the given pieces and model type.
func modelBytes(modelType int, pieces ...[]byte) []byte {
	var b []byte
	for _, p := range pieces {
		b = appendBytesField(b, 1, p)
	}
	return appendBytesField(b, 2, appendVarintField(nil, 3, uint64(modelType)))
}

func appendVarint(b []byte, v uint64) []byte {
	for v >= 0x80 {
		b = append(b, byte(v)|0x80)
		v >>= 7
	}
	return append(b, byte(v))
}

func appendVarintField(b []byte, num int, v uint64) []byte {
	return appendVarint(appendVarint(b, uint64(num)<<3|wireVarint), v)
}

func appendBytesField(b []byte, num int, payload []byte) []byte {
	b = appendVarint(b, uint64(num)<<3|wireBytes)
	b = appendVarint(b, uint64(len(payload)))
	return append(b, payload...)
}

// TestTruncatedRealModels loads every prefix length class of the real model
// files: none may panic, and a prefix that parses must still encode.
func TestTruncatedRealModels(t *testing.T) {
	dir := refdata.Dir(t)
	for _, rf := range referenceFiles {
		data, err := os.ReadFile(filepath.Join(dir, rf.model))
		if err != nil {
			t.Fatal(err)
		}
		step := max(1, len(data)/300)
		for n := 0; n < len(data); n += step {
			m, err := parseModel(data[:n])
			if err == nil {
				m.Decode(m.Encode("Hello, world! 日本", true))
			}
		}
	}
}

// FuzzLoad feeds arbitrary bytes to the model parser; on success the model
// must encode and decode without panicking.
func FuzzLoad(f *testing.F) {
	// Small seeds only: the fuzzer minimizes every new input, which is slow
	// for large ones.
	if dir := os.Getenv("LORACTL_TESTDATA"); dir != "" {
		for _, rf := range referenceFiles {
			if data, err := os.ReadFile(filepath.Join(dir, rf.model)); err == nil {
				f.Add(data[:min(len(data), 64)])
				f.Add(data[:min(len(data), 300)])
			}
		}
	}
	pieces := [][]byte{
		pieceBytes("<unk>", 2, 0), pieceBytes("<s>", 3, 0), pieceBytes("</s>", 3, 0),
		pieceBytes("▁", 1, -1), pieceBytes("h", 1, -2), pieceBytes("i", 1, -3),
		pieceBytes("▁h", 1, -1.5), pieceBytes("hi", 5, -0.5), pieceBytes("<u>", 4, 0),
	}
	for _, kind := range []int{modelBPE, modelUnigram} {
		b := modelBytes(kind, pieces...)
		f.Add(b)
		f.Add(appendBytesField(b, 3, appendVarintField(nil, 4, 0))) // keep extra spaces
	}
	f.Add([]byte{})
	f.Add([]byte{0x0a, 0x09, 0x0a, 0x05, '<', 'u', 'n', 'k', '>', 0x18, 0x02})
	f.Fuzz(func(t *testing.T, data []byte) {
		m, err := parseModel(data)
		if err != nil {
			return
		}
		ids := m.Encode("Hi  there\t日本 🙂 <s>", true)
		for _, id := range ids {
			if id < 0 || id >= m.VocabSize() {
				t.Fatalf("Encode gave id %d outside 0..%d", id, m.VocabSize()-1)
			}
		}
		_ = m.Decode(append(ids, -1, 0, m.VocabSize()))
	})
}

func BenchmarkEncodeLlama2(b *testing.B) {
	dir := refdata.Dir(b)
	m := loadReferenceModel(b, dir, referenceFiles[0].model)
	text, err := os.ReadFile(filepath.Join(dir, "data/kjv.txt"))
	if err != nil {
		b.Fatal(err)
	}
	text = text[:1<<20]
	b.SetBytes(int64(len(text)))
	b.ResetTimer()
	for range b.N {
		m.Encode(string(text), false)
	}
}
