// Package bytesize is micado's one type for memory sizes: the same parser
// reads flags (--memory 512m), definition files (memory: 64MiB), Compose
// files, instance types (small=512MiB) and API bodies, and the same printer
// writes every table, message and file.
//
// Units, case-insensitive, with or without a space before them:
//
//   - none or B: bytes
//   - k, m, g, t (as Docker reads them) and KiB, MiB, GiB, TiB: powers of 1024
//   - KB, MB, GB, TB (SI): powers of 1000
//
// Fractions are allowed ("1.5GiB") and rounded down to whole bytes.
package bytesize

import (
	"errors"
	"fmt"
	"math/big"
	"strconv"
	"strings"
)

// Size is a number of bytes. It prints as people write sizes ("512MiB",
// "1.5GiB") and [Parse] reads what it prints back to the same value
// whenever the size is a whole number of bytes that a unit expresses with
// at most two decimals; other values (measured usage) print rounded to two
// decimals of the largest binary unit.
//
// In JSON a Size is a plain number of bytes, as the API has always sent.
type Size int64

const (
	KiB Size = 1 << 10
	MiB Size = 1 << 20
	GiB Size = 1 << 30
	TiB Size = 1 << 40
)

var multipliers = map[string]int64{
	"": 1, "b": 1,
	"k": 1 << 10, "kib": 1 << 10, "kb": 1e3,
	"m": 1 << 20, "mib": 1 << 20, "mb": 1e6,
	"g": 1 << 30, "gib": 1 << 30, "gb": 1e9,
	"t": 1 << 40, "tib": 1 << 40, "tb": 1e12,
}

// Units lists the units Parse accepts, for messages.
const Units = "B, KiB, MiB, GiB, TiB (or k, m, g, t as Docker writes them), KB, MB, GB, TB"

// Error is a string that is not a size; its message names the problem.
type Error struct {
	Input  string
	Reason string
}

func (e *Error) Error() string { return strconv.Quote(e.Input) + " is not a size: " + e.Reason }

// Parse reads a positive size such as "512m", "1g", "64MiB", "1.5GiB",
// "2 GB" or "1048576" (bytes).
func Parse(s string) (Size, error) {
	bad := func(format string, a ...any) (Size, error) {
		return 0, &Error{Input: s, Reason: fmt.Sprintf(format, a...)}
	}
	in := strings.TrimSpace(s)
	if in == "" {
		return bad("it is empty (write e.g. 512MiB or 1g)")
	}
	i := 0
	for i < len(in) && (in[i] >= '0' && in[i] <= '9' || in[i] == '.') {
		i++
	}
	num, unit := in[:i], strings.TrimSpace(in[i:])
	if strings.HasPrefix(in, "-") {
		return bad("a size cannot be negative")
	}
	if num == "" || strings.Count(num, ".") > 1 || num == "." || strings.HasPrefix(num, ".") || strings.HasSuffix(num, ".") {
		return bad("write a number followed by a unit, e.g. 512MiB or 1g")
	}
	mult, ok := multipliers[strings.ToLower(unit)]
	if !ok {
		return bad("unknown unit %q (use %s)", unit, Units)
	}
	r, ok := new(big.Rat).SetString(num)
	if !ok {
		return bad("write a number followed by a unit, e.g. 512MiB or 1g")
	}
	r.Mul(r, new(big.Rat).SetInt64(mult))
	n := new(big.Int).Quo(r.Num(), r.Denom())
	if !n.IsInt64() || n.Int64() > 1<<62 {
		return bad("it is too large")
	}
	if n.Sign() <= 0 {
		return bad("it must be at least one byte")
	}
	return Size(n.Int64()), nil
}

// MustParse is Parse for constants; it panics on a bad size.
func MustParse(s string) Size {
	v, err := Parse(s)
	if err != nil {
		panic(err)
	}
	return v
}

type unit struct {
	name string
	mult uint64
}

var (
	binary = []unit{{"TiB", 1 << 40}, {"GiB", 1 << 30}, {"MiB", 1 << 20}, {"KiB", 1 << 10}}
	si     = []unit{{"TB", 1e12}, {"GB", 1e9}, {"MB", 1e6}, {"KB", 1e3}}
)

// String prints the size: "512MiB", "1.5GiB", "1GB", "100B".
func (s Size) String() string {
	var buf [24]byte
	return string(s.Append(buf[:0]))
}

// Format prints n bytes as a Size does.
func Format(n int64) string { return Size(n).String() }

// Append appends the size as String prints it, without allocating (for
// messages built on hot paths).
func (s Size) Append(dst []byte) []byte {
	u := uint64(s)
	if s < 0 {
		dst = append(dst, '-')
		u = -u
	}
	if u < 1<<10 {
		dst = strconv.AppendUint(dst, u, 10)
		return append(dst, 'B')
	}
	// Exact with at most two decimals in a binary unit of which the size is
	// 1 to 9999.99 (1.5GiB, 1025MiB), else in such an SI unit (1GB, 1.5MB).
	for _, units := range [][]unit{binary, si} {
		for _, un := range units {
			// A unit fits when the size is 1 to 9999.99 of it.
			if u < un.mult || u/un.mult >= 10000 {
				continue
			}
			if rem := u % un.mult; rem*100%un.mult == 0 {
				return appendFixed(dst, u/un.mult, rem*100/un.mult, un.name)
			}
		}
	}
	// Measured values: two decimals of the largest binary unit, rounded.
	for _, un := range binary {
		if u >= un.mult {
			hundredths := (u/un.mult)*100 + ((u%un.mult)*100+un.mult/2)/un.mult
			return appendFixed(dst, hundredths/100, hundredths%100, un.name)
		}
	}
	return dst // not reached
}

func appendFixed(dst []byte, whole, hundredths uint64, name string) []byte {
	dst = strconv.AppendUint(dst, whole, 10)
	if hundredths != 0 {
		dst = append(dst, '.', byte('0'+hundredths/10))
		if hundredths%10 != 0 {
			dst = append(dst, byte('0'+hundredths%10))
		}
	}
	return append(dst, name...)
}

// Set reads a flag value (pflag.Value).
func (s *Size) Set(v string) error {
	n, err := Parse(v)
	if err != nil {
		var e *Error
		if errors.As(err, &e) {
			return errors.New(e.Reason)
		}
		return err
	}
	*s = n
	return nil
}

// Type names the flag's value in help texts (pflag.Value).
func (s *Size) Type() string { return "size" }

// UnmarshalText reads a size written as text, e.g. in YAML or a
// configuration file.
func (s *Size) UnmarshalText(b []byte) error {
	n, err := Parse(string(b))
	if err != nil {
		return err
	}
	*s = n
	return nil
}
