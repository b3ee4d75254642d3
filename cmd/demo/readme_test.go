package main

import (
	"encoding/json"
	"go/ast"
	"go/parser"
	"go/token"
	"os"
	"os/exec"
	"path/filepath"
	"regexp"
	"strings"
	"testing"
)

// The README sits at the root, which holds the library; its checks live
// here, next to the demo that its set-up section runs.

// readmeBlocks returns the README's fenced code blocks of the language
// lang, each without its fences, and the README's text.
func readmeBlocks(t *testing.T, lang string) (blocks []string, readme string) {
	t.Helper()
	b, err := os.ReadFile(filepath.Join("..", "..", "README.md"))
	if err != nil {
		t.Fatal(err)
	}
	re := regexp.MustCompile("(?ms)^```" + lang + "\n(.*?)^```$")
	for _, m := range re.FindAllStringSubmatch(string(b), -1) {
		blocks = append(blocks, m[1])
	}
	return blocks, string(b)
}

// ciRunsTests matches a line of .ci/run that runs the README's test
// command: `go test -race ./...`, alone or followed by a redirection or a
// pipe.
var ciRunsTests = regexp.MustCompile(`(?m)^[ \t]*go test -race \./\.\.\.([ \t]+[|&>2].*)?$`)

// TestREADMECommands checks the README's shell commands: the set-up block,
// whose second command is .ci/run, the script that installs and starts what
// the tests need and then runs them, and the go get line.
func TestREADMECommands(t *testing.T) {
	blocks, _ := readmeBlocks(t, "sh")
	var setup, get bool
	for _, b := range blocks {
		setup = setup || b == "go run ./cmd/demo\nbash .ci/run\n"
		get = get || strings.Contains("\n"+b, "\ngo get github.com/hostbreaker/hostbreaker\n")
	}
	if !setup {
		t.Error("README has no block of exactly `go run ./cmd/demo` and `bash .ci/run`")
	}
	ci, err := os.ReadFile(filepath.Join("..", "..", ".ci", "run"))
	if err != nil {
		t.Fatal(err)
	}
	for _, want := range []string{"redis-server --daemonize yes", "prometheus", "nginx", "haproxy"} {
		if !strings.Contains(string(ci), want) {
			t.Errorf(".ci/run, which the README's set-up runs, lacks %q", want)
		}
	}
	// The README's test command, as a command of its own line (its output
	// may be piped on: `go test -race ./... 2>&1 | tee "$log"`), not only
	// in an echo or a comment.
	for line, runs := range map[string]bool{
		"go test -race ./...":                                true,
		`go test -race ./... 2>&1 | tee "$log" || status=$?`: true,
		`echo "ci: go test -race ./..."`:                     false,
		"# go test -race ./...":                              false,
		"go test -race ./... -run TestOne":                   false,
		"go test -race $crashed":                             false,
	} {
		if ciRunsTests.MatchString(line) != runs {
			t.Errorf("ciRunsTests on %q: %v, want %v", line, !runs, runs)
		}
	}
	if !ciRunsTests.Match(ci) {
		t.Errorf(".ci/run, which the README's set-up runs, has no line that runs %q", "go test -race ./...")
	}
	if !get {
		t.Error("README has no `go get github.com/hostbreaker/hostbreaker` line")
	}
}

// TestREADMEUsage compiles the README's Go snippet against the library and
// checks that it handles every error of client.Do, not only *OpenError,
// and closes the response body once it has one.
func TestREADMEUsage(t *testing.T) {
	blocks, _ := readmeBlocks(t, "go")
	if len(blocks) != 1 {
		t.Fatalf("README has %d Go blocks, want 1", len(blocks))
	}
	// The snippet runs in a function that has a ctx and a cfg; it declares
	// its own ctx, hence the inner block.
	src := `package readme

import (
	"context"
	"errors"
	"log"
	"net/http"
	"time"

	"github.com/hostbreaker/hostbreaker"
)

var _, _, _ = errors.New, log.Print, time.Second

func snippet(ctx context.Context, cfg hostbreaker.Config) {
	{
` + blocks[0] + `
	}
}
`
	fset := token.NewFileSet()
	f, err := parser.ParseFile(fset, "snippet.go", src, parser.ParseComments)
	if err != nil {
		t.Fatalf("README snippet: %v", err)
	}
	checkUsage(t, f)
	compile(t, src)
}

