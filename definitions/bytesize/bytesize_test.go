package bytesize

import (
	"strings"
	"testing"

	"pgregory.net/rapid"
)

func TestParse(t *testing.T) {
	good := map[string]Size{
		"64MiB": 64 << 20, "64mib": 64 << 20, "1GiB": 1 << 30, "1.5GiB": 3 << 29,
		"512m": 512 << 20, "2g": 2 << 30, "1g": 1 << 30, "100": 100, "100B": 100, "1KB": 1000,
		"1MB": 1000000, "1TB": 1e12, "2 GB": 2e9, " 8MiB ": 8 << 20, "1TiB": 1 << 40,
		"512k": 512 << 10, "1.5m": 3 << 19, "0.5KiB": 512, "1.0001KB": 1000,
	}
	for in, want := range good {
		got, err := Parse(in)
		if err != nil || got != want {
			t.Errorf("Parse(%q) = %d, %v; want %d", in, got, err, want)
		}
	}
	bad := map[string]string{
		"":               "it is empty",
		"12XB":           `unknown unit "XB"`,
		"MiB":            "write a number",
		"-5MiB":          "cannot be negative",
		"0":              "at least one byte",
		"0.1B":           "at least one byte",
		"1..2GiB":        "write a number",
		"99999999999TiB": "too large",
		"1 2MiB":         "unknown unit",
		".5g":            "write a number",
		"5.g":            "write a number",
	}
	for in, want := range bad {
		_, err := Parse(in)
		if err == nil || !strings.Contains(err.Error(), want) || !strings.Contains(err.Error(), "is not a size") {
			t.Errorf("Parse(%q) = %v; want an error mentioning %q", in, err, want)
		}
	}
}

func TestString(t *testing.T) {
	for n, want := range map[Size]string{
		1: "1B", 1023: "1023B", 1 << 10: "1KiB", 64 << 20: "64MiB", 3 << 29: "1.5GiB",
		1025 << 20: "1025MiB", 1 << 30: "1GiB", 5 << 40: "5TiB",
		1e9: "1GB", 15e8: "1.5GB", 123456789: "117.74MiB", 1<<30 + 1: "1GiB", -(64 << 20): "-64MiB",
		1288490189: "1.2GiB",
	} {
		if got := n.String(); got != want {
			t.Errorf("Size(%d).String() = %q, want %q", int64(n), got, want)
		}
	}
	if a := testing.AllocsPerRun(100, func() {
		var buf [32]byte
		_ = Size(123456789).Append(buf[:0])
	}); a != 0 {
		t.Errorf("Append allocates %v times", a)
	}
}

// Every size of 1 to 9999.99 of a unit, to two decimals, reads back to
// itself from what String prints.
func TestStringParsesBack(t *testing.T) {
	rapid.Check(t, func(t *rapid.T) {
		unit := rapid.SampledFrom([]Size{KiB, MiB, GiB, TiB, 1000, 1e6, 1e9}).Draw(t, "unit")
		hundredths := rapid.Int64Range(100, 999999).Draw(t, "hundredths")
		if hundredths*int64(unit)%100 != 0 {
			return
		}
		n := Size(hundredths * int64(unit) / 100)
		got, err := Parse(n.String())
		if err != nil || got != n {
			t.Fatalf("Size(%d) prints %q, which reads back as %d, %v", int64(n), n.String(), int64(got), err)
		}
	})
}

func TestFlag(t *testing.T) {
	var s Size
	if err := s.Set("512m"); err != nil || s != 512<<20 {
		t.Fatalf("Set: %v %d", err, s)
	}
	if err := s.Set("12XB"); err == nil || !strings.Contains(err.Error(), `unknown unit "XB"`) || s != 512<<20 {
		t.Fatalf("Set of a bad size: %v, value %d", err, s)
	}
}
