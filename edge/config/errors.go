package config

import (
	"fmt"
	"sort"
	"strings"
)

// Error is one problem in a configuration file, at a source position.
type Error struct {
	File string
	Line int // 1-based; 0 when unknown
	Col  int // 1-based; 0 when unknown
	Msg  string
}

// Error formats e as "FILE:LINE:COL: Msg".
func (e Error) Error() string {
	return fmt.Sprintf("%s:%d:%d: %s", e.File, e.Line, e.Col, e.Msg)
}

// Errors is every problem found in a configuration file, sorted by line and
// then column. Load and Parse return it (as an error) for a bad file; use
// errors.As to get at the items.
type Errors []Error

// Error joins every item with "\n".
func (es Errors) Error() string {
	var b strings.Builder
	for i, e := range es {
		if i > 0 {
			b.WriteByte('\n')
		}
		b.WriteString(e.Error())
	}
	return b.String()
}

// sortErrors orders es by line, then column, keeping the order of equal
// positions.
func sortErrors(es Errors) {
	sort.SliceStable(es, func(i, j int) bool {
		if es[i].Line != es[j].Line {
			return es[i].Line < es[j].Line
		}
		return es[i].Col < es[j].Col
	})
}

// position is a line and column in the source file (both 1-based).
type position struct{ Line, Col int }

// problems collects errors or warnings for one file.
type problems struct {
	file string
	list Errors
}

func (p *problems) add(at position, format string, args ...any) {
	p.list = append(p.list, Error{File: p.file, Line: at.Line, Col: at.Col, Msg: fmt.Sprintf(format, args...)})
}

// sorted returns the collected problems ordered by position, without
// repeats (a value reached through several aliases is judged each time).
func (p *problems) sorted() Errors {
	sortErrors(p.list)
	seen := make(map[Error]bool, len(p.list))
	out := p.list[:0]
	for _, e := range p.list {
		if !seen[e] {
			seen[e] = true
			out = append(out, e)
		}
	}
	p.list = out
	return out
}
