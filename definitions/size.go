// Package definitions holds micado's application infrastructure definition
// format and the value types it shares with the CLI and the API, such as
// memory sizes.
package definitions

import (
	"fmt"
	"math"
	"strconv"
	"strings"
)

var sizeUnits = map[string]float64{
	"":    1,
	"b":   1,
	"k":   1 << 10,
	"kib": 1 << 10,
	"kb":  1e3,
	"m":   1 << 20,
	"mib": 1 << 20,
	"mb":  1e6,
	"g":   1 << 30,
	"gib": 1 << 30,
	"gb":  1e9,
	"t":   1 << 40,
	"tib": 1 << 40,
	"tb":  1e12,
}

// ParseSize reads a memory size such as "64MiB", "1.5GiB", "512m" or
// "1000000" (bytes). Binary units (KiB, MiB, GiB, TiB, and the single
// letters k, m, g, t as Docker reads them) are powers of 1024; KB, MB, GB
// and TB are powers of 1000. Units are case-insensitive.
func ParseSize(s string) (int64, error) {
	in := strings.TrimSpace(s)
	if in == "" {
		return 0, fmt.Errorf("%q is not a size: it is empty (use e.g. 64MiB or 1GiB)", s)
	}
	i := 0
	for i < len(in) && (in[i] >= '0' && in[i] <= '9' || in[i] == '.') {
		i++
	}
	num, unit := in[:i], strings.ToLower(strings.TrimSpace(in[i:]))
	mult, ok := sizeUnits[unit]
	if !ok || num == "" {
		return 0, fmt.Errorf("%q is not a size (use a number with B, KiB, MiB, GiB or TiB, e.g. 64MiB)", s)
	}
	v, err := strconv.ParseFloat(num, 64)
	if err != nil {
		return 0, fmt.Errorf("%q is not a size (use a number with B, KiB, MiB, GiB or TiB, e.g. 64MiB)", s)
	}
	b := v * mult
	if b > math.MaxInt64/2 {
		return 0, fmt.Errorf("%q is too large", s)
	}
	if b < 1 {
		return 0, fmt.Errorf("%q is not a positive size", s)
	}
	return int64(math.Round(b)), nil
}

// FormatSize renders n bytes with the largest binary unit that keeps it
// readable ("64MiB", "1.5GiB"); ParseSize reads it back.
func FormatSize(n int64) string {
	units := []struct {
		name string
		size int64
	}{{"TiB", 1 << 40}, {"GiB", 1 << 30}, {"MiB", 1 << 20}, {"KiB", 1 << 10}}
	for _, u := range units {
		if n >= u.size {
			v := float64(n) / float64(u.size)
			return strconv.FormatFloat(math.Round(v*100)/100, 'f', -1, 64) + u.name
		}
	}
	return strconv.FormatInt(n, 10) + "B"
}
