package hostbreaker

// The TOML samples of the documentation are product: every ```toml block of
// README.md and docs/*.md must parse with ParseConfig, unless it is marked,
// on the line before its fence, with <!-- toml: invalid --> (a sample of a
// mistake): then it must fail to parse.

import (
	"bufio"
	"bytes"
	"os"
	"path/filepath"
	"strings"
	"testing"
)

// invalidTOMLMarker marks a ```toml block that must not parse.
const invalidTOMLMarker = "<!-- toml: invalid -->"

// tomlBlock is a ```toml block of a Markdown file.
type tomlBlock struct {
	line    int // of the opening fence, from 1
	text    string
	invalid bool // marked with invalidTOMLMarker
}

// tomlBlocks returns the ```toml blocks of a Markdown document.
func tomlBlocks(data []byte) []tomlBlock {
	var out []tomlBlock
	var cur *tomlBlock
	var body strings.Builder
	prev := ""
	sc := bufio.NewScanner(bytes.NewReader(data))
	for n := 1; sc.Scan(); n++ {
		line := sc.Text()
		trimmed := strings.TrimSpace(line)
		switch {
		case cur == nil && strings.HasPrefix(trimmed, "```"):
			if info := strings.ToLower(strings.TrimSpace(strings.TrimPrefix(trimmed, "```"))); info == "toml" {
				cur = &tomlBlock{line: n, invalid: prev == invalidTOMLMarker}
				body.Reset()
			}
		case cur != nil && trimmed == "```":
			cur.text = body.String()
			out = append(out, *cur)
			cur = nil
		case cur != nil:
			body.WriteString(line)
			body.WriteByte('\n')
		}
		if trimmed != "" {
			prev = trimmed
		}
	}
	return out
}

func TestTOMLBlocks(t *testing.T) {
	doc := "text\n```toml\na = 1\n```\n" + invalidTOMLMarker + "\n\n```toml\nb = \n```\n```go\nx\n```\n"
	got := tomlBlocks([]byte(doc))
	if len(got) != 2 || got[0].line != 2 || got[0].text != "a = 1\n" || got[0].invalid || !got[1].invalid || got[1].text != "b = \n" {
		t.Errorf("tomlBlocks = %+v", got)
	}
}

// TestDocsTOMLParses parses every ```toml block of README.md and docs/*.md.
func TestDocsTOMLParses(t *testing.T) {
	files, err := filepath.Glob("docs/*.md")
	if err != nil {
		t.Fatal(err)
	}
	files = append([]string{"README.md"}, files...)
	total := 0
	for _, f := range files {
		data, err := os.ReadFile(f)
		if err != nil {
			t.Fatal(err)
		}
		for _, b := range tomlBlocks(data) {
			total++
			_, err := ParseConfig([]byte(b.text))
			switch {
			case b.invalid && err == nil:
				t.Errorf("%s:%d: a block marked %s parses", f, b.line, invalidTOMLMarker)
			case !b.invalid && err != nil:
				t.Errorf("%s:%d: the ```toml block does not parse: %v (the block's first line is line %d)", f, b.line, err, b.line+1)
			}
		}
	}
	if total == 0 {
		t.Error("no ```toml block found; README.md's Configure section has one")
	}
}
