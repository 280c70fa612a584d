package definitions

import (
	"sort"
	"strconv"
	"strings"
)

// Problem is one thing wrong with a definition file.
type Problem struct {
	// File is the file name as given to Parse.
	File string
	// Line is the 1-based line of the problem; 0 when unknown.
	Line int
	// Path is the field the problem is about, e.g. "services.app.memory" or
	// "services.app.ports[0].port"; "" for the file as a whole.
	Path string
	// Msg says what is wrong.
	Msg string
}

// Error renders the problem as FILE:LINE: PATH: MSG, for example
//
//	webshop.yaml:14: services.app.memory: '12XB' is not a size
//
// leaving out LINE when it is 0 and PATH when it is empty.
func (p Problem) Error() string {
	var b strings.Builder
	b.WriteString(p.File)
	if p.Line > 0 {
		if p.File != "" {
			b.WriteByte(':')
		}
		b.WriteString(strconv.Itoa(p.Line))
	}
	if b.Len() > 0 {
		b.WriteString(": ")
	}
	if p.Path != "" {
		b.WriteString(p.Path)
		b.WriteString(": ")
	}
	b.WriteString(p.Msg)
	return b.String()
}

// Problems is every problem found in a definition file, sorted by line. It
// is the error Parse returns.
type Problems []Problem

// Error renders every problem, one per line.
func (ps Problems) Error() string {
	lines := make([]string, len(ps))
	for i, p := range ps {
		lines[i] = p.Error()
	}
	return strings.Join(lines, "\n")
}

// sortProblems orders problems by line (problems without a line first),
// keeping the order they were found in within a line.
func sortProblems(ps Problems) {
	sort.SliceStable(ps, func(i, j int) bool { return ps[i].Line < ps[j].Line })
}