// checkUsage checks, in the snippet's statements, that client.Do is
// followed by "if err != nil { ... errors.As ... else ...; return }" and
// then by "defer resp.Body.Close()".
func checkUsage(t *testing.T, f *ast.File) {
	var fn *ast.FuncDecl
	for _, d := range f.Decls {
		if d, ok := d.(*ast.FuncDecl); ok && d.Name.Name == "snippet" {
			fn = d
		}
	}
	stmts := fn.Body.List[0].(*ast.BlockStmt).List
	str := func(n ast.Node) string {
		var b strings.Builder
		ast.Walk(visitor(func(n ast.Node) {
			if id, ok := n.(*ast.Ident); ok {
				b.WriteString(id.Name + " ")
			}
		}), n)
		return b.String()
	}
	do := -1
	for i, s := range stmts {
		if a, ok := s.(*ast.AssignStmt); ok && strings.Contains(str(a), "resp err client Do") {
			do = i
		}
	}
	if do < 0 || do+2 >= len(stmts) {
		t.Fatal("README snippet: no `resp, err := client.Do(req)` followed by two statements")
	}
	check, ok := stmts[do+1].(*ast.IfStmt)
	if !ok || str(check.Cond) != "err nil " {
		t.Fatal("README snippet: client.Do is not followed by `if err != nil`")
	}
	var as *ast.IfStmt
	ast.Inspect(check.Body, func(n ast.Node) bool {
		if s, ok := n.(*ast.IfStmt); ok && strings.Contains(str(s.Cond), "errors As err") {
			as = s
		}
		return true
	})
	if as == nil || as.Else == nil {
		t.Error("README snippet: `if err != nil` does not handle both *OpenError (errors.As) and other errors (else)")
	}
	if _, ok := check.Body.List[len(check.Body.List)-1].(*ast.ReturnStmt); !ok {
		t.Error("README snippet: `if err != nil` after client.Do does not end with return")
	}
	d, ok := stmts[do+2].(*ast.DeferStmt)
	if !ok || str(d.Call) != "resp Body Close " {
		t.Error("README snippet: `defer resp.Body.Close()` does not follow the error check")
	}
}

type visitor func(ast.Node)

func (v visitor) Visit(n ast.Node) ast.Visitor {
	if n != nil {
		v(n)
	}
	return v
}

// compile builds src as a package of this module, through an overlay: no
// file is written into the module.
func compile(t *testing.T, src string) {
	t.Helper()
	goCmd, err := exec.LookPath("go")
	if err != nil {
		t.Skipf("no go command to compile the README snippet: %v", err)
	}
	root, err := filepath.Abs(filepath.Join("..", ".."))
	if err != nil {
		t.Fatal(err)
	}
	dir := t.TempDir()
	file := filepath.Join(dir, "snippet.go")
	if err := os.WriteFile(file, []byte(src), 0o644); err != nil {
		t.Fatal(err)
	}
	virtual := filepath.Join(root, "cmd", "demo", "readmesnippet", "snippet.go") // exists only in the overlay
	overlay, err := json.Marshal(map[string]map[string]string{"Replace": {virtual: file}})
	if err != nil {
		t.Fatal(err)
	}
	if err := os.WriteFile(filepath.Join(dir, "overlay.json"), overlay, 0o644); err != nil {
		t.Fatal(err)
	}
	cmd := exec.Command(goCmd, "build", "-o", os.DevNull, "-overlay", filepath.Join(dir, "overlay.json"), "./cmd/demo/readmesnippet")
	cmd.Dir = root
	if out, err := cmd.CombinedOutput(); err != nil {
		t.Errorf("README snippet does not compile: %v\n%s\nsource:\n%s", err, out, src)
	}
}
